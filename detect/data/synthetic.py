"""Synthetic shapes: a small COCO-format detection dataset the package generates itself.

    python -m detect.data.synthetic --out datasets/shapes --num-train 200 --num-test 50 --seed 0

writes ``DIR/train.json``, ``DIR/test.json`` and ``DIR/images/{train,test}/*.jpg``. Three classes
(rectangle, ellipse, triangle) of sizes from a few pixels to most of the image, any aspect ratio,
rotation and colour, on textured, noisy backgrounds with distracting lines; shapes overlap (each
stays at least half visible) and some images hold no object. Boxes are the tight boxes of the
*visible* pixels, so occlusion never leaves a box around nothing. The same seed gives the same
files, whatever the counts asked for (each image has its own random stream).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

CLASSES = ("rectangle", "ellipse", "triangle")
ASPECTS = (1.0, 4 / 3, 3 / 4)  # width / height of the generated images
_SPLIT_STREAM = {"train": 1, "test": 2}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, textured background: colour gradient, stripes, blotches, sensor noise, stray lines."""
    base = rng.uniform(40, 200, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(height, width)
    image = base + ramp[..., None] * rng.uniform(-60, 60, size=3)
    period = rng.uniform(6, 40)
    stripes = np.sin((np.cos(angle + 1) * xx + np.sin(angle + 1) * yy) * 2 * math.pi / period)
    image += stripes[..., None] * rng.uniform(0, 15)
    blotch = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), rng.uniform(3, 12))
    image += (blotch / (blotch.std() + 1e-6))[..., None] * rng.uniform(0, 12, size=3)
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 6)):
        p1 = tuple(int(v) for v in rng.integers(0, [width, height]))
        p2 = tuple(int(v) for v in rng.integers(0, [width, height]))
        colour = tuple(float(v) for v in np.clip(base + rng.normal(0, 50, 3), 0, 255))
        cv2.line(image, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


def _shape_polygon(rng: np.random.Generator, cls: int, size: float, centre: Tuple[float, float]) -> np.ndarray:
    """Corners ``(K, 2)`` of a shape of class ``cls`` with about ``size`` px extent, rotated."""
    aspect = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    if CLASSES[cls] == "rectangle":
        pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    elif CLASSES[cls] == "ellipse":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([w / 2 * np.cos(t), h / 2 * np.sin(t)], axis=1)
    else:  # triangle with its apex anywhere along the top edge
        apex = rng.uniform(-w / 2, w / 2)
        pts = np.array([[apex, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    theta = rng.uniform(0, math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return pts @ rot.T + np.asarray(centre)


def _colour_apart(rng: np.random.Generator, background: np.ndarray, min_distance: float = 90.0):
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background) >= min_distance:
            break
    return colour


def generate_image(rng: np.random.Generator, long_side: int = 256, max_objects: int = 6,
                   empty_prob: float = 0.1):
    """One image and its objects.

    Every object keeps at least half of its whole shape's area in view, counting both the image border
    and the shapes drawn over it: a rotated rectangle cut down to a corner by the border, or half
    covered, would look like a triangle, and its label could not be learnt.

    Returns:
        ``(image, objects)``: ``HxWx3`` uint8 RGB, and a list of ``(class_index, (x1, y1, x2, y2), area,
        full_area)`` with the tight box and the pixel count of each object's visible part, and the
        area of its whole shape.
    """
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    width = long_side if aspect >= 1 else int(round(long_side * aspect))
    height = long_side if aspect <= 1 else int(round(long_side / aspect))
    image = _background(rng, height, width)
    owner = np.zeros((height, width), np.int32)  # which object each pixel shows (0: background)
    full_areas: List[float] = []
    classes: List[int] = []
    num = 0 if rng.random() < empty_prob else int(rng.integers(1, max_objects + 1))
    min_size, max_size = 8.0, 0.7 * min(height, width)
    for _ in range(num):
        for _attempt in range(10):
            size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
            centre = (rng.uniform(0, width), rng.uniform(0, height))
            cls = int(rng.integers(len(CLASSES)))
            poly = np.round(_shape_polygon(rng, cls, size, centre)).astype(np.int32)
            mask = np.zeros_like(owner, np.uint8)
            cv2.fillPoly(mask, [poly], 1)
            full = max(float(cv2.contourArea(poly.astype(np.float32))), 1.0)
            if mask.sum() < 20 or mask.sum() < 0.5 * full or not _keeps_others_visible(owner, mask, full_areas):
                continue
            fill = _colour_apart(rng, image[mask > 0].mean(axis=0))
            shade = rng.normal(0, 6, size=(height, width, 1))
            region = np.clip(fill + shade, 0, 255).astype(np.uint8)
            image[mask > 0] = region[mask > 0]
            cv2.polylines(image, [poly], True, tuple(float(v) for v in fill), 1, cv2.LINE_AA)
            classes.append(cls)
            full_areas.append(full)
            owner[mask > 0] = len(classes)
            break
    objects = []
    for index, cls in enumerate(classes, start=1):
        visible = (owner == index).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(visible)
        box = (float(x), float(y), float(x + w), float(y + h))
        objects.append((cls, box, int(visible.sum()), full_areas[index - 1]))
    return image, objects


def generate_large_image(rng: np.random.Generator, long_side: int = 2000, max_objects: int = 40,
                         object_size: Tuple[float, float] = (8.0, 40.0)):
    """A large image with many small objects among distractors (sliced inference's development set):
    the shapes of :data:`CLASSES` at ``object_size`` px (log-uniform), never overlapping each other,
    and as many unlabelled distractors of the same sizes (outlines: plus signs, crosses, rings)
    besides the background's stray lines. Same return value as :func:`generate_image` (objects whole: the full
    area is the visible one)."""
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    width = long_side if aspect >= 1 else int(round(long_side * aspect))
    height = long_side if aspect <= 1 else int(round(long_side / aspect))
    image = _background(rng, height, width)
    taken = np.zeros((height, width), bool)
    objects = []
    low, high = object_size
    for _ in range(int(rng.integers(max_objects // 2, max_objects + 1))):
        size = math.exp(rng.uniform(math.log(low), math.log(high)))
        centre = (rng.uniform(high, width - high), rng.uniform(high, height - high))
        cls = int(rng.integers(len(CLASSES)))
        poly = np.round(_shape_polygon(rng, cls, size, centre)).astype(np.int32)
        x, y, w, h = cv2.boundingRect(poly)
        x0, y0, x1, y1 = max(x - 2, 0), max(y - 2, 0), min(x + w + 2, width), min(y + h + 2, height)
        if taken[y0:y1, x0:x1].any():
            continue  # whole objects only: the development set is about their size, not occlusion
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [poly - np.array([x0, y0])], 1)
        if mask.sum() < 12:
            continue
        window = image[y0:y1, x0:x1]
        fill = _colour_apart(rng, window[mask > 0].mean(axis=0))
        window[mask > 0] = np.clip(fill + rng.normal(0, 6, size=(int(mask.sum()), 1)), 0, 255).astype(np.uint8)
        taken[y0:y1, x0:x1] = True
        bx, by, bw, bh = cv2.boundingRect(mask)
        objects.append((cls, (float(x0 + bx), float(y0 + by), float(x0 + bx + bw), float(y0 + by + bh)),
                        int(mask.sum()), float(mask.sum())))
    # distractors, unlabelled: outlines only (plus signs, crosses, rings). A filled disc, drawn here
    # before, was the image of a small round ellipse, one of the classes: an unlabelled copy of a class
    # teaches the detector that the class is background
    for _ in range(int(rng.integers(max_objects // 2, max_objects + 1))):
        size = math.exp(rng.uniform(math.log(low), math.log(high)))
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        r = max(4, int(size / 2))
        if taken[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1].any():
            continue
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(image, (cx - r, cy), (cx + r, cy), colour, 2)
            cv2.line(image, (cx, cy - r), (cx, cy + r), colour, 2)
        elif kind == 1:  # thin enough that a small ring keeps its hole
            cv2.circle(image, (cx, cy), r, colour, 1 if r < 8 else 2)
        else:
            cv2.line(image, (cx - r, cy - r), (cx + r, cy + r), colour, 2)
            cv2.line(image, (cx - r, cy + r), (cx + r, cy - r), colour, 2)
    return image, objects


def _keeps_others_visible(owner: np.ndarray, mask: np.ndarray, full_areas: Sequence[float]) -> bool:
    """A new shape may leave no earlier one with less than half of its whole area in view."""
    if not full_areas:
        return True
    visible = np.bincount(owner.ravel(), minlength=len(full_areas) + 1)[1:]
    covered = np.bincount(owner[mask > 0], minlength=len(full_areas) + 1)[1:]
    return bool(np.all(visible - covered >= 0.5 * np.asarray(full_areas)))


def _write_image(out: Path, split: str, index: int, seed: int, long_side: int, max_objects: int,
                 small_objects: bool = False):
    """Generate and write one image (its own random stream: any process, any order, same file)."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    image, objects = generate_large_image(rng, long_side, max_objects) if small_objects else \
        generate_image(rng, long_side, max_objects)
    file_name = f"{split}/{index:06d}.jpg"
    if not cv2.imwrite(str(out / "images" / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {out / 'images' / file_name}")
    return file_name, image.shape[:2], objects


def generate_split(out: Path, split: str, count: int, seed: int, long_side: int = 256,
                   max_objects: int = 6, workers: int = 0, small_objects: bool = False) -> dict:
    """Write ``count`` images under ``out/images/<split>/`` and return the COCO dict for them.
    ``workers`` processes draw them (0: one per core; the files do not depend on it)."""
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    work = functools.partial(_write_image, out, split, seed=seed, long_side=long_side, max_objects=max_objects,
                             small_objects=small_objects)
    workers = min(workers or os.cpu_count() or 1, max(1, count // (4 if small_objects else 64)))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(work, range(count), chunksize=32)
    else:
        results = [work(index) for index in range(count)]
    images, annotations = [], []
    for index, (file_name, (height, width), objects) in enumerate(results):
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cls, (x1, y1, x2, y2), area, _ in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": 0})
    return {
        "info": {"description": "detect synthetic shapes", "seed": seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }


def generate_dataset(out, num_train: int = 200, num_test: int = 50, seed: int = 0, long_side: int = 256,
                     max_objects: int = 6, small_objects: bool = False) -> Path:
    """Generate both splits into ``out``; the json files are written last, atomically, so a killed
    run never leaves a json that points at missing images. ``small_objects``: the large-image set
    (:func:`generate_large_image`)."""
    out = Path(out)
    for split, count in (("train", num_train), ("test", num_test)):
        if count < 1:
            raise ValueError(f"--num-{split} must be at least 1, got {count}")
        coco = generate_split(out, split, count, seed, long_side, max_objects, small_objects=small_objects)
        tmp = out / f".{split}.json.tmp"
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, out / f"{split}.json")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detect.data.synthetic", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (train.json, test.json, images/)")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="long side of the images in pixels")
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--small-objects", action="store_true",
                        help="large images (--size 2000) with many 8-40 px objects among distractors")
    parser.add_argument("--quiet", action="store_true", help="do not print the statistics")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32")
    out = generate_dataset(args.out, args.num_train, args.num_test, args.seed, args.size, args.max_objects,
                           args.small_objects)
    if not args.quiet:
        from detect.data.coco import load_coco
        from detect.data.stats import dataset_stats, format_stats

        for split in ("train", "test"):
            ds = load_coco(out / f"{split}.json", out / "images")
            print(format_stats(dataset_stats(ds), title=f"{out / (split + '.json')}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
