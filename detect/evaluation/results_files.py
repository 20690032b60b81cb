"""Reading a COCO ground-truth file and a COCO results file made by any detector, with the checks
that turn pycocotools' assertions into messages naming the file and what is wrong
(``tools/eval.py --detections DETS.json --ann-file GT.json``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from detect.errors import DatasetError
from detect.ops.boxes import xywh_to_xyxy


def _read_json(path: Union[str, Path], what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable JSON {what} file ({e})") from None


def load_ground_truth(path: Union[str, Path]) -> Dict[str, Any]:
    """A COCO ground-truth dict, with ``area`` and ``iscrowd`` filled in where the file has none; an
    ``ignore`` flag marks a crowd box, as the package's COCO reader treats it (``detect.data.coco``)."""
    gt = _read_json(path, "ground-truth")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: a COCO ground-truth file needs the lists 'images', 'annotations' and "
                           f"'categories'")
    for ann in gt["annotations"]:
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0) or ann.get("ignore", 0)))
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    return gt


def load_results(path: Union[str, Path], gt: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The detections of a COCO results file (``[{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}, ...]``), checked against ``gt``: every image and category id known, finite scores,
    boxes of positive size. Boxes written as ``[x1, y1, x2, y2]`` are recognised and named. An empty
    list is valid (everything missed)."""
    results = _read_json(path, "results")
    if not isinstance(results, list):
        raise DatasetError(f"{path}: a COCO results file is a list of detections, got a {type(results).__name__}")
    keys = ("image_id", "category_id", "bbox", "score")
    for k, det in enumerate(results):
        if not isinstance(det, dict) or any(key not in det for key in keys):
            raise DatasetError(f"{path}: detection {k} needs the keys {list(keys)}, got {det!r:.120}")
        if not (isinstance(det["bbox"], list) and len(det["bbox"]) == 4):
            raise DatasetError(f"{path}: detection {k}: bbox must be [x, y, width, height], got {det['bbox']!r:.80}")
        if not isinstance(det["score"], (int, float)) or not math.isfinite(det["score"]):
            raise DatasetError(f"{path}: detection {k}: score {det['score']!r} is not a finite number")
    images = {im["id"]: im for im in gt["images"]}
    unknown = sorted({d["image_id"] for d in results} - set(images), key=str)
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} image id(s) not in the ground truth, e.g. {unknown[:5]} "
                           f"(its ids run {min(images, default='-')}..{max(images, default='-')})")
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    unknown = sorted({d["category_id"] for d in results} - set(cats), key=str)
    if unknown:
        raise DatasetError(f"{path}: category id(s) {unknown} are not in the ground truth, whose categories are "
                           f"{cats}")
    if results:
        boxes = np.array([d["bbox"] for d in results], np.float64)
        _check_xywh(path, results, boxes, images)
    return results


def _check_xywh(path, results, boxes: np.ndarray, images: Dict[int, Dict[str, Any]]) -> None:
    size = np.array([[images[d["image_id"]].get("width", np.inf), images[d["image_id"]].get("height", np.inf)]
                     for d in results], np.float64)
    past = (boxes[:, 0] + boxes[:, 2] > size[:, 0] * 1.05) | (boxes[:, 1] + boxes[:, 3] > size[:, 1] * 1.05)
    as_xyxy = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] <= size[:, 0] * 1.05) \
        & (boxes[:, 3] <= size[:, 1] * 1.05)
    # xyxy written as xywh: many boxes reach past their image, and all of them fit as corners
    if past.mean() > 0.2 and as_xyxy.all():
        raise DatasetError(f"{path}: the boxes look like [x1, y1, x2, y2], not COCO's [x, y, width, height]: "
                           f"{int(past.sum())} of {len(boxes)} reach past their image read as width and height, "
                           f"and all fit read as corners; write width = x2 - x1, height = y2 - y1")
    bad = np.flatnonzero((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | ~np.isfinite(boxes).all(axis=1))
    if bad.size:
        raise DatasetError(f"{path}: {bad.size} detection(s) with a zero, negative or non-finite width or height, "
                           f"e.g. detection {int(bad[0])}: bbox {results[int(bad[0])]['bbox']}")


def results_to_detections(results: List[Dict[str, Any]], gt: Dict[str, Any]) -> Dict[int, Dict[str, np.ndarray]]:
    """COCO results -> the evaluator's ``image_id -> {boxes (xyxy), scores, labels (category ids)}``,
    every ground-truth image present (an image without detections has empty arrays)."""
    boxes = xywh_to_xyxy(np.array([d["bbox"] for d in results], np.float32).reshape(-1, 4))
    scores = np.array([d["score"] for d in results], np.float32)
    labels = np.array([d["category_id"] for d in results], np.int64)
    by_image: Dict[Any, List[int]] = {}
    for k, d in enumerate(results):
        by_image.setdefault(d["image_id"], []).append(k)
    out = {}
    for im in gt["images"]:
        idx = np.array(by_image.get(im["id"], []), np.int64)
        out[im["id"]] = {"boxes": boxes[idx], "scores": scores[idx], "labels": labels[idx]}
    return out
