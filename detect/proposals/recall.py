"""Proposal recall: how many ground-truth objects the top-N proposals cover.

For every ground-truth box the best IoU reached by the image's first N proposals (best-ranked
first) is its *best overlap*. From those:

- recall@t: fraction of ground-truth boxes whose best overlap is >= t (t = 0.5, 0.7);
- AR: recall averaged over t in 0.5:0.95 (step 0.05), the COCO / Hosang et al. average recall;
- ABO: mean best overlap of one class; MABO: the mean of ABO over classes (Uijlings et al.).

The same function scores selective search and RPN proposals: it only needs boxes.
"""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

DEFAULT_COUNTS = (100, 300, 1000, 2000)
AR_THRESHOLDS = np.arange(0.5, 0.951, 0.05)


def best_overlaps(proposals: np.ndarray, gt_boxes: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """``(G, len(counts) + 1)`` best IoU of each ground-truth box over the first ``n`` proposals,
    for each ``n`` in ``counts`` and, in the last column, over all of them."""
    gt = torch.as_tensor(np.asarray(gt_boxes, np.float32).reshape(-1, 4))
    props = torch.as_tensor(np.asarray(proposals, np.float32).reshape(-1, 4))
    out = np.zeros((len(gt), len(counts) + 1), np.float64)
    if len(gt) == 0 or len(props) == 0:
        return out
    iou = box_iou(gt, props)  # (G, N)
    running = torch.cummax(iou, dim=1).values  # best over the first j+1 proposals
    for c, n in enumerate(list(counts) + [len(props)]):
        out[:, c] = running[:, min(n, len(props)) - 1].numpy()
    return out


def evaluate_proposal_recall(proposals: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                             gt_labels: Sequence[np.ndarray], class_names: Sequence[str],
                             counts: Sequence[int] = DEFAULT_COUNTS,
                             gt_ignore: Optional[Sequence[np.ndarray]] = None) -> Dict:
    """Recall, AR and (M)ABO of per-image proposal lists, overall and per class.

    Args:
        proposals: per image, ``(N, 4)`` xyxy boxes, best-ranked first.
        gt_boxes, gt_labels: per image, ``(G, 4)`` xyxy and ``(G,)`` labels in ``1..C``.
        class_names: the ``C`` names, label ``i`` is ``class_names[i - 1]``.
        counts: the proposal budgets N to report; ``"all"`` (every proposal) is added.
        gt_ignore: per image ``(G,)`` bool; ignored boxes (crowd / difficult) are not counted.

    Returns:
        ``{"num_images", "num_gt", "mean_proposals", "counts": [...names],
        "overall": {count: metrics}, "per_class": {name: {count: metrics}}}`` where metrics
        has ``recall@0.5``, ``recall@0.7``, ``AR`` and ``ABO`` (overall: ``MABO``, the mean
        of the per-class ABO, and ``ABO`` over all boxes).
    """
    if not (len(proposals) == len(gt_boxes) == len(gt_labels)):
        raise ValueError(f"got {len(proposals)} proposal lists for {len(gt_boxes)} images")
    counts = [int(n) for n in counts]
    names = [str(n) for n in counts] + ["all"]
    overlaps, labels = [], []
    for i, (props, boxes, cls) in enumerate(zip(proposals, gt_boxes, gt_labels)):
        keep = np.ones(len(cls), bool) if gt_ignore is None else ~np.asarray(gt_ignore[i], bool)
        overlaps.append(best_overlaps(props, np.asarray(boxes).reshape(-1, 4)[keep], counts))
        labels.append(np.asarray(cls, np.int64)[keep])
    overlaps = np.concatenate(overlaps) if overlaps else np.zeros((0, len(names)))
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    per_class: Dict[str, Dict[str, Dict[str, float]]] = {}
    for c, name in enumerate(class_names, start=1):
        rows = overlaps[labels == c]
        per_class[name] = {n: _metrics(rows[:, j]) for j, n in enumerate(names)}
    overall = {}
    for j, n in enumerate(names):
        metrics = _metrics(overlaps[:, j])
        abos = [per_class[name][n]["ABO"] for name in class_names if per_class[name][n]["num_gt"]]
        metrics["MABO"] = float(np.mean(abos)) if abos else 0.0
        overall[n] = metrics
    return {
        "num_images": len(proposals),
        "num_gt": int(len(labels)),
        "mean_proposals": float(np.mean([len(p) for p in proposals])) if len(proposals) else 0.0,
        "counts": names,
        "overall": overall,
        "per_class": per_class,
    }


def _metrics(best: np.ndarray) -> Dict[str, float]:
    if len(best) == 0:
        return {"num_gt": 0, "recall@0.5": 0.0, "recall@0.7": 0.0, "AR": 0.0, "ABO": 0.0}
    # a small tolerance so that an IoU of exactly t in float32 counts at threshold t
    recalls = [(best >= t - 1e-6).mean() for t in AR_THRESHOLDS]
    return {
        "num_gt": int(len(best)),
        "recall@0.5": float((best >= 0.5 - 1e-6).mean()),
        "recall@0.7": float((best >= 0.7 - 1e-6).mean()),
        "AR": float(np.mean(recalls)),
        "ABO": float(best.mean()),
    }


def format_recall(result: Dict, title: str = "proposal recall") -> str:
    """A text table: one row per proposal budget, overall, then MABO / AR per class at each budget."""
    lines = [f"{title}: {result['num_images']} images, {result['num_gt']} objects, "
             f"{result['mean_proposals']:.0f} proposals per image on average"]
    header = f"{'N':>6} {'R@0.5':>7} {'R@0.7':>7} {'AR':>7} {'MABO':>7}"
    lines.append(header)
    for n in result["counts"]:
        m = result["overall"][n]
        lines.append(f"{n:>6} {m['recall@0.5']:7.3f} {m['recall@0.7']:7.3f} {m['AR']:7.3f} {m['MABO']:7.3f}")
    classes = list(result["per_class"])
    if classes:
        lines.append("per class (R@0.5 / AR / ABO):")
        width = max(len(c) for c in classes)
        lines.append(f"{'':>{width}} " + " ".join(f"{n:>20}" for n in result["counts"]))
        for c in classes:
            cells = []
            for n in result["counts"]:
                m = result["per_class"][c][n]
                cells.append(f"{m['recall@0.5']:.3f}/{m['AR']:.3f}/{m['ABO']:.3f}".rjust(20))
            lines.append(f"{c:>{width}} " + " ".join(cells))
    return "\n".join(lines)
