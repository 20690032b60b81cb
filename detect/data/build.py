"""Datasets from a config's ``data.{train,test}`` sections."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from detect.data.coco import load_coco
from detect.data.detection_dataset import DatasetError, DetectionDataset
from detect.data.voc import load_voc

_REQUIRED = {"coco": ("ann_file", "img_dir"), "voc": ("root", "split")}


def build_dataset(cfg, which: str, transforms: Optional[Callable] = None,
                  class_names: Optional[Sequence[str]] = None, check_files: bool = True) -> DetectionDataset:
    """The ``data.<which>`` dataset of ``cfg`` (``which`` is ``"train"`` or ``"test"``).

    ``class_names`` fixes the label order (pass the training set's names to the test set, or a
    checkpoint's); otherwise ``data.classes``, otherwise the names found in the annotations.
    """
    spec = cfg.data[which]
    missing = [k for k in _REQUIRED[spec.format] if not spec[k]]
    if missing:
        keys = ", ".join(f"data.{which}.{k}" for k in missing)
        raise DatasetError(f"data.{which}.format is {spec.format!r} but {keys} is not set")
    classes = list(class_names) if class_names else (list(cfg.data.classes) or None)
    category_map = dict(cfg.data.category_map)
    if spec.format == "coco":
        return load_coco(spec.ann_file, spec.img_dir, classes, category_map, transforms, check_files)
    return load_voc(spec.root, spec.split, classes, category_map, transforms, check_files)
