"""Reading a YOLO dataset's labels: the first read (each image's header and each label file) against
the cached read (``labels.cache.json``), and the read after a share of the label files changed, on a
generated set of any size.

The files were just written, so they sit in the operating system's page cache: the figures time the
reading and parsing, not a cold disk.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

import cv2
import numpy as np

from detect.data.yolo import CACHE_NAME, load_yolo

IMAGE_SIZES = ((640, 480), (480, 640), (800, 600), (1024, 768))  # the headers say these; the pixels are few
CLASSES = 3


def _label_text(rng: np.random.Generator, boxes: int, classes: int) -> str:
    """``boxes`` lines of ``class cx cy w h``, normalised, inside the image."""
    w, h = rng.uniform(0.02, 0.3, boxes), rng.uniform(0.02, 0.3, boxes)
    cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
    cls = rng.integers(0, classes, boxes)
    return "".join(f"{c} {x:.6f} {y:.6f} {a:.6f} {b:.6f}\n" for c, x, y, a, b in zip(cls, cx, cy, w, h))


def make_yolo_set(root: Path, num_images: int, seed: int = 0, classes: int = CLASSES) -> Path:
    """An Ultralytics-layout set under ``root``: ``data.yaml``, ``images/train/*.jpg`` (plain JPEGs of
    a few sizes) and ``labels/train/*.txt`` with 0-9 boxes each (an image in ten without a label file:
    a negative). Returns the ``data.yaml``."""
    rng = np.random.default_rng(seed)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    encoded = [cv2.imencode(".jpg", np.full((h, w, 3), 127, np.uint8))[1].tobytes() for w, h in IMAGE_SIZES]
    for i in range(num_images):
        name = f"{i:06d}"
        (root / "images" / "train" / f"{name}.jpg").write_bytes(encoded[i % len(encoded)])
        if i % 10:
            (root / "labels" / "train" / f"{name}.txt").write_text(_label_text(rng, int(rng.integers(0, 10)), classes))
    names = "".join(f"  {c}: class{c}\n" for c in range(classes))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nnames:\n{names}")
    return root / "data.yaml"


def _timed_read(data_yaml: Path):
    start = time.perf_counter()
    dataset = load_yolo(data_yaml, "train")
    return time.perf_counter() - start, dataset


def _same(a, b) -> bool:
    return len(a.records) == len(b.records) and all(
        x.path == y.path and (x.width, x.height) == (y.width, y.height) and np.array_equal(x.boxes, y.boxes)
        and np.array_equal(x.labels, y.labels) for x, y in zip(a.records, b.records))


def run_yolo_benchmark(root: Path, num_images: int = 10000, rounds: int = 3, changed: float = 0.01,
                       seed: int = 0) -> Dict[str, Any]:
    """Generate the set into ``root`` (a new folder), then time: the first read, the cached read (the
    best of ``rounds``), and the read after ``changed`` of the label files were rewritten. Each read
    must give the same dataset as a read without the cache (the cache deleted)."""
    root = Path(root)
    start = time.perf_counter()
    data_yaml = make_yolo_set(root, num_images, seed)
    generate_s = time.perf_counter() - start
    first_s, first = _timed_read(data_yaml)
    cache = root / "labels" / "train" / CACHE_NAME
    if not cache.is_file():
        raise RuntimeError(f"the first read wrote no cache at {cache}")
    cached_s, cached = min((_timed_read(data_yaml) for _ in range(rounds)), key=lambda r: r[0])
    if not _same(first, cached):
        raise RuntimeError("the cached read gave another dataset than the first read")
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    rng = np.random.default_rng(seed + 1)
    touched = rng.choice(len(labels), max(1, int(round(changed * len(labels)))), replace=False)
    for index in touched:  # one more box: another size, so the cache must read the file again
        with labels[index].open("a") as f:
            f.write(_label_text(rng, 1, CLASSES))
    after_s, after = _timed_read(data_yaml)
    cache.unlink()
    _, fresh = _timed_read(data_yaml)
    if not _same(after, fresh):
        raise RuntimeError("after the change, the cached read differs from a read without the cache")
    return {"images": len(first.records), "boxes": int(sum(len(r.boxes) for r in first.records)),
            "generate_s": generate_s, "first_read_s": first_s, "cached_read_s": cached_s,
            "changed_files": len(touched), "read_after_change_s": after_s,
            "cached_speedup": first_s / max(cached_s, 1e-9)}


def format_yolo_benchmark(result: Dict[str, Any]) -> str:
    return "\n".join([
        f"YOLO labels of {result['images']:,} images ({result['boxes']:,} boxes):",
        f"  first read (image headers and label files, cache written)  {result['first_read_s']:8.2f} s",
        f"  cached read (labels.cache.json)                            {result['cached_read_s']:8.2f} s "
        f"({result['cached_speedup']:.1f}x faster)",
        f"  after {result['changed_files']} label files changed (read again, the rest cached)   "
        f"{result['read_after_change_s']:8.2f} s",
    ])
