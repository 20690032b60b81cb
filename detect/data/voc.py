"""Pascal VOC datasets: ``root/Annotations/<id>.xml``, ``root/JPEGImages/<id>.jpg`` and the image ids
of a split in ``root/ImageSets/Main/<split>.txt``; or, as Roboflow exports them, a folder per split
(``root/<split>/``) with each image's xml beside it.

VOC coordinates are 1-based and inclusive; as in detectron2 the top-left corner is shifted by one
to get continuous 0-based xyxy (a box spanning pixels 1..640 becomes 0..640). A box whose
``xmax <= xmin`` or ``ymax <= ymin`` in the file is degenerate (a click, not a drag) and dropped.
``difficult`` objects become ``ignore``: VOC's evaluation neither rewards nor penalises them.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

from detect.data.detection_dataset import (CategoryMap, DatasetError, DetectionDataset, ImageRecord, Problem,
                                 RawObject, Transform, clean_objects,
                                 image_size_from_file)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def read_split(root: Path, split: str) -> List[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` (first token of each non-empty line)."""
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        main = root / "ImageSets" / "Main"
        available = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        raise DatasetError(f"VOC split file not found: {split_file}"
                           + (f" (available splits: {available})" if available else ""))
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"VOC split file {split_file} lists no images")
    return ids


def parse_voc_xml(xml_file: Path) -> Tuple[Optional[str], int, int, List[RawObject]]:
    """Read one annotation file: ``(filename, width, height, objects)`` with raw file coordinates."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml_file}: invalid xml ({e})") from None
    except OSError as e:
        raise DatasetError(f"{xml_file}: cannot read annotation ({e.strerror or e})") from None
    size = root.find("size")
    width = _number(size, "width", xml_file) if size is not None else 0
    height = _number(size, "height", xml_file) if size is not None else 0
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name_el = obj.find("name")
        box_el = obj.find("bndbox")
        if name_el is None or box_el is None:
            raise DatasetError(f"{xml_file}, object {index}: missing <name> or <bndbox>")
        if not (name_el.text or "").strip():
            raise DatasetError(f"{xml_file}, object {index}: <name> is empty (every object needs its class name)")
        x1, y1, x2, y2 = (_number(box_el, k, xml_file, index) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x2 > x1 and y2 > y1:
            x1, y1 = x1 - 1, y1 - 1  # 1-based inclusive -> 0-based continuous
        difficult = obj.find("difficult")
        objects.append(RawObject(
            name=(name_el.text or "").strip(), box=(x1, y1, x2, y2),
            ignore=difficult is not None and (difficult.text or "0").strip() not in ("0", ""),
            ref=f"object {index}"))
    filename = root.findtext("filename")
    return (filename.strip() if filename else None), int(width), int(height), objects


def _number(parent, tag: str, xml_file: Path, index: Optional[int] = None) -> float:
    text = parent.findtext(tag)
    where = f"{xml_file}" if index is None else f"{xml_file}, object {index}"
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: <{tag}> is {text!r}, not a number") from None


def load_voc(root: Union[str, Path], split: str, classes: Optional[Sequence[str]] = None,
             category_map: Optional[Mapping[str, Optional[str]]] = None,
             transforms: Optional[Transform] = None, check_files: bool = True) -> DetectionDataset:
    """Build a dataset from a Pascal VOC folder.

    Args:
        root: folder holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/``.
        split: name of the split file (``train``, ``val``, ``trainval``, ``test``).
        classes: class names in label order; default: the sorted names found in the split (pass
            the training set's names to the test set so both share labels).
        category_map: rename names before lookup (``None`` as a value drops that name).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"VOC root not found: {root}")
    flat = root / split
    if not (root / "Annotations").is_dir() and flat.is_dir():
        # a Roboflow export: each split a folder of its own, the xml files beside their images
        xml_files = sorted(flat.glob("*.xml"))
        if not xml_files:
            raise DatasetError(f"{flat}: no .xml annotation files")
        parsed = [(f.stem, f) + parse_voc_xml(f) for f in xml_files]
    else:
        parsed = []
        for image_id in read_split(root, split):
            xml_file = root / "Annotations" / f"{image_id}.xml"
            if not xml_file.is_file():
                raise DatasetError(f"annotation file not found: {xml_file} (listed in split {split!r})")
            parsed.append((image_id, xml_file) + parse_voc_xml(xml_file))

    if classes is None:
        names = {o.name for *_, objects in parsed for o in objects}
        renamed = {(category_map or {}).get(n, n) for n in names}
        classes = sorted(n for n in renamed if n is not None)
    categories = CategoryMap(classes, category_map)

    problems: List[Problem] = []
    records = []
    for index, (image_id, xml_file, filename, width, height, objects) in enumerate(parsed):
        path = xml_file.parent / (filename or f"{image_id}.jpg") if xml_file.parent == flat else \
            _image_path(root, image_id, filename)
        if width <= 0 or height <= 0:
            width, height = image_size_from_file(path, str(xml_file))
        boxes, labels, ignore = clean_objects(objects, categories, width, height, str(xml_file), problems)
        records.append(ImageRecord(index + 1, path, width, height, boxes, labels, ignore,
                                   source=str(xml_file)))
    return DetectionDataset(records, categories, problems, transforms,
                            description=f"VOC {root} split {split!r}", check_files=check_files)


def _image_path(root: Path, image_id: str, filename: Optional[str]) -> Path:
    default = root / "JPEGImages" / f"{image_id}.jpg"
    if filename and not default.is_file():
        return root / "JPEGImages" / filename
    return default
