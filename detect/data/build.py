"""Datasets from a config's ``data.{train,val,test}`` sections: COCO json, Pascal VOC xml or YOLO txt,
as written by their tools or exported by Roboflow (a folder per split)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from detect.data.coco import load_coco, read_json
from detect.data.detection_dataset import DatasetError, DetectionDataset
from detect.data.voc import load_voc
from detect.data.yolo import load_yolo

logger = logging.getLogger(__name__)

ROBOFLOW_COCO = "_annotations.coco.json"  # Roboflow's COCO export: one per split folder


def build_dataset(cfg, which: str, transforms: Optional[Callable] = None,
                  class_names: Optional[Sequence[str]] = None, check_files: bool = True) -> DetectionDataset:
    """The ``data.<which>`` dataset of ``cfg`` (``which`` is ``"train"``, ``"val"`` or ``"test"``).

    ``class_names`` fixes the label order (pass the training set's names to the test set, or a
    checkpoint's); otherwise ``data.classes``, otherwise the names found in the annotations.
    """
    spec = cfg.data[which]
    classes = list(class_names) if class_names else (list(cfg.data.classes) or None)
    category_map = dict(cfg.data.category_map)
    if spec.format == "coco":
        ann_file, img_dir = spec.ann_file, spec.img_dir
        if not ann_file and spec.root and spec.split:  # a Roboflow export: the split's folder in root
            ann_file, img_dir = Path(spec.root) / spec.split / ROBOFLOW_COCO, img_dir or Path(spec.root) / spec.split
            classes = classes or annotated_categories(Path(spec.root))
        _require(which, spec.format, {"ann_file": ann_file, "img_dir": img_dir},
                 " (or root and split for a Roboflow export)")
        return load_coco(ann_file, img_dir, classes, category_map, transforms, check_files)
    _require(which, spec.format, {"root": spec.root, "split": spec.split})
    if spec.format == "yolo":
        return load_yolo(spec.root, spec.split, classes, category_map, transforms, check_files)
    return load_voc(spec.root, spec.split, classes, category_map, transforms, check_files)


def _require(which: str, fmt: str, values, also: str = "") -> None:
    missing = [k for k, v in values.items() if not v]
    if missing:
        keys = ", ".join(f"data.{which}.{k}" for k in missing)
        raise DatasetError(f"data.{which}.format is {fmt!r} but {keys} is not set{also}")


def annotated_categories(root: Path) -> List[str]:
    """The category names of a Roboflow COCO export that some split annotates, in category-id order.
    Roboflow writes the project's superclass as category 0 with no box: a class that would never be
    seen, dropped here with a note."""
    files = sorted(root.glob(f"*/{ROBOFLOW_COCO}"))
    if not files:
        raise DatasetError(f"{root}: no split folder with {ROBOFLOW_COCO} (a Roboflow COCO export has one per split)")
    names, used = {}, set()
    for f in files:
        data = read_json(f, "COCO annotation file")
        names.update({c["id"]: c["name"] for c in data.get("categories", [])})
        used.update(a["category_id"] for a in data.get("annotations", []))
    unused = [names[i] for i in sorted(names) if i not in used]
    if unused:
        logger.info("%s: categories without a box in any split left out: %s", root, ", ".join(map(str, unused)))
    return [names[i] for i in sorted(names) if i in used]
