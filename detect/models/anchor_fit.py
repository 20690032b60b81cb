"""Anchors fitted to a dataset's boxes, and the best possible recall of any set of anchors.

The RPN labels an anchor foreground when its IoU with a ground-truth box reaches ``fg_iou`` (0.7).
A box that no anchor reaches is learnt only through the low-quality-match rule, from an anchor that
overlaps it poorly, so the share of boxes some anchor *can* match -- the best possible recall (BPR)
-- bounds what the RPN learns well. It depends on the anchors' shapes *and* on where they sit: anchors
are centred on a grid of the level's stride, so a 24-pixel box on a 16-pixel grid is at most 8 pixels
from the nearest centre, which alone can cap its IoU below 0.7.

:func:`best_anchor_iou` computes each box's best IoU over every anchor of every level exactly (the
nearest grid centre of each level, in closed form). :func:`fit_anchors` chooses the sizes per level
and the aspect ratios in two steps:

1. k-means in log space: of ``sqrt(w h)`` for the sizes and of ``h / w`` for the ratios. For two
   boxes centred on each other that differ only in size, or only in aspect ratio, ``1 - IoU`` is a
   monotone function of the distance of these logs, so this is the ``1 - IoU`` k-means of
   YOLOv2 factored along the two axes an RPN's anchors have (every level shares the ratios, and the
   head predicts the same number of anchors on every level).
2. a coordinate search from there that maximises the grid-aware BPR (plus a tenth of the mean best
   IoU, which breaks ties and guides the search where the BPR is flat), keeping the sizes increasing
   from the finest level to the coarsest.

Box sets of any shape give valid anchors: one box, all boxes of one size (the sizes and ratios are
spread apart by at least :data:`MIN_SIZE_STEP` / :data:`MIN_RATIO_STEP`), or no box at all (the
anchors given as the starting point come back).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from detect.data.stats import SIZE_EDGES
from detect.ops import nonempty_boxes

MIN_SIZE_STEP = 2 ** 0.25   # sizes of one level spread this far apart when the data gives no choice
MIN_RATIO_STEP = 2 ** 0.5   # and consecutive aspect ratios by at least this one
MAX_FIT_BOXES = 20000       # boxes the fit looks at (a seeded sample of larger sets)
# Training warns about the boxes no anchor overlaps by half. The RPN's matcher keeps each box's best
# anchor as a positive whatever its IoU (low-quality matches), so a box under the RPN's 0.7 is still
# learnt, from a poorer start; under 0.5 even that start is not the object by the RoI head's own
# foreground threshold, and such boxes are the ones a detector misses. The 0.7 shares stay in the
# report (``detect dataset anchors``), where they show how well the anchors fit.
MISSED_IOU = 0.5


def _grid_offsets(centres: np.ndarray, stride: float) -> np.ndarray:
    """Distance of each coordinate to the nearest anchor centre ``(k + 0.5) * stride``."""
    return np.abs(centres - (np.floor(centres / stride) + 0.5) * stride)


def _overlap(extent: np.ndarray, anchor: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """1-D overlap of a segment of length ``extent`` centred at 0 with one of length ``anchor``
    centred at ``offset`` (broadcasting)."""
    return np.clip(np.minimum(extent / 2, offset + anchor / 2) - np.maximum(-extent / 2, offset - anchor / 2), 0, None)


def best_anchor_iou(boxes: np.ndarray, sizes: Sequence[Sequence[float]], ratios: Sequence[float],
                    strides: Sequence[int]) -> np.ndarray:
    """``(N,)`` best IoU of each box ``(N, 4)`` xyxy with any anchor of any level.

    Anchors of level ``l`` have the sizes ``sizes[l]`` at every ratio ``h / w`` in ``ratios`` (area
    ``size ** 2``, as :func:`detect.models.anchors.cell_anchors`) and sit at ``(k + 0.5) * strides[l]``.
    IoU only falls as an anchor moves away from a box's centre, so the nearest centre is the best one.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = np.sqrt(np.asarray(ratios, np.float64))
    best = np.zeros(len(boxes))
    for level_sizes, stride in zip(sizes, strides):
        s = np.asarray(level_sizes, np.float64)
        aw, ah = (s[:, None] / r[None]).ravel(), (s[:, None] * r[None]).ravel()  # (S * R,)
        dx, dy = _grid_offsets(cx, stride)[:, None], _grid_offsets(cy, stride)[:, None]
        inter = _overlap(w[:, None], aw[None], dx) * _overlap(h[:, None], ah[None], dy)
        iou = inter / (w[:, None] * h[:, None] + aw * ah - inter)
        best = np.maximum(best, iou.max(axis=1))
    return best


def grid_iou_limit(boxes: np.ndarray, strides: Sequence[int]) -> np.ndarray:
    """``(N,)`` the best IoU an anchor of exactly the box's shape reaches on any level's grid: the
    ceiling that the stride alone puts on each box, whatever the anchor sizes and ratios."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    best = np.zeros(len(boxes))
    for stride in strides:
        inter = _overlap(w, w, _grid_offsets(cx, stride)) * _overlap(h, h, _grid_offsets(cy, stride))
        best = np.maximum(best, inter / (2 * w * h - inter))
    return best


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    """Sorted 1-D k-means centres, started at the quantiles (deterministic)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None]).argmin(axis=1)
        new = np.array([values[assign == j].mean() if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def _spread(log_values: np.ndarray, min_step: float) -> np.ndarray:
    """Sorted logs moved apart, keeping their mean, until neighbours differ by at least ``min_step``."""
    v = np.sort(np.asarray(log_values, np.float64))
    for _ in range(len(v) * 4):
        gaps = np.diff(v)
        if not len(gaps) or gaps.min() >= min_step - 1e-9:
            break
        i = int(gaps.argmin())
        mid = (v[i] + v[i + 1]) / 2
        v[i], v[i + 1] = mid - min_step / 2, mid + min_step / 2
        v = np.sort(v)
    return v


def _credit(iou: np.ndarray, fg_iou: float) -> np.ndarray:
    """What the fit maximises, per box: 1 when an anchor reaches the foreground IoU (the box counts in
    the best possible recall), else the share of the way there, so boxes that no anchor can reach on
    this grid still pull the anchors towards them."""
    return np.minimum(iou / fg_iou, 1.0)


def _select_sizes(boxes: np.ndarray, strides: Sequence[int], per_level: int, ratios: Sequence[float],
                  fg_iou: float) -> List[List[float]]:
    """``per_level`` sizes for each level, among candidates ``2 ** (k / 8)`` px spanning the boxes,
    increasing from the finest level to the coarsest (each level's sizes above the finer one's, as
    FPN assigns objects to levels by size).

    Starts at the quantiles of the box sizes (1-D k-means in log size) and improves one size at a
    time: each in turn moves to the best candidate between its neighbours, until none moves.
    """
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    k = len(strides) * per_level
    lo, hi = np.floor(8 * np.log2(side.min() / 2)), np.ceil(8 * np.log2(side.max() * 2))
    grid = 2.0 ** (np.arange(lo - k, hi + k + 1) / 8)
    level_of = np.repeat(np.arange(len(strides)), per_level)
    # credit of every candidate on every level for every box: (L, C, N)
    credit = np.stack([np.stack([_credit(best_anchor_iou(boxes, [[c]], ratios, [t]), fg_iou) for c in grid])
                       for t in strides])
    # starting points: the quantiles of the box sizes, and c x stride (c = 2, 4, 8) at every level
    starts = [_kmeans_1d(np.log2(side), k)] + [
        np.log2(c * np.repeat(np.asarray(strides, np.float64), per_level)) + 0.5 * np.tile(
            np.arange(per_level) - (per_level - 1) / 2, len(strides)) for c in (2, 4, 8)]
    best_score, best_pick = -1.0, None
    for start in starts:
        score, pick = _improve_sizes(credit, level_of, np.searchsorted(np.log2(grid), start), len(boxes))
        if score > best_score + 1e-12:
            best_score, best_pick = score, pick
    pick = best_pick
    return [[round(float(grid[c]), 1) for c in pick[level_of == level]] for level in range(len(strides))]


def _improve_sizes(credit: np.ndarray, level_of: np.ndarray, pick: np.ndarray, num_boxes: int):
    """Coordinate search over candidate indices ``pick`` (one per anchor size, strictly increasing):
    each in turn moves to the best candidate between its neighbours, until none moves. Returns the
    mean credit and the indices."""
    k, num_candidates = len(pick), credit.shape[1]
    pick = np.clip(pick, 0, num_candidates - 1)
    for j in range(1, k):  # strictly increasing, whatever the data (one box, all boxes of one size)
        pick[j] = max(pick[j], pick[j - 1] + 2)
    pick = np.minimum(pick, num_candidates - k * 2 + np.arange(k) * 2)

    def rows(indices):
        return credit[level_of[indices], pick[indices]]

    score = np.max(rows(np.arange(k)), axis=0).mean()
    for _ in range(20):
        moved = False
        for j in range(k):
            rest = np.max(rows(np.delete(np.arange(k), j)), axis=0) if k > 1 else np.zeros(num_boxes)
            first = pick[j - 1] + 1 if j else 0
            last = pick[j + 1] - 1 if j + 1 < k else num_candidates - 1
            values = np.maximum(credit[level_of[j], first:last + 1], rest).mean(axis=1)
            best = first + int(np.argmax(values))
            if values[best - first] > score + 1e-12:
                pick[j], score, moved = best, values[best - first], True
        if not moved:
            break
    return score, pick


def _search_ratios(boxes: np.ndarray, sizes: Sequence[Sequence[float]], log_r: np.ndarray, strides: Sequence[int],
                   fg_iou: float) -> np.ndarray:
    """Coordinate search on the log aspect ratios (sizes fixed) for the largest mean credit, keeping
    neighbouring ratios :data:`MIN_RATIO_STEP` apart."""
    def score(v):
        return _credit(best_anchor_iou(boxes, sizes, np.exp(v), strides), fg_iou).mean()

    best = score(log_r)
    for step in (np.log(2) / 4, np.log(2) / 8, np.log(2) / 16):
        for _ in range(10):
            improved = False
            for i in range(len(log_r)):
                for delta in (step, -step):
                    cand = log_r.copy()
                    cand[i] += delta
                    if np.any(np.diff(np.sort(cand)) < np.log(MIN_RATIO_STEP) - 1e-9):
                        continue
                    value = score(cand)
                    if value > best + 1e-12:
                        log_r, best, improved = cand, value, True
                        break
            if not improved:
                break
    return np.sort(log_r)


def _anywhere(boxes: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """The boxes moved to seeded random offsets from the anchor grids (uniform over the coarsest
    stride): flips, crops and scale jitter put an object anywhere relative to the grid, so the fit
    must not reward anchors for where the annotated boxes happen to sit."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = rng.uniform(0, period, len(boxes)), rng.uniform(0, period, len(boxes))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


@dataclass
class AnchorFit:
    """Fitted anchors: ``sizes`` one list per level (pixels, sqrt of area), ``ratios`` (h / w)."""

    sizes: List[List[float]]
    ratios: List[float]


def fit_anchors(boxes: np.ndarray, strides: Sequence[int], sizes_per_level: int, num_ratios: int,
                fg_iou: float = 0.7, fit_sizes: bool = True, fit_ratios: bool = True,
                sizes: Optional[Sequence[Sequence[float]]] = None, ratios: Optional[Sequence[float]] = None,
                seed: int = 0) -> AnchorFit:
    """Anchor sizes (``sizes_per_level`` per level of ``strides``) and ``num_ratios`` aspect ratios
    for ``boxes (N, 4)`` xyxy at the training scale; see the module docstring.

    ``fit_sizes`` / ``fit_ratios`` false keep ``sizes`` / ``ratios`` as given (the other is fitted
    around them). Without boxes: the given anchors, else 8 x stride and ratios spread around 1.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes = boxes[np.isfinite(boxes).all(axis=1) & nonempty_boxes(boxes)]
    rng = np.random.default_rng(seed)
    if len(boxes) > MAX_FIT_BOXES:
        boxes = boxes[rng.choice(len(boxes), MAX_FIT_BOXES, replace=False)]
    boxes = _anywhere(boxes, max(strides), rng)
    if fit_ratios or ratios is None:
        log_ratio = np.log((boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0]))
        log_r = _spread(_kmeans_1d(log_ratio, num_ratios) if len(boxes) else np.zeros(num_ratios), np.log(MIN_RATIO_STEP))
    else:
        log_r = np.log(np.asarray(ratios, np.float64))
    if not len(boxes):
        out = sizes if sizes is not None and not fit_sizes else [
            [8.0 * t * MIN_SIZE_STEP ** (j - (sizes_per_level - 1) / 2) for j in range(sizes_per_level)] for t in strides]
        return AnchorFit([[round(float(v), 1) for v in lv] for lv in out], [round(float(v), 3) for v in np.exp(log_r)])
    if fit_sizes:
        sizes = _select_sizes(boxes, strides, sizes_per_level, np.exp(log_r), fg_iou)
    if fit_ratios:
        log_r = _search_ratios(boxes, sizes, log_r, strides, fg_iou)
        if fit_sizes:  # once more around the ratios found
            sizes = _select_sizes(boxes, strides, sizes_per_level, np.exp(log_r), fg_iou)
    return AnchorFit([[round(float(v), 1) for v in lv] for lv in sizes], [round(float(v), 3) for v in np.exp(log_r)])


def anchor_report(boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  sizes: Sequence[Sequence[float]], ratios: Sequence[float], strides: Sequence[int],
                  fg_iou: float = 0.7) -> Dict:
    """Best possible recall of some anchors on ``boxes (N, 4)`` (labels ``(N,)`` in 1..C): overall,
    per class, per size range (sqrt of area, :data:`detect.data.stats.SIZE_EDGES`), and why the boxes
    that no anchor reaches are missed (the grid's stride, an aspect ratio outside the anchors', or
    a size between them)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    best = best_anchor_iou(boxes, sizes, ratios, strides)
    hit = best >= fg_iou
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    ratio = (boxes[:, 3] - boxes[:, 1]) / np.maximum(boxes[:, 2] - boxes[:, 0], 1e-9)
    lost = ~hit
    by_grid = lost & (grid_iou_limit(boxes, strides) < fg_iou)
    lo, hi = min(ratios), max(ratios)
    by_ratio = lost & ~by_grid & ((ratio < lo / MIN_RATIO_STEP) | (ratio > hi * MIN_RATIO_STEP))
    by_size = lost & ~by_grid & ~by_ratio

    def share(mask):
        return {"boxes": int(mask.sum()), "bpr": float(hit[mask].mean()) if mask.any() else None,
                "mean_iou": float(best[mask].mean()) if mask.any() else None}

    edges = list(SIZE_EDGES) + [np.inf]
    return {
        "anchor_sizes": [list(map(float, s)) for s in sizes], "aspect_ratios": list(map(float, ratios)),
        "strides": list(strides), "fg_iou": fg_iou, "boxes": len(boxes),
        "bpr": float(hit.mean()) if len(boxes) else None,
        "mean_iou": float(best.mean()) if len(boxes) else None,
        "per_class": {name: share(labels == c) for c, name in enumerate(class_names, start=1)},
        "per_size": [{"from": a, "to": None if b == np.inf else b, **share((side >= a) & (side < b))}
                     for a, b in zip(edges[:-1], edges[1:])],
        "lost": {"total": int(lost.sum()), "grid": int(by_grid.sum()), "ratio": int(by_ratio.sum()),
                 "size": int(by_size.sum()),
                 "grid_max_side": float(side[by_grid].max()) if by_grid.any() else None,
                 "ratio_range": [float(ratio[by_ratio].min()), float(ratio[by_ratio].max())] if by_ratio.any() else None},
    }


def _share(count: int, total: int) -> str:
    return f"{count / total:.0%}" if count >= 0.01 * total else "under 1%"


def lost_boxes_advice(report: Dict, fitted: bool = False) -> Optional[str]:
    """One line naming the share of boxes no anchor reaches and the fix, or ``None`` when under 5%.
    ``fitted``: the anchors were fitted to these boxes (the fix is then more anchors, not a fit)."""
    n, lost = report["boxes"], report["lost"]
    if not n or lost["total"] < 0.05 * n:
        return None
    parts = []
    if lost["grid"]:
        parts.append(f"{_share(lost['grid'], n)} are too small for the finest anchor grid (stride "
                     f"{min(report['strides'])} px; boxes up to {lost['grid_max_side']:.0f} px): raise input.min_size "
                     f"or use a backbone level with a finer stride")
    if lost["ratio"]:
        a, b = lost["ratio_range"]
        fix = "list more ratios in model.rpn.aspect_ratios" if fitted else "set model.rpn.aspect_ratios=auto"
        parts.append(f"{_share(lost['ratio'], n)} have aspect ratios (h/w {a:.2g}-{b:.2g}) beyond the anchors' "
                     f"{report['aspect_ratios']}: {fix}")
    if lost["size"]:
        fix = "raise model.rpn.sizes_per_level" if fitted else \
            "set model.rpn.anchor_sizes=auto (and model.rpn.sizes_per_level)"
        parts.append(f"{_share(lost['size'], n)} fall between or beyond the anchor sizes: {fix}")
    return (f"{lost['total'] / n:.0%} of the training boxes ({lost['total']} of {n}) have no anchor at IoU >= "
            f"{report['fg_iou']:g} (the RPN learns them only from poorer matches): " + "; ".join(parts))


def format_anchor_report(reports: Dict[str, Dict]) -> str:
    """Side-by-side table of :func:`anchor_report` results (e.g. ``{"current": ..., "fitted": ...}``)."""
    names = list(reports)
    first = reports[names[0]]
    lines = []
    for name, r in reports.items():
        lines.append(f"{name + ':':<9} sizes {r['anchor_sizes']}  ratios (h/w) {r['aspect_ratios']}")
    lines.append(f"strides {first['strides']}; best possible recall = share of boxes some anchor matches at "
                 f"IoU >= {first['fg_iou']:g} ({first['boxes']} boxes)")
    header = f"{'':<22} {'boxes':>7} " + " ".join(f"{n + ' BPR':>12} {'IoU':>5}" for n in names)
    lines += ["", header]

    def row(label, key_fn):
        cells = [key_fn(reports[n]) for n in names]
        if not cells[0]["boxes"]:
            return
        lines.append(f"{label:<22} {cells[0]['boxes']:>7} " + " ".join(
            f"{c['bpr']:>12.3f} {c['mean_iou']:>5.2f}" for c in cells))

    row("all", lambda r: {"boxes": r["boxes"], "bpr": r["bpr"], "mean_iou": r["mean_iou"]})
    for cls in first["per_class"]:
        row(f"class {cls}", lambda r, c=cls: r["per_class"][c])
    for i, bucket in enumerate(first["per_size"]):
        label = f"size {bucket['from']}-{bucket['to']} px" if bucket["to"] is not None else f"size >={bucket['from']} px"
        row(label, lambda r, i=i: r["per_size"][i])
    for name, r in reports.items():
        advice = lost_boxes_advice(r, fitted=name == "fitted")
        if advice:
            lines += ["", f"{name}: {advice}"]
    return "\n".join(lines)


def is_auto(cfg) -> bool:
    """Whether the config asks for anchors fitted to the training set."""
    r = cfg.model.rpn
    return cfg.model.type == "faster_rcnn" and "auto" in (r.anchor_sizes, r.aspect_ratios)


def fit_config_anchors(cfg, boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> Dict:
    """The anchors ``cfg`` uses and the ones fitted to ``boxes (N, 4)`` (at the training scale), with
    :func:`anchor_report` of both. Of ``auto`` keys only those are fitted (``anchor_sizes: auto`` with
    fixed ratios fits the sizes around them); a config without ``auto`` gets both fitted, to compare."""
    from detect.models.parts import configured_anchors, rpn_strides

    r = cfg.model.rpn
    strides = rpn_strides(cfg)
    current_sizes, current_ratios = configured_anchors(cfg, strides)
    fit_all = not is_auto(cfg)
    fitted = fit_anchors(boxes, strides, r.sizes_per_level or len(current_sizes[0]), len(current_ratios), r.fg_iou,
                         fit_sizes=fit_all or r.anchor_sizes == "auto", fit_ratios=fit_all or r.aspect_ratios == "auto",
                         sizes=current_sizes, ratios=current_ratios, seed=cfg.train.seed)
    return {"sizes": fitted.sizes, "ratios": fitted.ratios, "strides": strides, "reports": {
        "current": anchor_report(boxes, labels, class_names, current_sizes, current_ratios, strides, r.fg_iou),
        "fitted": anchor_report(boxes, labels, class_names, fitted.sizes, fitted.ratios, strides, r.fg_iou)}}


def settle_anchors(cfg, dataset) -> Dict:
    """Fit ``cfg``'s ``auto`` anchor keys to ``dataset``'s boxes at the training scale and write the
    result into ``cfg`` (so the config a run saves, and every checkpoint, holds the fitted values).
    Returns :func:`fit_config_anchors`' result, plus ``report``: that of the anchors now in ``cfg``."""
    from detect.data.stats import boxes_at_training_scale
    from detect.data.transforms import build_transforms

    boxes, labels = boxes_at_training_scale(dataset, build_transforms(cfg, train=True))
    fit = fit_config_anchors(cfg, boxes, labels, dataset.class_names)
    fit["report"] = fit["reports"]["current"]
    if is_auto(cfg):  # only the auto keys were fitted, so the "fitted" report is that of the anchors in cfg now
        cfg.model.rpn.anchor_sizes, cfg.model.rpn.aspect_ratios = fit["sizes"], fit["ratios"]
        fit["report"] = fit["reports"]["fitted"]
    r = fit["report"]
    fit["missed"] = anchor_report(boxes, labels, dataset.class_names, r["anchor_sizes"], r["aspect_ratios"],
                                  r["strides"], MISSED_IOU)
    return fit
