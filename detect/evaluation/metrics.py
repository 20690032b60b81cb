"""Evaluation: COCO metrics through pycocotools, Pascal VOC AP, tables, precision-recall plots.

pycocotools is the reference. ``faster-coco-eval`` (same API, C++ accumulation, about 10x faster on
large sets) is used when installed and ``backend="auto"``; a test holds both to identical numbers.
Ground truth of any dataset (VOC included) is turned into a COCO dict in memory by
:func:`detect.data.coco.to_coco_dict` (image ids from 1, ``difficult`` as crowd, which COCOeval
neither rewards nor penalises).

VOC AP follows the devkit: detections sorted by score are matched greedily to unmatched ground
truth at IoU >= 0.5; a match to a ``difficult`` box counts neither way; AP is the 11-point
interpolation (VOC2007) or the area under the interpolated curve (VOC2010 and later).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from detect.data.build import build_dataset
from detect.data.coco import to_coco_dict
from detect.data.transforms import build_transforms
from detect.inference.over_dataset import predict_dataset
from detect.inference.tiling import tiled
from detect.models.registry import stage_of
from detect.ops.boxes import box_iou, xyxy_to_xywh
from detect.proposals.attach import attach_proposals

logger = logging.getLogger(__name__)

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
Detections = Mapping[int, Mapping[str, Any]]  # image_id -> {"boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,)}


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_coco_results(detections: Detections) -> List[Dict[str, Any]]:
    """Detections (xyxy, labels 1..C used as category ids) -> the COCO results list (xywh)."""
    results = []
    for image_id, det in detections.items():
        boxes = xyxy_to_xywh(_as_numpy(det["boxes"]).astype(np.float64).reshape(-1, 4))
        for box, score, label in zip(boxes.tolist(), _as_numpy(det["scores"]).tolist(), _as_numpy(det["labels"]).tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


def _coco_api(backend: str):
    if backend in ("auto", "faster"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, lambda gt, dt: COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a: None)
        except ImportError:
            if backend == "faster":
                raise ImportError("backend='faster' needs faster-coco-eval: pip install 'detect[fast-eval]'") from None
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, lambda gt, dt: COCOeval(gt, dt, iouType="bbox")


def evaluate_coco(gt: Dict[str, Any], results: List[Dict[str, Any]], backend: str = "auto") -> Dict[str, Any]:
    """COCO box metrics for ``results`` (COCO results list) against ``gt`` (COCO dict).

    Returns the 12 statistics (``AP``, ``AP50`` ... ``ARl``; -1 where COCO defines none), per-class
    ``AP`` and ``AP50`` (``per_class``), AP50 per object size (``AP50_by_area``: small, medium, large),
    the IoU-0.5 precision-recall curve per class (``pr_curves``), and the backend used.
    """
    COCO, make_eval = _coco_api(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        names = {c["id"]: c["name"] for c in gt["categories"]}
        if not results:
            zero = {k: 0.0 for k in COCO_STATS}
            # what COCO gives a class without detections: precision 0 at every recall point
            flat = {"recall": np.linspace(0, 1, 101).tolist(), "precision": [0.0] * 101}
            return {**zero, "per_class": {n: {"AP": 0.0, "AP50": 0.0} for n in names.values()},
                    "pr_curves": {n: flat for n in names.values()},
                    "AP50_by_area": {"small": 0.0, "medium": 0.0, "large": 0.0},
                    "backend": COCO.__module__.split(".")[0]}
        coco_dt = coco_gt.loadRes(results)
        ev = make_eval(coco_gt, coco_dt)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics: Dict[str, Any] = {k: float(v) for k, v in zip(COCO_STATS, ev.stats)}
    precision = np.asarray(ev.eval["precision"])  # (IoU thresholds, recall points, classes, areas, max dets)
    cat_ids = list(ev.params.catIds)
    per_class, curves = {}, {}
    for k, cat_id in enumerate(cat_ids):
        p_all = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        per_class[names[cat_id]] = {"AP": float(p_all[p_all > -1].mean()) if (p_all > -1).any() else -1.0,
                                    "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0}
        curves[names[cat_id]] = {"recall": [float(r) for r in ev.params.recThrs], "precision": [float(v) for v in p50]}
    metrics["per_class"] = per_class
    metrics["pr_curves"] = curves
    # AP50 by object size (COCO's small / medium / large area ranges): the error analysis's dAP by size
    metrics["AP50_by_area"] = {}
    for a, area in enumerate(("small", "medium", "large"), start=1):
        p50 = precision[0, :, :, a, -1]
        valid = p50[:, (p50 > -1).any(axis=0)]
        metrics["AP50_by_area"][area] = float(valid.mean()) if valid.size else -1.0
    metrics["backend"] = type(ev).__module__.split(".")[0]
    return metrics


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision from a recall/precision curve (the VOC devkit's two definitions)."""
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_voc(gt: Dict[str, Any], detections: Detections, iou_threshold: float = 0.5) -> Dict[str, Any]:
    """Pascal VOC AP per class at ``iou_threshold``, both the VOC07 11-point and the area metric.

    ``gt`` is a COCO dict (``iscrowd`` marks difficult boxes). Returns ``mAP_07``, ``mAP`` and
    ``per_class`` ``{name: {"AP_07", "AP"}}``; classes with no non-difficult box are left out of the means.
    """
    raw: Dict[Any, List] = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        raw.setdefault((a["image_id"], a["category_id"]), []).append([x, y, x + w, y + h, float(a.get("iscrowd", 0))])
    # (image, class) -> (boxes (G, 4) float64, difficult (G,) bool)
    gt_by = {k: (np.asarray(v)[:, :4], np.asarray(v)[:, 4] > 0) for k, v in raw.items()}
    per_class = {}
    for cat in gt["categories"]:
        c = cat["id"]
        npos = int(sum((~d).sum() for (img, cc), (_, d) in gt_by.items() if cc == c))
        # One IoU matrix per image for this class; each detection keeps its best ground truth.
        scores, images, best_gt, best_iou = [], [], [], []
        for image_id, det in detections.items():
            sel = _as_numpy(det["labels"]) == c
            if not sel.any():
                continue
            boxes = _as_numpy(det["boxes"])[sel].reshape(-1, 4).astype(np.float64)
            scores.append(_as_numpy(det["scores"])[sel].astype(np.float64))
            images += [image_id] * len(boxes)
            gt_boxes = gt_by.get((image_id, c), (np.zeros((0, 4)), np.zeros(0, bool)))[0]
            if len(gt_boxes):
                ious = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt_boxes)).numpy()
                best_gt.append(ious.argmax(1))
                best_iou.append(ious.max(1))
            else:
                best_gt.append(np.zeros(len(boxes), np.int64))
                best_iou.append(np.zeros(len(boxes)))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-scores, kind="stable")
        best_gt = np.concatenate(best_gt)[order] if best_gt else np.zeros(0, np.int64)
        best_iou = np.concatenate(best_iou)[order] if best_iou else np.zeros(0)
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        used: Dict[Any, np.ndarray] = {}
        for i, k in enumerate(order):
            image_id, j = images[k], int(best_gt[i])
            if best_iou[i] < iou_threshold:
                fp[i] = 1
            elif gt_by[(image_id, c)][1][j]:
                continue  # difficult: neither true nor false positive
            else:
                flags = used.setdefault(image_id, np.zeros(len(gt_by[(image_id, c)][1]), bool))
                if flags[j]:
                    fp[i] = 1
                else:
                    tp[i] = 1
                    flags[j] = True
        if npos == 0:
            continue
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        recall = tp_c / npos
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        per_class[cat["name"]] = {"AP_07": voc_ap(recall, precision, True), "AP": voc_ap(recall, precision, False)}
    mean = lambda key: float(np.mean([v[key] for v in per_class.values()])) if per_class else 0.0
    return {"mAP_07": mean("AP_07"), "mAP": mean("AP"), "per_class": per_class}


def format_metrics(metrics: Dict[str, Any]) -> str:
    """A terminal table: the COCO statistics, then per-class AP / AP50 (and VOC AP when present)."""
    coco = metrics["coco"]
    lines = ["  ".join(f"{k:>6}" for k in COCO_STATS), "  ".join(f"{coco[k]:6.3f}" for k in COCO_STATS), ""]
    voc = metrics.get("voc", {}).get("per_class", {})
    names = list(coco["per_class"])
    width = max([len(n) for n in names] + [5])
    header = f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}" + (f"  {'VOC07':>6}  {'VOC':>6}" if voc else "")
    lines.append(header)
    for n in names:
        pc = coco["per_class"][n]
        row = f"{n:<{width}}  {pc['AP']:6.3f}  {pc['AP50']:6.3f}"
        if voc:
            v = voc.get(n, {"AP_07": float("nan"), "AP": float("nan")})
            row += f"  {v['AP_07']:6.3f}  {v['AP']:6.3f}"
        lines.append(row)
    if voc:
        lines.append(f"{'mean':<{width}}  {coco['AP']:6.3f}  {coco['AP50']:6.3f}  {metrics['voc']['mAP_07']:6.3f}  "
                     f"{metrics['voc']['mAP']:6.3f}")
    skipped = metrics.get("unreadable_images", [])
    if skipped:
        lines.append(f"\n{len(skipped)} test image(s) could not be read and are left out with their ground truth "
                     f"(metrics over {metrics['num_images']} images):")
        lines += [f"  {message}" for message in skipped]
    return "\n".join(lines)


def plot_pr_curves(curves: Dict[str, Dict[str, List[float]]], path, title: str = "") -> Optional[Path]:
    """One panel per class: precision against recall at IoU 0.5 (from the COCO evaluation), written
    as PNG to ``path`` (a file name, or a binary file object such as ``io.BytesIO``)."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items()):
        p = np.asarray(c["precision"])
        ax.plot(c["recall"], np.where(p < 0, np.nan, p))
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return Path(path) if isinstance(path, (str, Path)) else None


def evaluate_detections(gt: Dict[str, Any], detections: Detections, backend: str = "auto",
                        output_dir: Optional[Path] = None, unreadable: Optional[Dict[int, str]] = None,
                        extra: Optional[Dict[str, Any]] = None, report: Optional[Callable] = None) -> Dict[str, Any]:
    """COCO and VOC metrics for ``detections`` (image_id -> boxes / scores / labels in the ground
    truth's pixels; labels are the ground truth's category ids); with ``output_dir``, writes
    ``metrics.json`` and ``pr_curves.png`` there. ``extra`` (e.g. the inference timing) joins the
    metrics and the file. ``report(gt, results, metrics)`` (e.g. :func:`detect.evaluation.report.
    write_report` bound to a folder) runs last and what it returns joins them too (the error table).

    ``unreadable`` (image id -> message): test images that could not be read. They are left out
    with their ground truth (scoring them as all missed would measure the file, not the detector)
    and listed in the metrics (``unreadable_images``), which :func:`format_metrics` prints.
    """
    if unreadable:
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] not in unreadable],
              "annotations": [a for a in gt["annotations"] if a["image_id"] not in unreadable]}
    results = to_coco_results(detections)
    coco = evaluate_coco(gt, results, backend)
    metrics = {"coco": coco, "voc": evaluate_voc(gt, detections), "num_images": len(gt["images"])}
    if unreadable:
        metrics["unreadable_images"] = [unreadable[k] for k in sorted(unreadable)]
    metrics.update(extra or {})
    if report is not None:
        metrics.update(report(gt, results, metrics))
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        plot_pr_curves(coco["pr_curves"], output_dir / "pr_curves.png", title="precision-recall at IoU 0.5")
        serialisable = {**metrics, "coco": {k: v for k, v in coco.items() if k != "pr_curves"}}
        (output_dir / "metrics.json").write_text(json.dumps(serialisable, indent=2))
    return metrics


def evaluate(model: torch.nn.Module, cfg, device: torch.device, output_dir: Optional[Path] = None,
             progress: bool = True, report: Optional[Callable] = None, source: Optional[str] = None,
             subset: str = "test", max_images: int = 0) -> Dict[str, Any]:
    """COCO and VOC metrics of ``model`` on ``cfg``'s ``data.<subset>`` (its first ``max_images``
    images when > 0; the proposals attached for the stages that take them), with the inference
    timing; writes metrics.json / pr_curves.png into ``output_dir`` when given. ``source``: the
    checkpoint the model came from, named in the metrics (``checkpoint``). What ``detect eval``, the
    validations during training and the end of training run."""
    test_set = build_dataset(cfg, subset, transforms=build_transforms(cfg, train=False), class_names=cfg.data.classes)
    if max_images:
        test_set.records = test_set.records[:max_images]
    if stage_of(cfg).external_proposals:  # without a test proposals file the model runs selective search itself
        attach_proposals(test_set, cfg, subset, cfg.model.proposals.topk_test, required=False)
    detections, timing, unreadable = predict_dataset(tiled(model, cfg), test_set, device, cfg.test.batch_size,
                                                     cfg.data.num_workers, progress)
    for message in unreadable.values():
        logger.warning("test image left out of the evaluation: %s", message)
    return evaluate_detections(to_coco_dict(test_set), detections, output_dir=output_dir, unreadable=unreadable,
                               extra={**({"checkpoint": str(source)} if source else {}), "timing": timing},
                               report=report)
