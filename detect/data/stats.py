"""Dataset statistics from the annotations, and a check that every image file can be read."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from detect.data.detection_dataset import DetectionDataset
from detect.data.image_io import ImageReadError, read_image
from detect.ops.boxes import box_area

# Edges of sqrt(box area) in pixels; 32 and 96 are COCO's small / medium / large limits.
SIZE_EDGES = (0, 8, 16, 32, 64, 96, 128, 256, 512)


def dataset_stats(dataset: DetectionDataset) -> Dict[str, Any]:
    """Counts a user checks before training: images, boxes per class, box sizes, problems."""
    per_class = Counter()
    ignored = Counter()
    sizes: List[np.ndarray] = []
    empty = 0
    for record in dataset.records:
        if len(record.labels) == 0:
            empty += 1
        for label, ign in zip(record.labels.tolist(), record.ignore.tolist()):
            (ignored if ign else per_class)[dataset.class_names[label - 1]] += 1
        sizes.append(np.sqrt(np.maximum(box_area(record.boxes), 0)))
    sizes_all = np.concatenate(sizes) if sizes else np.zeros(0)
    edges = list(SIZE_EDGES) + [np.inf]
    hist = np.histogram(sizes_all, bins=edges)[0] if sizes_all.size else np.zeros(len(edges) - 1, int)
    return {
        "dataset": dataset.description,
        "images": len(dataset),
        "boxes": int(sum(per_class.values()) + sum(ignored.values())),
        "classes": list(dataset.class_names),
        "boxes_per_class": {name: per_class.get(name, 0) for name in dataset.class_names},
        "ignored_per_class": {name: ignored.get(name, 0) for name in dataset.class_names},
        "images_without_boxes": empty,
        "size_histogram": [{"from": lo, "to": None if hi == np.inf else hi, "count": int(c)}
                           for lo, hi, c in zip(edges[:-1], edges[1:], hist)],
        "coco_sizes": {"small": int((sizes_all < 32).sum()),
                       "medium": int(((sizes_all >= 32) & (sizes_all < 96)).sum()),
                       "large": int((sizes_all >= 96).sum())},
        "problems": [{"file": p.file, "object": p.obj, "kind": p.kind, "message": p.message}
                     for p in dataset.problems],
    }


def unreadable_images(dataset: DetectionDataset, workers: int = 4) -> List[Dict[str, Any]]:
    """Decode every image file of ``dataset`` (threads: OpenCV releases the GIL) and return the ones
    training would replace and evaluation leave out, as ``problems`` rows: missing, empty, cut
    short, not an image, or of another size than the annotations say."""
    def check(record) -> Dict[str, Any]:
        try:
            image = read_image(record.path)
        except ImageReadError as e:
            return {"file": str(record.path), "object": None, "kind": "unreadable", "message": e.reason or str(e)}
        h, w = image.shape[:2]
        if (h, w) != (record.height, record.width):
            return {"file": str(record.path), "object": None, "kind": "size",
                    "message": f"the image is {w}x{h}, the annotations say {record.width}x{record.height}"}
        return {}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [row for row in pool.map(check, dataset.records) if row]


def boxes_at_training_scale(dataset: DetectionDataset, transform) -> Tuple[np.ndarray, np.ndarray]:
    """Every non-ignored box ``(N, 4)`` xyxy as the model sees it in training, with its label ``(N,)``:
    scaled by each factor ``transform.possible_scales(h, w)`` can apply (one copy per scale with
    multi-scale training). From the annotations alone."""
    boxes, labels = [], []
    for record in dataset.records:
        keep = ~record.ignore
        for scale in transform.possible_scales(record.height, record.width):
            boxes.append(record.boxes[keep] * np.float32(scale))
            labels.append(record.labels[keep])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(boxes).reshape(-1, 4), np.concatenate(labels)


def format_stats(stats: Dict[str, Any], title: str = "", bar_width: int = 40) -> str:
    """The statistics as a terminal report with bar charts."""
    lines = [f"== {title or stats['dataset']}",
             f"images: {stats['images']}   boxes: {stats['boxes']}   "
             f"images without boxes: {stats['images_without_boxes']}", "", "boxes per class:"]
    counts = stats["boxes_per_class"]
    width = max(len(n) for n in counts) if counts else 5
    top = max(list(counts.values()) + [1])
    for name, n in counts.items():
        ign = stats["ignored_per_class"].get(name, 0)
        extra = f"  (+{ign} ignored)" if ign else ""
        lines.append(f"  {name:<{width}} {n:>7}  {_bar(n, top, bar_width)}{extra}")
    lines += ["", "box size, sqrt(area) in px:"]
    top = max([b["count"] for b in stats["size_histogram"]] + [1])
    for b in stats["size_histogram"]:
        label = f"{b['from']}-{b['to']}" if b["to"] is not None else f">={b['from']}"
        lines.append(f"  {label:>8} {b['count']:>7}  {_bar(b['count'], top, bar_width)}")
    s = stats["coco_sizes"]
    lines.append(f"  COCO small (<32): {s['small']}   medium: {s['medium']}   large (>=96): {s['large']}")
    problems = stats["problems"]
    lines += ["", f"problems: {len(problems)}"]
    for p in problems:
        where = p["file"] if p["object"] is None else f"{p['file']}, {p['object']}"
        lines.append(f"  [{p['kind']}] {where}: {p['message']}")
    return "\n".join(lines)


def _bar(n: int, top: int, width: int) -> str:
    return "#" * int(round(width * n / top)) if top else ""


SMALL_SIDE = 16.0  # px (sqrt of area): under it the finest stride-8 grid of an FPN places boxes poorly


def tiling_advice(dataset: DetectionDataset, transform, tile_size: int = 512) -> Optional[str]:
    """One line recommending sliced training and inference (``model.tiles``) when most boxes are under
    :data:`SMALL_SIDE` px at the training scale but not in the images as they are, else ``None``."""
    native = np.concatenate([r.boxes[~r.ignore] for r in dataset.records] or [np.zeros((0, 4), np.float32)])
    if not len(native):
        return None
    trained, _ = boxes_at_training_scale(dataset, transform)
    side = lambda b: np.sqrt(np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0))
    small_trained, small_native = float((side(trained) < SMALL_SIDE).mean()), float((side(native) < SMALL_SIDE).mean())
    if small_trained < 0.5 or small_native > 0.25:
        return None
    return (f"{small_trained:.0%} of the boxes are under {SMALL_SIDE:g} px at the training scale, {small_native:.0%} in "
            f"the images as they are: train on native-resolution tiles and slice at test time, "
            f"model.tiles.size={tile_size} input.tile_crop_prob=0.5")
