"""R-CNN, Fast R-CNN and Faster R-CNN side by side: same data, backbone family, input size, budget.

``run_stages`` trains each stage from ``configs/<stage>/<dataset>.yaml`` for the same wall-clock
budget (or takes given checkpoints), then tests all of them on the same test split one image at a
time through each model's own forward (the detections are the ones ``tools/eval.py`` scores),
timing three parts per image from outside the model:

- proposals: selective search (R-CNN, Fast R-CNN) on the original image file, as the test split's
  proposals file was computed, or the RPN head and its proposal selection (Faster R-CNN);
- network: everything else in the network (backbone, RoI pooling or crops, heads, SVM scoring);
- post-processing: box decoding, clipping, score threshold and NMS.

It also scores both proposal methods with the same recall function, and writes ``stages.json``,
``stages.md`` and three pictures: precision-recall per class, proposal recall against the number
of proposals, and a grid of test images with each stage's detections.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detect.config import load_config
from detect.data.build import build_dataset
from detect.data.coco import to_coco_dict
from detect.data.collate import collate_detection, image_to_tensor
from detect.data.image_io import read_image
from detect.data.transforms import boxes_to_original, build_transforms
from detect.checkpoint.storage import load_checkpoint
from detect.inference.loading import load_model
from detect.evaluation.error_analysis import ERROR_TYPES, analyse_errors
from detect.evaluation.metrics import evaluate_detections, to_coco_results
from detect.inference.over_dataset import to_original
from detect.inference.runtime import prepare_for_inference, run_model, timed_calls
from detect.training.trainer import train
from detect.models.faster_rcnn import FasterRCNN
from detect.models.registry import STAGES as REGISTRY
from detect.proposals.attach import attach_proposals
from detect.proposals.cache import compute_proposals
from detect.proposals.recall import best_overlaps, evaluate_proposal_recall

LOG = logging.getLogger(__name__)
STAGES = tuple(REGISTRY)  # the stages side by side, in the order the papers came
NAMES = {key: stage.name for key, stage in REGISTRY.items()}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECALL_COUNTS = (100, 300, 1000, 2000)
CURVE_COUNTS = (10, 20, 50, 100, 200, 300, 500, 700, 1000, 1500, 2000)
DATA_KEYS = ("format", "root", "split", "ann_file", "img_dir")


def data_overrides(data_config) -> List[str]:
    """The dataset of ``data_config`` as overrides every stage config takes."""
    cfg = load_config(data_config)
    out = []
    for which in ("train", "test"):
        for key in DATA_KEYS:
            value = cfg.data[which][key]
            if value is not None:
                out.append(f"data.{which}.{key}={value}")
    if cfg.data.classes:
        out.append(f"data.classes=[{','.join(cfg.data.classes)}]")
    return out


def stage_config(stage: str, data_config, budget: float, overrides: Sequence[str]):
    name = Path(data_config).stem
    path = CONFIGS / stage / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {stage} config for dataset {name!r}: expected {path}")
    extra = [f"train.max_minutes={budget}"] if budget > 0 else []
    return load_config(path, [*data_overrides(data_config), *extra, *overrides])


def ensure_proposals(cfg, output_dir: Path, progress: bool) -> Dict[str, Any]:
    """Selective-search files for both splits: the config's if present, else computed into
    ``output_dir/proposals``. Returns the overrides that point at them and the seconds spent."""
    out: Dict[str, Any] = {"overrides": [], "seconds": 0.0, "images": 0}
    for which in ("train", "test"):
        path = cfg.data[which].proposals
        if path and Path(path).is_file():
            out["overrides"].append(f"data.{which}.proposals={path}")
            continue
        target = output_dir / "proposals" / f"{which}_{cfg.model.proposals.mode}.npz"
        dataset = build_dataset(cfg, which, class_names=cfg.data.classes or None)
        summary = compute_proposals(dataset.records, target, mode=cfg.model.proposals.mode,
                                    seed=cfg.model.proposals.seed, progress=progress, dataset=dataset.description)
        out["seconds"] += summary["seconds"]
        out["images"] += summary["computed"]
        out["overrides"].append(f"data.{which}.proposals={target}")
    return out


def train_stage(stage: str, cfg, output_dir: Path, progress: bool) -> Dict[str, Any]:
    """Train without the end-of-run evaluation (done here, timed per part); returns the checkpoint
    and the training seconds (R-CNN: fine-tuning plus the SVM and regressor phases)."""
    cfg = copy.deepcopy(cfg)  # the caller's config keeps its test split
    cfg.data.test.ann_file = None
    cfg.data.test.root = None
    start = time.perf_counter()
    train(cfg, output_dir, resume=(output_dir / "last_checkpoint").is_file(), progress=progress)
    return {"checkpoint": str(output_dir / "model_final.pth"), "train_seconds": time.perf_counter() - start}


@torch.no_grad()
def timed_predict(model, image: torch.Tensor, target: Dict[str, Any], original_path: Optional[Path] = None):
    """One image's detections through the model's own forward, exactly as evaluation runs it (for
    Fast R-CNN and R-CNN on the test split's proposals when the target carries them), with
    ``{"proposals", "network", "postprocess"}`` seconds and the proposals (input pixels) it used.

    The proposer and the postprocess are timed from outside, around that one call. Given proposals
    were computed by selective search on the original image file: that search is run again on it
    (``original_path``) to time it, with the model's settings, and its boxes are not used."""
    proposed: List[Tuple[float, Any]] = []
    post: List[Tuple[float, Any]] = []
    given = target.get("proposals")
    with timed_calls(model.proposer, "forward", proposed), timed_calls(model, "postprocess", post):
        start = time.perf_counter()
        det = run_model(model, [image], None if given is None else [given])[0]
        total = time.perf_counter() - start
    proposer_seconds = sum(t for t, _ in proposed)
    postprocess = sum(t for t, _ in post)
    network = total - postprocess - proposer_seconds
    searched = proposer_seconds
    if given is not None:
        source = read_image(original_path) if original_path is not None else None
        start = time.perf_counter()
        model.proposer.search([image_to_tensor(source)] if source is not None else [image])
        searched = time.perf_counter() - start
    return det, {"proposals": searched, "network": network, "postprocess": postprocess}, proposed[0][1][0][0]


def evaluate_stage(model, cfg, max_images: Optional[int], progress: bool) -> Dict[str, Any]:
    from tqdm import tqdm

    dataset = build_dataset(cfg, "test", transforms=build_transforms(cfg, train=False), class_names=cfg.data.classes)
    external = REGISTRY[cfg.model.type].external_proposals
    if external:  # the test split's proposals file, as evaluation uses it
        attach_proposals(dataset, cfg, "test", cfg.model.proposals.topk_test, required=False)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    detections, proposals, times = {}, {}, []
    prepare_for_inference(model.eval())
    # one untimed pass first: the numba kernels (NMS, selective search) compile or load from their
    # cache on their first call in a process (0.3-1.2 s here), a cost no image pays afterwards
    images, targets = collate_detection([dataset[0]])
    timed_predict(model, images[0], targets[0], dataset.records[0].path)
    for i in tqdm(range(n), desc=f"test {type(model).__name__}", disable=not progress):
        images, targets = collate_detection([dataset[i]])
        det, timing, props = timed_predict(model, images[0], targets[0], dataset.records[i].path)
        t = targets[0]
        detections[int(t["image_id"])] = to_original(det, t)
        proposals[int(t["image_id"])] = boxes_to_original(props.cpu().numpy(), t["scale"])
        times.append(timing)
    gt = to_coco_dict(dataset)
    gt["images"] = [im for im in gt["images"] if im["id"] in detections]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in detections]
    metrics = evaluate_detections(gt, detections)
    errors = analyse_errors(gt, to_coco_results(detections))
    metrics["errors"] = {k: errors[k] for k in ("AP50", "counts", "dAP", "dAP_by_size")}
    seconds = {k: float(np.mean([t[k] for t in times])) for k in ("proposals", "network", "postprocess")}
    seconds["total"] = sum(seconds.values())
    return {"metrics": metrics, "seconds": seconds, "detections": detections, "proposals": proposals,
            "records": dataset.records[:n], "class_names": list(cfg.data.classes)}


@torch.no_grad()
def rpn_proposals(model: FasterRCNN, cfg, max_images: Optional[int], topk: int = 2000) -> Dict[int, np.ndarray]:
    """The RPN's proposals per test image (original pixels), with up to ``topk`` kept after NMS."""
    dataset = build_dataset(cfg, "test", transforms=build_transforms(cfg, train=False), class_names=cfg.data.classes)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    saved = (model.rpn.pre_nms_topk, model.rpn.post_nms_topk)
    model.rpn.pre_nms_topk = (saved[0][0], max(saved[0][1], topk))
    model.rpn.post_nms_topk = (saved[1][0], topk)
    out = {}
    try:
        for i in range(n):
            images, targets = collate_detection([dataset[i]])
            props = model.proposals(images)[0].cpu().numpy()
            out[int(targets[0]["image_id"])] = boxes_to_original(props, targets[0]["scale"])
    finally:
        model.rpn.pre_nms_topk, model.rpn.post_nms_topk = saved
    return out


def proposal_recall(proposals: Dict[int, np.ndarray], records, class_names) -> Dict[str, Any]:
    ids = [r.image_id for r in records if r.image_id in proposals]
    recs = [r for r in records if r.image_id in proposals]
    props = [proposals[i] for i in ids]
    table = evaluate_proposal_recall(props, [r.boxes for r in recs], [r.labels for r in recs], class_names,
                                     RECALL_COUNTS, [r.ignore for r in recs])
    keep = [~r.ignore for r in recs]
    best = np.concatenate([best_overlaps(p, r.boxes[k], CURVE_COUNTS)[:, :-1] for p, r, k in zip(props, recs, keep)])
    curve = {"counts": list(CURVE_COUNTS), "recall@0.5": (best >= 0.5 - 1e-6).mean(0).tolist(),
             "AR": np.mean([(best >= t - 1e-6).mean(0) for t in np.arange(0.5, 0.951, 0.05)], axis=0).tolist()}
    return {"table": table, "curve": curve}


def run_stages(data_config, budget: float, output_dir, checkpoints: Optional[Dict[str, str]] = None,
               overrides: Sequence[str] = (), max_test_images: Optional[int] = None, grid_images: int = 4,
               progress: bool = True) -> Dict[str, Any]:
    """Train (or load) and test the three stages; write stages.json / stages.md / pictures."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = dict(checkpoints or {})
    cfgs = {s: stage_config(s, data_config, budget, overrides) for s in STAGES}
    props = ensure_proposals(cfgs["fast_rcnn"], output_dir, progress)
    result: Dict[str, Any] = {"data": str(data_config), "budget_minutes": budget, "stages": {},
                              "proposal_precompute": {"seconds": props["seconds"], "images": props["images"]}}
    tested = {}
    for stage in STAGES:
        cfg = stage_config(stage, data_config, budget, [*overrides, *props["overrides"]])
        test_overrides = [f"data.test.{k}={cfg.data.test[k]}" for k in (*DATA_KEYS, "proposals")
                          if cfg.data.test[k] is not None]
        if stage in checkpoints:
            state = load_checkpoint(checkpoints[stage])
            info = {"checkpoint": checkpoints[stage], "train_seconds": float(state.get("elapsed", 0.0)),
                    "given": True}
        else:
            info = train_stage(stage, cfg, output_dir / stage, progress)
        model, mcfg = load_model(info["checkpoint"], overrides=[*test_overrides, "device=cpu"])
        LOG.info("testing %s", NAMES[stage])
        tested[stage] = evaluate_stage(model, mcfg, max_test_images, progress)
        if stage == "faster_rcnn":
            tested["rpn"] = rpn_proposals(model, mcfg, max_test_images)
        m = tested[stage]["metrics"]["coco"]
        result["stages"][stage] = {
            "name": NAMES[stage], "backbone": mcfg.model.backbone.name, "fpn": mcfg.model.backbone.fpn,
            "input": [mcfg.input.min_size_test, mcfg.input.max_size],
            **{k: m[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
            "errors": tested[stage]["metrics"]["errors"],
            "train_seconds": info["train_seconds"], "checkpoint": info["checkpoint"],
            "test_seconds_per_image": tested[stage]["seconds"], "test_images": len(tested[stage]["detections"])}
    s = {k: result["stages"][k]["test_seconds_per_image"] for k in STAGES}
    result["speed_ratios"] = {
        "rcnn_over_fast_rcnn_network": s["rcnn"]["network"] / max(s["fast_rcnn"]["network"], 1e-9),
        "rcnn_over_fast_rcnn_total": s["rcnn"]["total"] / max(s["fast_rcnn"]["total"], 1e-9),
        "fast_rcnn_over_faster_rcnn_total": s["fast_rcnn"]["total"] / max(s["faster_rcnn"]["total"], 1e-9),
        "fast_rcnn_over_faster_rcnn_network": s["fast_rcnn"]["network"] / max(s["faster_rcnn"]["network"], 1e-9),
    }
    records, names = tested["faster_rcnn"]["records"], tested["faster_rcnn"]["class_names"]
    result["proposals"] = {"selective_search": proposal_recall(tested["fast_rcnn"]["proposals"], records, names),
                           "rpn": proposal_recall(tested["rpn"], records, names)}
    write_pictures(tested, result, output_dir, grid_images)
    (output_dir / "stages.json").write_text(json.dumps(result, indent=2))
    (output_dir / "stages.md").write_text(format_markdown(result))
    return result


def format_table(result: Dict[str, Any]) -> str:
    lines = [f"stages on {result['data']}, {result['budget_minutes']:g} min training budget per stage",
             f"{'stage':<13} {'AP':>6} {'AP50':>6} {'AP75':>6} {'APs':>6} {'APm':>6} {'APl':>6} {'train s':>8} "
             f"{'prop s/img':>10} {'net s/img':>9} {'post s/img':>10} {'total':>7}"]
    for st in result["stages"].values():
        t = st["test_seconds_per_image"]
        lines.append(f"{st['name']:<13} {st['AP']:6.3f} {st['AP50']:6.3f} {st['AP75']:6.3f} {st['APs']:6.3f} "
                     f"{st['APm']:6.3f} {st['APl']:6.3f} {st['train_seconds']:8.0f} {t['proposals']:10.3f} "
                     f"{t['network']:9.3f} {t['postprocess']:10.4f} {t['total']:7.3f}")
    r = result["speed_ratios"]
    lines.append(f"R-CNN / Fast R-CNN: {r['rcnn_over_fast_rcnn_network']:.1f}x network, "
                 f"{r['rcnn_over_fast_rcnn_total']:.1f}x with proposals (papers: 146-213x, network only)")
    lines.append(f"Fast R-CNN / Faster R-CNN: {r['fast_rcnn_over_faster_rcnn_total']:.1f}x with proposals, "
                 f"{r['fast_rcnn_over_faster_rcnn_network']:.1f}x network only (paper: about 10x with proposals)")
    lines.append("AP50 points gained if each error type were fixed (TIDE): " + " ".join(f"{k:>7}" for k in ERROR_TYPES))
    for st in result["stages"].values():
        lines.append(f"  {st['name']:<13}" + " " * 43 + " ".join(f"{100 * st['errors']['dAP'][k]:7.2f}"
                                                                  for k in ERROR_TYPES))
    lines.append(f"{'proposals':<17} " + " ".join(f"{'R@0.5/AR@' + str(n):>16}" for n in RECALL_COUNTS))
    for key, name in (("selective_search", "selective search"), ("rpn", "RPN")):
        table = result["proposals"][key]["table"]["overall"]
        lines.append(f"{name:<17} " + " ".join(
            f"{table[str(n)]['recall@0.5']:.3f}/{table[str(n)]['AR']:.3f}".rjust(16) for n in RECALL_COUNTS))
    return "\n".join(lines)


def format_markdown(result: Dict[str, Any]) -> str:
    lines = [f"# Stage comparison on `{result['data']}`", "",
             f"Training budget {result['budget_minutes']:g} minutes per stage; test time per image, one image at a time.", "",
             "| stage | backbone | AP | AP50 | AP75 | APs | APm | APl | train s | proposals s/img | network s/img "
             "| post-proc s/img | total s/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for st in result["stages"].values():
        t = st["test_seconds_per_image"]
        backbone = st["backbone"] + (" + FPN" if st["fpn"] else "")
        lines.append(f"| {st['name']} | {backbone} | {st['AP']:.3f} | {st['AP50']:.3f} | {st['AP75']:.3f} | "
                     f"{st['APs']:.3f} | {st['APm']:.3f} | {st['APl']:.3f} | {st['train_seconds']:.0f} | "
                     f"{t['proposals']:.3f} | {t['network']:.3f} | {t['postprocess']:.4f} | {t['total']:.3f} |")
    r = result["speed_ratios"]
    lines += ["", "| speed ratio | here | papers |", "|---|---|---|",
              f"| R-CNN / Fast R-CNN, network | {r['rcnn_over_fast_rcnn_network']:.1f}x | 146x (213x with SVD) |",
              f"| R-CNN / Fast R-CNN, with proposals | {r['rcnn_over_fast_rcnn_total']:.1f}x | |",
              f"| Fast R-CNN / Faster R-CNN, with proposals | {r['fast_rcnn_over_faster_rcnn_total']:.1f}x | about 10x |",
              f"| Fast R-CNN / Faster R-CNN, network | {r['fast_rcnn_over_faster_rcnn_network']:.1f}x | |",
              "", "Where each stage loses AP50: the points gained if every error of a type were fixed (TIDE's "
              "oracles, `detect/evaluation/error_analysis.py`), and the count of each type.", "",
              "| stage | " + " | ".join(ERROR_TYPES) + " | dominant |", "|---|" + "---|" * (len(ERROR_TYPES) + 1)]
    for st in result["stages"].values():
        e = st["errors"]
        lines.append(f"| {st['name']} | " + " | ".join(f"{100 * e['dAP'][k]:.2f} ({e['counts'][k]})" for k in ERROR_TYPES)
                     + f" | {max(ERROR_TYPES, key=lambda k: e['dAP'][k])} |")
    lines += ["", "| proposals | " + " | ".join(f"R@0.5 / AR @{n}" for n in RECALL_COUNTS) + " |",
              "|---|" + "---|" * len(RECALL_COUNTS)]
    for key, name in (("selective_search", "selective search"), ("rpn", "RPN")):
        table = result["proposals"][key]["table"]["overall"]
        lines.append(f"| {name} | " + " | ".join(f"{table[str(n)]['recall@0.5']:.3f} / {table[str(n)]['AR']:.3f}"
                                                  for n in RECALL_COUNTS) + " |")
    lines += ["", "![precision-recall](stages_pr.png)", "", "![proposal recall](stages_recall.png)", "",
              "![detections](stages_grid.jpg)", ""]
    return "\n".join(lines)


def write_pictures(tested, result, output_dir: Path, grid_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = tested["faster_rcnn"]["class_names"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, cls in zip(axes[0], names):
        for stage in STAGES:
            curve = tested[stage]["metrics"]["coco"].get("pr_curves", {}).get(cls)
            if curve:
                p = np.asarray(curve["precision"])
                ax.plot(curve["recall"], np.where(p < 0, 0, p), label=NAMES[stage])
        ax.set_title(cls)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle("precision-recall at IoU 0.5")
    fig.tight_layout()
    fig.savefig(output_dir / "stages_pr.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, name in (("selective_search", "selective search"), ("rpn", "RPN")):
        curve = result["proposals"][key]["curve"]
        line, = ax.plot(curve["counts"], curve["recall@0.5"], marker="o", label=f"{name}, recall@0.5")
        ax.plot(curve["counts"], curve["AR"], marker="x", linestyle="--", color=line.get_color(), label=f"{name}, AR")
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "stages_recall.png", dpi=100)
    plt.close(fig)
    write_grid(tested, output_dir / "stages_grid.jpg", grid_images)


def write_grid(tested, path: Path, count: int, score_thresh: float = 0.5, cell: int = 320) -> None:
    """Rows of test images: the ground truth, then each stage's detections scoring >= 0.5."""
    import cv2

    from detect.data.image_io import read_image
    from detect.utils.visualize import draw_boxes, write_image

    records = tested["faster_rcnn"]["records"][:count]
    names = tested["faster_rcnn"]["class_names"]
    rows = []
    for r in records:
        image = read_image(r.path)
        cells = [draw_boxes(image, r.boxes, r.labels, names)]
        for stage in STAGES:
            det = tested[stage]["detections"][r.image_id]
            keep = det["scores"] >= score_thresh
            cells.append(draw_boxes(image, det["boxes"][keep], det["labels"][keep], names, det["scores"][keep]))
        scale = cell / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        rows.append(np.concatenate([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in cells], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    header = np.full((28, width, 3), 255, np.uint8)
    for i, title in enumerate(["ground truth"] + [NAMES[s] for s in STAGES]):
        cv2.putText(header, title, (i * (width // 4) + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    write_image(path, np.concatenate([header, *rows], axis=0))
