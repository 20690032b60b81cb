"""YOLO txt datasets, as Ultralytics and Roboflow write them.

``root`` is an Ultralytics ``data.yaml`` (or a folder holding one), or a dataset folder with
``images/<split>/`` and ``labels/<split>/`` beside each other and the class names in
``classes.txt`` (or ``data.classes``):

    path: ../datasets/mine        # the dataset folder (default: the yaml's own)
    train: images/train           # a folder, a list of folders, or a .txt list of images
    val: images/val
    names: [cat, dog]             # or {0: cat, 1: dog}

An image's labels are in the file of the same name under the ``labels`` folder that mirrors its
``images`` folder, one object per line, normalised to the image's size: ``class cx cy w h``, or a
polygon ``class x1 y1 x2 y2 ...`` (its bounding box). An image without a label file, or with an
empty one, is a negative image. Every line that cannot be used is named with its file and line and
left out (a wrong number of fields, a class id beyond ``names``, a field that is not a number);
coordinates outside the image are clipped and zero-size boxes dropped, each said the same way.

Reading the labels and the image sizes (from the headers, not the pixels) of a large set is kept in
``labels.cache.json`` beside each labels folder, keyed by each file's size and modification time: a
changed, added or removed file is read again, the rest comes from the cache.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from detect.data.detection_dataset import (CategoryMap, DatasetError, DetectionDataset, ImageRecord, Problem,
                                           RawObject, Transform, clean_objects)
from detect.data.image_io import ImageReadError, displayed_size, is_image_file

logger = logging.getLogger(__name__)

CACHE_NAME = "labels.cache.json"
CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


def read_data_yaml(path: Path) -> Dict[str, Any]:
    """An Ultralytics ``data.yaml``: ``{"root": the dataset folder, "names": [...], "train" / "val" /
    "test": [image folders or .txt lists]}``; its mistakes are one line naming the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: not a readable data.yaml ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a data.yaml is a mapping of keys (path, train, val, names), got "
                           f"{type(data).__name__}")
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not names or not isinstance(names, list):
        raise DatasetError(f"{path}: no 'names' (the class names, a list or {{0: name, ...}})")
    root = Path(data["path"]) if data.get("path") else path.parent
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    splits = {}
    for split in SPLITS:
        entries = data.get(split)
        if entries is None:
            continue
        entries = entries if isinstance(entries, list) else [entries]
        splits[split] = [_resolve(root, str(e), path, split) for e in entries]
    return {"root": root, "names": [str(n) for n in names], **splits}


def _resolve(root: Path, entry: str, yaml_file: Path, split: str) -> Path:
    candidate = (root / entry).resolve()
    if not candidate.exists() and entry.startswith("../"):
        # Roboflow's exports write "../train/images" beside a data.yaml in the export's own folder
        candidate = (root / entry[3:]).resolve()
    if not candidate.exists():
        raise DatasetError(f"{yaml_file}: {split}: {entry} does not exist (looked for {candidate})")
    return candidate


def split_sources(root: Union[str, Path], split: str) -> Tuple[List[Path], Optional[List[str]], str]:
    """``(image folders or .txt lists, class names or None, where they were read)`` of ``split``."""
    root = Path(root)
    yaml_file = root if root.suffix in (".yaml", ".yml") else root / "data.yaml"
    if yaml_file.is_file():
        data = read_data_yaml(yaml_file)
        if split not in data:
            raise DatasetError(f"{yaml_file}: no {split!r} split (it has {[s for s in SPLITS if s in data]})")
        return data[split], data["names"], str(yaml_file)
    if root.suffix in (".yaml", ".yml"):
        raise DatasetError(f"data.yaml not found: {root}")
    images = root / "images" / split
    if not images.is_dir():
        raise DatasetError(f"YOLO dataset: neither {root / 'data.yaml'} nor the folder {images} exists")
    names_file = root / "classes.txt"
    names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()] if names_file.is_file() else None
    return [images], names, str(root)


def list_images(sources: Sequence[Path]) -> List[Path]:
    """The images of a split: every image file under each folder (sorted), or the lines of a .txt list
    (relative to the list's folder's parent, as Ultralytics reads them)."""
    images: List[Path] = []
    for source in sources:
        if source.is_dir():
            images += sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
        else:
            for line in source.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    images.append(p if p.is_absolute() else (source.parent / p).resolve())
    return images


def label_path(image: Path) -> Path:
    """The label file of ``image``: its path with the last ``images`` folder named ``labels``, .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_lines(text: str, num_classes: int) -> Tuple[List[Tuple[int, int, float, float, float, float]],
                                                             List[Tuple[int, str]]]:
    """``(boxes, problems)``: each usable line as ``(line number, class, x1, y1, x2, y2)`` normalised,
    each other one as ``(line number, what is wrong)``."""
    boxes, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        n = len(fields)
        if n != 5 and (n < 7 or n % 2 == 0):
            problems.append((number, f"{n} fields: a box line has 5 (class cx cy w h), a polygon line an odd "
                                     f"number from 7 (class x1 y1 x2 y2 x3 y3 ...); line left out"))
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            bad = next(v for v in fields if not _is_number(v))
            problems.append((number, f"{bad!r} is not a number; line left out"))
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            problems.append((number, f"class id {fields[0]} is not one of the {num_classes} classes (0-"
                                     f"{num_classes - 1}); line left out"))
            continue
        if n == 5:
            cx, cy, w, h = values[1:]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            xs, ys = values[1::2], values[2::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        boxes.append((number, int(cls), *box))
    return boxes, problems


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class LabelCache:
    """``labels.cache.json`` of one labels folder: per image, the size and mtime of the image and of
    its label file with what was read from them."""

    def __init__(self, folder: Path):
        self.path = folder / CACHE_NAME
        self.entries: Dict[str, Any] = {}
        self.changed = False
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == CACHE_VERSION:
                    self.entries = data["images"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is read again from the files

    @staticmethod
    def stamp(path: Path) -> Optional[List[int]]:
        try:
            st = path.stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def get(self, image: Path, label: Path) -> Optional[Dict[str, Any]]:
        entry = self.entries.get(str(image))
        if entry and entry["image_stamp"] == self.stamp(image) and entry["label_stamp"] == self.stamp(label):
            return entry
        return None

    def put(self, image: Path, label: Path, entry: Dict[str, Any]) -> None:
        self.entries[str(image)] = {"image_stamp": self.stamp(image), "label_stamp": self.stamp(label), **entry}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "images": self.entries}))
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only dataset: read again next time
            logger.info("label cache not written (%s): %s", self.path, e.strerror or e)


def read_labels(images: Sequence[Path], num_classes: int) -> List[Dict[str, Any]]:
    """Per image: ``size`` (w, h, or None when unreadable), ``boxes`` and ``problems`` of its label
    file (``label``: whether it exists), through the label folders' caches."""
    caches: Dict[Path, LabelCache] = {}
    out = []
    for image in images:
        label = label_path(image)
        cache = caches.get(label.parent)
        if cache is None:  # once per labels folder (setdefault would read the file once per image)
            cache = caches[label.parent] = LabelCache(label.parent)
        entry = cache.get(image, label)
        if entry is None or entry.get("num_classes") != num_classes:
            try:
                size, error = list(displayed_size(image)), None
            except ImageReadError as e:
                size, error = None, e.reason
            text = label.read_text() if label.is_file() else ""
            boxes, problems = parse_label_lines(text, num_classes)
            entry = {"size": size, "error": error, "label_exists": label.is_file(), "boxes": boxes,
                     "problems": problems, "num_classes": num_classes}
            cache.put(image, label, entry)
        out.append({**entry, "image": image, "label": label})
    for cache in caches.values():
        cache.save()
    return out


def load_yolo(root: Union[str, Path], split: str, classes: Optional[Sequence[str]] = None,
              category_map: Optional[Mapping[str, Optional[str]]] = None,
              transforms: Optional[Transform] = None, check_files: bool = True) -> DetectionDataset:
    """Build a dataset from a YOLO txt dataset (see the module docstring).

    Args:
        root: a ``data.yaml``, a folder holding one, or a folder with ``images/<split>`` and
            ``labels/<split>``.
        split: ``train``, ``val`` or ``test``.
        classes: class names in label order; default: the dataset's ``names`` (a label's class id
            indexes them, whatever ``classes`` says: ``classes`` only fixes the label order).
    """
    sources, names, where = split_sources(root, split)
    if names is None:
        if not classes:
            raise DatasetError(f"{where}: no class names (a classes.txt beside images/ and labels/, or "
                               f"data.classes)")
        names = list(classes)
    images = list_images(sources)
    if not images:
        raise DatasetError(f"{where}: no images in split {split!r} ({', '.join(map(str, sources))})")
    categories = CategoryMap(list(classes) if classes else names, category_map)
    problems: List[Problem] = []
    seen: Dict[Tuple[Path, str], Path] = {}
    records = []
    for item in read_labels(images, len(names)):
        image, label = item["image"], item["label"]
        key = (label.parent, image.stem)
        if key in seen:
            problems.append(Problem(str(image), None, "duplicate-stem",
                                    f"two images named {image.stem!r} in one split share the label file {label} "
                                    f"(the other: {seen[key]}); this one left out"))
            continue
        seen[key] = image
        if item["size"] is None:
            problems.append(Problem(str(image), None, "unreadable", f"{item['error']}; left out"))
            continue
        for number, message in item["problems"]:
            problems.append(Problem(str(label), f"line {number}", "bad-line", message))
        width, height = item["size"]
        objects = [RawObject(names[cls], (x1 * width, y1 * height, x2 * width, y2 * height), ref=f"line {number}")
                   for number, cls, x1, y1, x2, y2 in item["boxes"]]
        boxes, labels, ignore = clean_objects(objects, categories, width, height, str(label), problems)
        if not item["label_exists"]:
            problems.append(Problem(str(image), None, "no-label-file", "no label file: a negative image"))
        records.append(ImageRecord(len(records) + 1, image, width, height, boxes, labels, ignore,
                                   source=str(label)))
    _note_orphan_labels(sources, images, problems)
    return DetectionDataset(records, categories, problems, transforms,
                            description=f"YOLO {where} split {split!r}", check_files=check_files)


def _note_orphan_labels(sources: Sequence[Path], images: Sequence[Path], problems: List[Problem]) -> None:
    """Label files whose image is not in the split (counted by ``detect dataset stats``)."""
    wanted = {label_path(image) for image in images}
    for source in sources:
        folder = label_path(source / "x.jpg").parent if source.is_dir() else None
        if folder is None or not folder.is_dir():
            continue
        for label in sorted(folder.rglob("*.txt")):
            if label not in wanted and label.name != "classes.txt":
                problems.append(Problem(str(label), None, "orphan-label", "a label file without an image"))
