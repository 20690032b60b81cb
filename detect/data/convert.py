"""Writing a dataset in another format, and cutting one delivered in one piece into splits.

Every format is written as a folder that reads back on its own, the images linked into it (a hard
link where the file system allows, a copy otherwise; the originals are never touched):

    coco   OUT/annotations/<split>.json, OUT/images/<split>/...
    voc    OUT/Annotations/<id>.xml, OUT/JPEGImages/<id>.<ext>, OUT/ImageSets/Main/<split>.txt
    yolo   OUT/images/<split>/..., OUT/labels/<split>/<name>.txt, OUT/<split>.txt (the images in order),
           OUT/data.yaml

Lossless for what the formats share: the images (in the dataset's order), the class names, every box
(to float32: VOC and YOLO files get their coordinates with enough digits), the image sizes and the
negative images (an image without boxes keeps its empty annotation). What one format has and another
lacks is said: YOLO has no crowd / difficult flag.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple
from xml.sax.saxutils import escape

import numpy as np
import yaml

from detect.data.detection_dataset import DetectionDataset, ImageRecord
from detect.ops.boxes import xyxy_to_xywh

logger = logging.getLogger(__name__)

FORMATS = ("coco", "voc", "yolo")


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _unique_names(records: Sequence[ImageRecord]) -> List[str]:
    """A file name per image, unique in the split (two ``a.jpg`` of different folders: ``a.jpg``, ``a_2.jpg``)."""
    seen: Counter = Counter()
    names = []
    for r in records:
        seen[r.path.name] += 1
        n = seen[r.path.name]
        names.append(r.path.name if n == 1 else f"{r.path.stem}_{n}{r.path.suffix}")
    return names


def write_dataset(dataset: DetectionDataset, fmt: str, out: Path, split: str) -> Dict[str, object]:
    """Write ``dataset`` as split ``split`` of a ``fmt`` dataset in ``out`` (see the module docstring);
    returns what was written and the data keys that read it back."""
    out = Path(out)
    names = _unique_names(dataset.records)
    if fmt == "coco":
        keys = _write_coco(dataset, names, out, split)
    elif fmt == "voc":
        keys = _write_voc(dataset, names, out, split)
    elif fmt == "yolo":
        keys = _write_yolo(dataset, names, out, split)
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    boxes = sum(len(r.boxes) for r in dataset.records)
    negatives = sum(len(r.boxes) == 0 for r in dataset.records)
    if fmt == "yolo" and any(r.ignore.any() for r in dataset.records):
        logger.warning("%s: YOLO has no crowd / difficult flag: %d such boxes are written as ordinary boxes",
                       out, sum(int(r.ignore.sum()) for r in dataset.records))
    return {"images": len(dataset.records), "boxes": boxes, "negatives": negatives, "classes": dataset.class_names,
            "data_keys": keys}


def _write_coco(dataset, names, out, split) -> Dict[str, str]:
    images, annotations = [], []
    for i, (record, name) in enumerate(zip(dataset.records, names), start=1):
        link_or_copy(record.path, out / "images" / split / name)
        images.append({"id": i, "file_name": name, "width": int(record.width), "height": int(record.height)})
        for box, label, ignore in zip(xyxy_to_xywh(record.boxes.astype(np.float64)), record.labels, record.ignore):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                "iscrowd": int(ignore)})
    categories = [{"id": k, "name": n} for k, n in enumerate(dataset.class_names, start=1)]
    ann_file = out / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return {"format": "coco", "ann_file": str(ann_file), "img_dir": str(out / "images" / split)}


def _write_voc(dataset, names, out, split) -> Dict[str, str]:
    ids = []
    for record, name in zip(dataset.records, names):
        image_id = Path(name).stem
        link_or_copy(record.path, out / "JPEGImages" / name)
        objects = []
        for box, label, ignore in zip(record.boxes.astype(np.float64), record.labels, record.ignore):
            # VOC's 1-based corners (the reader shifts x1, y1 back by one); %.17g keeps every float32
            x1, y1, x2, y2 = box[0] + 1, box[1] + 1, box[2], box[3]
            objects.append(f"  <object><name>{escape(dataset.class_names[label - 1])}</name>"
                           f"<difficult>{int(ignore)}</difficult><bndbox><xmin>{x1:.17g}</xmin><ymin>{y1:.17g}"
                           f"</ymin><xmax>{x2:.17g}</xmax><ymax>{y2:.17g}</ymax></bndbox></object>\n")
        xml = (f"<annotation>\n  <filename>{escape(name)}</filename>\n  <size><width>{record.width}</width>"
               f"<height>{record.height}</height><depth>3</depth></size>\n{''.join(objects)}</annotation>\n")
        (out / "Annotations").mkdir(parents=True, exist_ok=True)
        (out / "Annotations" / f"{image_id}.xml").write_text(xml)
        ids.append(image_id)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return {"format": "voc", "root": str(out), "split": split}


def _write_yolo(dataset, names, out, split) -> Dict[str, str]:
    listed = []
    for record, name in zip(dataset.records, names):
        image = out / "images" / split / name
        link_or_copy(record.path, image)
        w, h = float(record.width), float(record.height)
        lines = []
        for box, label in zip(record.boxes.astype(np.float64), record.labels):
            cx, cy, bw, bh = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h, (box[2] - box[0]) / w, \
                (box[3] - box[1]) / h
            lines.append(f"{label - 1} {cx:.10g} {cy:.10g} {bw:.10g} {bh:.10g}\n")
        label_file = out / "labels" / split / Path(name).with_suffix(".txt")
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("".join(lines))  # an empty file: a negative image
        listed.append(f"./images/{split}/{name}")
    (out / f"{split}.txt").write_text("".join(p + "\n" for p in listed))  # the dataset's order
    yaml_file = out / "data.yaml"
    data = yaml.safe_load(yaml_file.read_text()) if yaml_file.is_file() else {}
    data.update({"path": ".", split: f"{split}.txt", "names": list(dataset.class_names)})
    yaml_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return {"format": "yolo", "root": str(yaml_file), "split": split}


def stratified_split(dataset: DetectionDataset, fractions: Sequence[float], seed: int = 0) -> List[List[int]]:
    """Record indices for each split, ``fractions`` of the images (summing to 1), each class's boxes
    spread in the same proportions (images taken rarest class first, each to the split that most
    lacks that class; images without boxes by count). Seeded: the same seed, the same splits."""
    fractions = np.asarray(fractions, np.float64)
    if len(fractions) < 2 or (fractions < 0).any() or abs(fractions.sum() - 1) > 1e-6:
        raise ValueError(f"split fractions must be two or three shares summing to 1, got {list(fractions)}")
    num_classes = len(dataset.class_names)
    counts = np.zeros((len(dataset.records), num_classes))
    for i, r in enumerate(dataset.records):
        np.add.at(counts[i], r.labels - 1, 1)
    total = counts.sum(0)
    rarity = np.where(total > 0, total, np.inf)  # a class's box count: the fewer, the earlier its images go
    rarest = [int(np.argmin(np.where(c > 0, rarity, np.inf))) if c.any() else None for c in counts]
    key = [rarity[c] if c is not None else np.inf for c in rarest]
    order = sorted(np.random.default_rng(seed).permutation(len(counts)).tolist(), key=lambda i: key[i])
    wanted_boxes = fractions[:, None] * total[None, :]
    wanted_images = fractions * len(counts)
    have_boxes, have_images = np.zeros_like(wanted_boxes), np.zeros(len(fractions))
    splits: List[List[int]] = [[] for _ in fractions]
    for i in order:
        need = wanted_images - have_images if rarest[i] is None else \
            wanted_boxes[:, rarest[i]] - have_boxes[:, rarest[i]]
        need = np.where(have_images < wanted_images, need, -np.inf)  # a full split takes no more
        k = int(np.argmax(need)) if np.isfinite(need).any() else int(np.argmax(wanted_images - have_images))
        splits[k].append(i)
        have_boxes[k] += counts[i]
        have_images[k] += 1
    return [sorted(s) for s in splits]


def subset(dataset: DetectionDataset, indices: Sequence[int]) -> DetectionDataset:
    """The same dataset with only ``indices`` (records renumbered from 1)."""
    import copy

    part = copy.copy(dataset)
    part.records = [copy.copy(dataset.records[i]) for i in indices]
    for n, record in enumerate(part.records, start=1):
        record.image_id = n
    return part


def split_counts(dataset: DetectionDataset, indices: Sequence[int]) -> Tuple[int, Dict[str, int]]:
    boxes = Counter()
    for i in indices:
        boxes.update(dataset.class_names[int(lab) - 1] for lab in dataset.records[i].labels)
    return len(indices), dict(boxes)
