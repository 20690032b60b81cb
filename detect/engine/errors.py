"""Why a detector misses: every false positive and missed object assigned to one error type, and the
AP each type costs (after TIDE, Bolya et al. 2020, "TIDE: A General Toolbox for Identifying Object
Detection Errors").

A detection is matched as COCO matches at IoU 0.5 (per image and class, best score first, the
highest-IoU free ground truth, crowd / ignore regions absorbing detections without counting them,
the best 100 per image and class). Each unmatched detection is then, in TIDE's order:

    loc     IoU with a box of its class in [0.1, 0.5)                    (right class, poor box)
    cls     IoU >= 0.5 with a box of another class                       (right box, wrong class)
    dupe    IoU >= 0.5 with a box of its class already matched           (a second detection)
    bkg     IoU <= 0.1 with every box                                    (background)
    both    anything else: IoU in (0.1, 0.5) with a box of another class (wrong class and poor box)

and each ground-truth box that no detection matched, and that no ``loc`` or ``cls`` error points at,
is ``missed``. The cost of a type is TIDE's oracle: fix every error of that type alone and recompute
AP50 with the package's COCO evaluator (``dAP = AP50(fixed) - AP50(as is)``) — ``cls``: the detection
takes the class of its box (suppressed if that box is already matched: it would be a duplicate),
``loc``: the detection takes its box (same rule), ``dupe`` / ``bkg`` / ``both``: the detection is
removed, ``missed``: the missed boxes are removed from the ground truth. Reported overall, per class
(AP50 of the class) and per object size (COCO's small / medium / large AP50), which TIDE never shipped.
IoUs, crowd handling and the 100-per-image cut are pycocotools' own, so the fixed results are scored
by exactly the evaluator that scores the originals.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from detect.engine.evaluation import evaluate_coco

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "missed")
SIZES = ("small", "medium", "large")


def _size(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def _assign_image(gts: List[Dict[str, Any]], dets: List[Dict[str, Any]], fg: float, bg: float, max_dets: int):
    """Error type of each detection of one image (``None``: a true positive or ignored) and the
    ground truth each refers to, and the ids of the image's matched ground truth."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i]["score"])
    kept, per_class = [], Counter()
    for i in order:  # COCO's cut: the best max_dets per image and class
        per_class[dets[i]["category_id"]] += 1
        if per_class[dets[i]["category_id"]] <= max_dets:
            kept.append(i)
    crowd = [int(bool(g.get("iscrowd", 0) or g.get("ignore", 0))) for g in gts]
    ious = np.zeros((len(kept), len(gts)))
    if kept and gts:
        ious = np.asarray(mask_utils.iou([dets[i]["bbox"] for i in kept], [g["bbox"] for g in gts], crowd))
    same = np.array([[dets[i]["category_id"] == g["category_id"] for g in gts] for i in kept], bool).reshape(ious.shape)
    matched_gt: Dict[int, int] = {}  # gt index -> det index, COCO's greedy match at fg
    status: Dict[int, Optional[str]] = {}
    target: Dict[int, int] = {}
    for row, i in enumerate(kept):
        best, m = min(fg, 1 - 1e-10), -1
        for g in sorted(range(len(gts)), key=lambda g: crowd[g]):  # non-crowd first, as COCO
            if not same[row, g] or (g in matched_gt and not crowd[g]):
                continue
            if m > -1 and not crowd[m] and crowd[g]:
                break
            if ious[row, g] < best:
                continue
            best, m = ious[row, g], g
        if m > -1:
            status[i] = None  # a true positive, or absorbed by a crowd region
            if not crowd[m]:
                matched_gt[m] = i
    real = [g for g in range(len(gts)) if not crowd[g]]
    for row, i in enumerate(kept):
        if i in status:
            continue
        cls_iou = np.where(same[row], ious[row], 0.0)[real] if real else np.zeros(0)
        other_iou = np.where(~same[row], ious[row], 0.0)[real] if real else np.zeros(0)
        used_iou = np.array([ious[row, g] if same[row, g] and g in matched_gt else 0.0 for g in real])
        if cls_iou.size and bg <= cls_iou.max() < fg:
            status[i], target[i] = "loc", real[int(cls_iou.argmax())]
        elif other_iou.size and other_iou.max() >= fg:
            status[i], target[i] = "cls", real[int(other_iou.argmax())]
        elif used_iou.size and used_iou.max() >= fg:
            status[i], target[i] = "dupe", real[int(used_iou.argmax())]
        elif not real or ious[row, real].max() <= bg:
            status[i] = "bkg"
        else:
            status[i], target[i] = "both", real[int(ious[row, real].argmax())]
    claimed = {target[i] for i in target if status[i] in ("loc", "cls")}
    missed = [g for g in real if g not in matched_gt and g not in claimed]
    return kept, status, target, set(matched_gt), missed


def analyse_errors(gt: Dict[str, Any], results: Sequence[Dict[str, Any]], fg_iou: float = 0.5,
                   bg_iou: float = 0.1, max_dets: int = 100) -> Dict[str, Any]:
    """The error decomposition of the module docstring for ``results`` (COCO results list, xywh)
    against ``gt`` (COCO dict). Returns ``counts`` (per type), ``counts_by_size``, ``dAP`` (AP50
    points gained by fixing each type), ``dAP_by_class``, ``dAP_by_size``, ``AP50`` (as is),
    ``per_detection`` (index in ``results`` -> type) and ``missed`` (annotation ids)."""
    anns_by_image: Dict[int, List[Dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    dets_by_image: Dict[int, List[int]] = {}
    for k, det in enumerate(results):
        dets_by_image.setdefault(det["image_id"], []).append(k)
    per_detection: Dict[int, str] = {}
    targets: Dict[int, Dict[str, Any]] = {}
    matched_ids, missed_ids = set(), []
    for image in gt["images"]:
        gts = anns_by_image.get(image["id"], [])
        idx = dets_by_image.get(image["id"], [])
        kept, status, target, matched, missed = _assign_image(gts, [results[k] for k in idx], fg_iou, bg_iou,
                                                              max_dets)
        for i in kept:
            if status[i] is not None:
                per_detection[idx[i]] = status[i]
            if i in target:
                targets[idx[i]] = gts[target[i]]
        matched_ids |= {gts[g]["id"] for g in matched}
        missed_ids += [gts[g]["id"] for g in missed]

    counts = Counter(per_detection.values())
    counts["missed"] = len(missed_ids)
    area_of = {a["id"]: a.get("area", a["bbox"][2] * a["bbox"][3]) for a in gt["annotations"]}
    by_size = {s: Counter() for s in SIZES}
    for k, kind in per_detection.items():
        box = targets[k]["bbox"] if k in targets else results[k]["bbox"]
        by_size[_size(area_of[targets[k]["id"]] if k in targets else box[2] * box[3])][kind] += 1
    for ann_id in missed_ids:
        by_size[_size(area_of[ann_id])]["missed"] += 1

    base = evaluate_coco(gt, list(results), backend="pycocotools")
    fixed = {kind: _fixed(gt, results, per_detection, targets, matched_ids, missed_ids, kind) for kind in ERROR_TYPES}
    scores = {kind: evaluate_coco(g, r, backend="pycocotools") for kind, (g, r) in fixed.items()}
    return {
        "AP50": base["AP50"],
        "counts": {kind: int(counts.get(kind, 0)) for kind in ERROR_TYPES},
        "counts_by_size": {s: {kind: int(by_size[s].get(kind, 0)) for kind in ERROR_TYPES} for s in SIZES},
        "dAP": {kind: scores[kind]["AP50"] - base["AP50"] for kind in ERROR_TYPES},
        "dAP_by_class": {name: {kind: scores[kind]["per_class"][name]["AP50"] - v["AP50"] for kind in ERROR_TYPES}
                         for name, v in base["per_class"].items()},
        "dAP_by_size": {s: {kind: scores[kind]["AP50_by_area"][s] - base["AP50_by_area"][s] for kind in ERROR_TYPES}
                        for s in SIZES},
        "per_detection": per_detection,
        "missed": missed_ids,
    }


def _fixed(gt, results, per_detection, targets, matched_ids, missed_ids, kind: str):
    """``(gt, results)`` with the errors of ``kind`` fixed by TIDE's oracle (module docstring)."""
    if kind == "missed":
        drop = set(missed_ids)
        g = dict(gt, annotations=[a for a in gt["annotations"] if a["id"] not in drop])
        return g, list(results)
    used = set(matched_ids)
    out = []
    for k in sorted(range(len(results)), key=lambda k: -results[k]["score"]):
        det = results[k]
        if per_detection.get(k) != kind:
            out.append(det)
            continue
        if kind in ("dupe", "bkg", "both"):
            continue
        box = targets[k]
        if box["id"] in used:  # its box is matched already: fixed, it would be a duplicate
            continue
        used.add(box["id"])
        det = copy.deepcopy(det)
        if kind == "cls":
            det["category_id"] = box["category_id"]
        else:  # loc
            det["bbox"] = list(box["bbox"])
        out.append(det)
    return gt, out


def confusion_matrix(gt: Dict[str, Any], results: Sequence[Dict[str, Any]], iou: float = 0.5,
                     score_thresh: float = 0.5) -> Dict[str, Any]:
    """Ground-truth class against detected class for the detections scoring at least ``score_thresh``:
    per image, best score first, each detection takes the free ground-truth box (any class) it
    overlaps most at IoU >= ``iou``. ``matrix[i][j]``: boxes of class ``i`` detected as class ``j``;
    the last row and column are background (a detection of nothing, a box nobody detected).
    Detections inside crowd / ignore regions count nowhere. Returns ``{"classes", "matrix"}``."""
    cats = [c["id"] for c in gt["categories"]]
    index = {c: k for k, c in enumerate(cats)}
    bg = len(cats)
    matrix = np.zeros((bg + 1, bg + 1), np.int64)
    anns: Dict[int, List[Dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    dets: Dict[int, List[Dict[str, Any]]] = {}
    for det in results:
        if det["score"] >= score_thresh:
            dets.setdefault(det["image_id"], []).append(det)
    for image in gt["images"]:
        gts = anns.get(image["id"], [])
        ds = sorted(dets.get(image["id"], []), key=lambda d: -d["score"])
        crowd = [int(bool(g.get("iscrowd", 0) or g.get("ignore", 0))) for g in gts]
        ious = np.asarray(mask_utils.iou([d["bbox"] for d in ds], [g["bbox"] for g in gts], crowd)) \
            if ds and gts else np.zeros((len(ds), len(gts)))
        free = [not c for c in crowd]
        for row, det in enumerate(ds):
            real = [g for g in range(len(gts)) if free[g] and ious[row, g] >= iou]
            if real:
                g = max(real, key=lambda g: ious[row, g])
                free[g] = False
                matrix[index[gts[g]["category_id"]], index[det["category_id"]]] += 1
            elif not any(crowd[g] and ious[row, g] >= iou for g in range(len(gts))):
                matrix[bg, index[det["category_id"]]] += 1
        for g, ann in enumerate(gts):
            if free[g] and not crowd[g]:
                matrix[index[ann["category_id"]], bg] += 1
    names = [c["name"] for c in gt["categories"]] + ["background"]
    return {"classes": names, "matrix": matrix.tolist(), "iou": iou, "score_thresh": score_thresh}
