"""COCO json datasets (an annotation file plus an image folder).

COCO's ``[x, y, w, h]`` boxes become xyxy here, the one place they are read; ``iscrowd`` (and the
``ignore`` flag some COCO-style files carry) becomes ``ignore``. Categories keep their json order by
id, so labels are ``1..C`` in that order unless ``classes`` fixes another order.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from detect.data.detection_dataset import (CategoryMap, DatasetError, DetectionDataset, ImageRecord, Problem,
                                 RawObject, Transform, clean_objects,
                                 image_size_from_file)

LOG = logging.getLogger(__name__)


def read_json(path: Union[str, Path], what: str) -> dict:
    """Load a json file, turning every failure into a :class:`DatasetError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"{what} is empty: {path}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{what} {path} is not valid json: {e.msg} at line {e.lineno}, "
                           f"column {e.colno}") from None


def load_coco(ann_file: Union[str, Path], img_dir: Union[str, Path],
              classes: Optional[Sequence[str]] = None,
              category_map: Optional[Mapping[str, Optional[str]]] = None,
              transforms: Optional[Transform] = None, check_files: bool = True) -> DetectionDataset:
    """Build a dataset from a COCO annotation file.

    Args:
        ann_file: the COCO json (``images``, ``annotations``, ``categories``).
        img_dir: folder the images' ``file_name`` are relative to.
        classes: class names in label order; default: the file's categories sorted by id.
        category_map: rename category names before lookup (``None`` as a value drops that category).
        transforms: applied to each ``(image, target)``.
        check_files: check at once that every image file exists (a training set pointing nowhere
            must fail at start, not hours later).
    """
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    data = read_json(ann_file, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data:
        raise DatasetError(f"{ann_file}: not a COCO annotation file (no 'images' list)")
    if not isinstance(data["images"], list) or not data["images"]:
        raise DatasetError(f"{ann_file}: the 'images' list is empty")
    if not img_dir.is_dir():
        raise DatasetError(f"image folder not found: {img_dir} (for {ann_file})")

    cat_names = _category_names(data, ann_file)
    if classes is None:
        renamed = [(category_map or {}).get(n, n) for n in cat_names.values()]
        classes = list(dict.fromkeys(n for n in renamed if n is not None))
    categories = CategoryMap(classes, category_map)

    objects_by_image: Dict[int, List[RawObject]] = defaultdict(list)
    for ann in data.get("annotations", []):
        ann_id = ann.get("id", "?")
        if ann.get("category_id") not in cat_names:
            raise DatasetError(f"{ann_file}: annotation id {ann_id} has category_id "
                               f"{ann.get('category_id')!r}, which is not in 'categories'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DatasetError(f"{ann_file}: annotation id {ann_id} has no [x, y, w, h] bbox: {bbox!r}")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DatasetError(f"{ann_file}: annotation id {ann_id} has a bbox that is not four numbers: "
                               f"{bbox!r}") from None
        objects_by_image[ann.get("image_id")].append(RawObject(
            name=cat_names[ann["category_id"]], box=(x, y, x + w, y + h),
            ignore=bool(ann.get("iscrowd", 0) or ann.get("ignore", 0)), ref=f"annotation id {ann_id}"))

    image_ids = {img.get("id") for img in data["images"]}
    orphans = set(objects_by_image) - image_ids
    if orphans:
        raise DatasetError(f"{ann_file}: annotations refer to image ids that are not in 'images': "
                           f"{sorted(orphans, key=str)[:10]}")

    if not data.get("annotations"):
        LOG.warning("%s: no annotations at all: every image is a background image (nothing to learn to detect)",
                    ann_file)
    problems: List[Problem] = []
    records = []
    for img in data["images"]:
        records.append(_record(img, img_dir, ann_file, objects_by_image.get(img.get("id"), []),
                               categories, problems))
    return DetectionDataset(records, categories, problems, transforms,
                            description=f"COCO {ann_file}", check_files=check_files)


def _category_names(data: dict, ann_file: Path) -> Dict[int, str]:
    cats = data.get("categories") or []
    if not cats:
        raise DatasetError(f"{ann_file}: the 'categories' list is empty")
    names = {}
    for cat in sorted(cats, key=lambda c: c.get("id", 0)):
        if "id" not in cat or "name" not in cat:
            raise DatasetError(f"{ann_file}: category without 'id' or 'name': {cat}")
        names[cat["id"]] = str(cat["name"])
    return names


def _record(img: dict, img_dir: Path, ann_file: Path, objects: List[RawObject],
            categories: CategoryMap, problems: List[Problem]) -> ImageRecord:
    if "id" not in img or "file_name" not in img:
        raise DatasetError(f"{ann_file}: image entry without 'id' or 'file_name': {img}")
    if not isinstance(img["id"], int):
        raise DatasetError(f"{ann_file}: image ids must be integers, got {img['id']!r}")
    path = img_dir / img["file_name"]
    width, height = img.get("width"), img.get("height")
    for key, value in (("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                  or value != value):
            raise DatasetError(f"{ann_file}: image {img['file_name']!r} has {key} {value!r}, not a size in pixels")
    if not width or not height:
        width, height = image_size_from_file(path, f"{ann_file}: image {img['file_name']!r}")
    source = f"{ann_file}: image {img['file_name']!r}"
    boxes, labels, ignore = clean_objects(objects, categories, int(width), int(height), source, problems)
    return ImageRecord(img["id"], path, int(width), int(height), boxes, labels, ignore, source=str(ann_file))


def to_coco_dict(dataset: DetectionDataset, image_root: Optional[Union[str, Path]] = None) -> dict:
    """The dataset's ground truth as a COCO dict (VOC -> COCO conversion, and the evaluator's input).

    Image ids are the dataset's (``1..N`` for VOC), category ids are the labels ``1..C``, annotation
    ids start at 1. ``ignore`` objects (VOC ``difficult``, COCO crowd) become ``iscrowd: 1`` so
    pycocotools neither rewards nor penalises detections on them. ``file_name`` is relative to
    ``image_root`` when given (and the image is under it), else the full path.
    """
    from detect.ops.boxes import box_area, xyxy_to_xywh

    images, annotations = [], []
    for record in dataset.records:
        file_name = str(record.path)
        if image_root is not None:
            try:
                file_name = record.path.relative_to(image_root).as_posix()
            except ValueError:
                pass
        images.append({"id": record.image_id, "file_name": file_name,
                       "width": record.width, "height": record.height})
        for box, area, label, ignore in zip(xyxy_to_xywh(record.boxes).tolist(), box_area(record.boxes).tolist(),
                                             record.labels.tolist(), record.ignore.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id, "category_id": label,
                                "bbox": box, "area": area, "iscrowd": int(ignore)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
