"""Why a detector misses: every false positive and missed object assigned to one error type, and the
AP each type costs (after TIDE, Bolya et al. 2020, "TIDE: A General Toolbox for Identifying Object
Detection Errors").

A detection is matched by pycocotools itself at IoU 0.5 (:func:`coco_matches`: per image and class,
best score first, crowd regions absorbing detections without counting them, the best 100 per image
and class). Each unmatched detection is then, in TIDE's order:

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

import contextlib
import io
import json
from collections import Counter
from typing import Any, Dict, List, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from detect.evaluation.metrics import evaluate_coco

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "missed")
SIZES = ("small", "medium", "large")


def _size(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def coco_matches(gt: Dict[str, Any], results: Sequence[Dict[str, Any]], iou: float, max_dets: int):
    """pycocotools' own matching at IoU ``iou`` (area "all", the best ``max_dets`` per image and class):
    the indices into ``results`` it kept, those it matched or let a crowd region absorb, and the ids of
    the non-crowd ground-truth boxes it matched."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return set(), set(), set()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))  # pycocotools writes into what it is given
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # result k gets id k + 1
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([iou])
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
        ev.params.maxDets = [max_dets]
        ev.evaluate()
    kept, settled, matched = set(), set(), set()
    for e in ev.evalImgs:
        if e is None:
            continue
        for d, m, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            kept.add(d - 1)
            if m > 0 or ignored:
                settled.add(d - 1)
        matched.update(g for g, m, ignored in zip(e["gtIds"], e["gtMatches"][0], e["gtIgnore"]) if m > 0 and not ignored)
    return kept, settled, matched


def _assign_image(gts: List[Dict[str, Any]], dets: List[Dict[str, Any]], matched: set, fg: float, bg: float):
    """TIDE's type of each unmatched detection ``dets`` of one image and the index in ``gts`` it points at
    (``matched``: the ids of the image's boxes COCO matched), and the indices of the missed boxes."""
    real = [g for g in gts if not g.get("iscrowd", 0)]
    status: Dict[int, str] = {}
    target: Dict[int, int] = {}
    if real and dets:
        ious = np.asarray(mask_utils.iou([d["bbox"] for d in dets], [g["bbox"] for g in real], [0] * len(real)))
        same = np.array([d["category_id"] for d in dets])[:, None] == np.array([g["category_id"] for g in real])[None]
        used = np.array([g["id"] in matched for g in real])[None]
        cls_iou, other_iou, used_iou = np.where(same, ious, 0.0), np.where(~same, ious, 0.0), np.where(same & used, ious, 0.0)
    for i in range(len(dets)):
        if not real:
            status[i] = "bkg"
        elif bg <= cls_iou[i].max() < fg:
            status[i], target[i] = "loc", int(cls_iou[i].argmax())
        elif other_iou[i].max() >= fg:
            status[i], target[i] = "cls", int(other_iou[i].argmax())
        elif used_iou[i].max() >= fg:
            status[i], target[i] = "dupe", int(used_iou[i].argmax())
        elif ious[i].max() <= bg:
            status[i] = "bkg"
        else:
            status[i], target[i] = "both", int(ious[i].argmax())
    claimed = {target[i] for i in target if status[i] in ("loc", "cls")}
    missed = [g for g, box in enumerate(real) if box["id"] not in matched and g not in claimed]
    return real, status, target, missed


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
    kept, settled, matched_ids = coco_matches(gt, results, fg_iou, max_dets)
    per_detection: Dict[int, str] = {}
    targets: Dict[int, Dict[str, Any]] = {}
    missed_ids = []
    for image in gt["images"]:
        idx = [k for k in dets_by_image.get(image["id"], []) if k in kept and k not in settled]
        real, status, target, missed = _assign_image(anns_by_image.get(image["id"], []), [results[k] for k in idx],
                                                     matched_ids, fg_iou, bg_iou)
        for i, kind in status.items():
            per_detection[idx[i]] = kind
            if i in target:
                targets[idx[i]] = real[target[i]]
        missed_ids += [real[g]["id"] for g in missed]

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
        if kind == "cls":
            out.append(dict(det, category_id=box["category_id"]))
        else:  # loc
            out.append(dict(det, bbox=list(box["bbox"])))
    return gt, out


def confusion_matrix(gt: Dict[str, Any], results: Sequence[Dict[str, Any]], iou: float = 0.5,
                     score_thresh: float = 0.5) -> Dict[str, Any]:
    """Ground-truth class against detected class for the detections scoring at least ``score_thresh``:
    per image, best score first, each detection takes the free ground-truth box (any class) it
    overlaps most at IoU >= ``iou``. ``matrix[i][j]``: boxes of class ``i`` detected as class ``j``;
    the last row and column are background (a detection of nothing, a box nobody detected).
    Detections inside crowd regions (``iscrowd``, as pycocotools reads them) count nowhere. Returns ``{"classes", "matrix"}``."""
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
        crowd = [int(bool(g.get("iscrowd", 0))) for g in gts]
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
