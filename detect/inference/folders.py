"""Detection over folders of images (or a glob, one image, a video) with results that survive
interruptions.

Each finished image gets a small result file under ``DIR/.results/`` (written atomically), so a run
started again with ``skip_existing`` redoes nothing and the final ``detections.json`` covers every
image. Outputs in ``DIR``:

- ``images/<same relative path as the input>``: annotated copies (two ``img.jpg`` in different
  folders never collide; nothing is written outside ``DIR``);
- ``detections.json``: the COCO results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
- ``images.json``: the images (ids, file paths relative to the input, sizes) and categories, in COCO
  form, so ``COCO("images.json").loadRes("detections.json")`` works;
- ``skipped.json``: files that could not be read, with the reason.
"""
from __future__ import annotations

import glob
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.data.collate import collate_detection
from detect.data.detection_dataset import DatasetError
from detect.data.folder import ImageFolder, list_images
from detect.data.image_io import is_image_file
from detect.data.workers import die_with_parent
from detect.inference.predictor import Predictor
from detect.ops.boxes import xyxy_to_xywh
from detect.utils.atomic import write_text_atomic
from detect.utils.visualize import draw_boxes, write_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DISPLAY_MAX_SIDE = 4096  # annotated copies of huge images are written at most this large


def other_files(root: Path) -> List[Path]:
    """Files under ``root`` that are not images by their extension (hidden files aside): reported,
    so a user sees what was not looked at."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and not is_image_file(f)]
    return found


def resolve_input(path: str) -> Tuple[Path, List[Path]]:
    """``(root, image files)`` for a folder (recursive), a glob pattern or a single image."""
    p = Path(path)
    if p.is_dir():
        return p, list_images(p)
    if p.is_file():
        if not is_image_file(p):
            raise DatasetError(f"{p}: not an image or video file (by its extension)")
        return p.parent, [p]
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file() and is_image_file(f))
        parts = Path(path).parts
        fixed = [part for part in parts[: next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))]]
        root = Path(*fixed) if fixed else Path(".")
        if not files:
            raise DatasetError(f"no images match {path}")
        return root, files
    raise DatasetError(f"input not found: {path}")


class _DisplayTransform:
    """The predictor's test transform, plus a bounded-size copy of the original for drawing."""

    def __init__(self, predictor: Predictor, keep_display: bool):
        self.transform = predictor.transform
        self.keep_display = keep_display

    def __call__(self, image: np.ndarray, target: Dict[str, Any]):
        resized, target = self.transform(image, target)
        if self.keep_display:
            h, w = image.shape[:2]
            scale = min(1.0, DISPLAY_MAX_SIDE / max(h, w))
            target["display"] = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                                                        interpolation=cv2.INTER_AREA)
        return resized, target


def _safe_child(out: Path, rel: str) -> Path:
    target = (out / rel).resolve()
    if out.resolve() not in target.parents:
        raise DatasetError(f"refusing to write {rel!r} outside {out}")
    return target


def run_folder(predictor: Predictor, input_path: str, output: Path, batch_size: int = 4, num_workers: int = 2,
               save_images: bool = True, skip_existing: bool = False, classes: Optional[Sequence[str]] = None,
               progress: bool = True) -> Dict[str, Any]:
    """Detect objects in every image of ``input_path``; see the module docstring for the outputs."""
    root, files = resolve_input(input_path)
    if not files:
        raise DatasetError(f"no images found in {input_path}")
    keep = _class_filter(predictor, classes)
    output.mkdir(parents=True, exist_ok=True)
    results_dir = output / ".results"
    rel = [f.relative_to(root).as_posix() for f in files]
    todo = [i for i in range(len(files))
            if not (skip_existing and (results_dir / f"{rel[i]}.json").is_file()
                    and (not save_images or (output / "images" / rel[i]).is_file()))]
    skipped: List[Dict[str, str]] = []
    if Path(input_path).is_dir():
        skipped += [{"path": str(f), "reason": f"not an image file (extension {f.suffix or 'none'!r})"}
                    for f in other_files(Path(input_path))]
    start = time.perf_counter()
    if todo:
        dataset = ImageFolder(root, transform=_DisplayTransform(predictor, save_images), paths=[files[i] for i in todo])
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_detection,
                            worker_init_fn=die_with_parent)
        bar = tqdm(total=len(todo), desc="infer", unit="img", disable=not progress, dynamic_ncols=True)
        for images, infos in loader:
            ok = [k for k, im in enumerate(images) if im is not None]
            for k in range(len(images)):
                if images[k] is None:
                    skipped.append({"path": infos[k]["path"], "reason": infos[k]["error"]})
            if ok:
                dets = predictor.predict_tensors([images[k] for k in ok], [infos[k] for k in ok])
                for k, det in zip(ok, dets):
                    _finish_image(infos[k], det, keep, output, results_dir, predictor.class_names, save_images)
            bar.update(len(images))
            bar.set_postfix(img_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.close()
    elapsed = time.perf_counter() - start
    summary = _write_outputs(output, results_dir, rel, files, predictor.class_names, skipped)
    failed = sum(1 for s in skipped if not s["reason"].startswith("not an image file"))
    summary.update({"processed": len(todo) - failed, "already_done": len(files) - len(todo),
                    "seconds": elapsed, "images_per_s": (len(todo) / elapsed) if todo and elapsed > 0 else 0.0})
    return summary


def _class_filter(predictor: Predictor, classes: Optional[Sequence[str]]) -> Optional[set]:
    if not classes:
        return None
    unknown = [c for c in classes if c not in predictor.class_names]
    if unknown:
        raise DatasetError(f"--classes: unknown class names {unknown}; the model knows {predictor.class_names}")
    return {predictor.class_names.index(c) + 1 for c in classes}


def _finish_image(info: Dict[str, Any], det: Dict[str, Any], keep: Optional[set], output: Path, results_dir: Path,
                  class_names: Sequence[str], save_images: bool) -> None:
    sel = np.ones(len(det["labels"]), bool) if keep is None else np.isin(det["labels"], list(keep))
    boxes, scores, labels = det["boxes"][sel], det["scores"][sel], det["labels"][sel]
    h, w = info["orig_size"]
    rel = info["rel_path"]
    if save_images:
        display = info["display"]
        drawn = draw_boxes(display, boxes * (display.shape[1] / w), labels, class_names, scores)
        target = _safe_child(output / "images", rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image(target, drawn)  # before the result file: a run killed in between redoes this image
    record = {"file": rel, "path": info["path"], "width": int(w), "height": int(h),
              "boxes": np.round(boxes, 2).tolist(), "scores": np.round(scores, 5).tolist(), "labels": labels.tolist()}
    write_text_atomic(_safe_child(results_dir, f"{rel}.json"), json.dumps(record))


def _coco_rows(image_id: int, boxes, scores, labels, class_names: Sequence[str], counts: Counter) -> List[Dict[str, Any]]:
    """COCO result rows (bbox xywh) for one image's xyxy detections; ``counts`` gains them per class."""
    rows = []
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for box, score, label in zip(xyxy_to_xywh(boxes).tolist(), np.asarray(scores).tolist(), np.asarray(labels).tolist()):
        rows.append({"image_id": image_id, "category_id": int(label), "bbox": [round(v, 2) for v in box],
                     "score": float(score)})
        counts[class_names[int(label) - 1]] += 1
    return rows


def _write_coco(output: Path, images: List[Dict[str, Any]], detections: List[Dict[str, Any]],
                class_names: Sequence[str], counts: Counter) -> Dict[str, Any]:
    """``detections.json`` and ``images.json`` (COCO results and image list); the summary's counts."""
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    write_text_atomic(output / "detections.json", json.dumps(detections))
    write_text_atomic(output / "images.json", json.dumps({"images": images, "categories": categories, "annotations": []}))
    return {"images": len(images), "detections": len(detections), "per_class": {n: counts.get(n, 0) for n in class_names}}


def _write_outputs(output: Path, results_dir: Path, rel: List[str], files: List[Path], class_names: Sequence[str],
                   skipped: List[Dict[str, str]]) -> Dict[str, Any]:
    images, detections, counts = [], [], Counter()
    for image_id, (r, f) in enumerate(zip(rel, files), start=1):
        result_file = results_dir / f"{r}.json"
        if not result_file.is_file():
            continue
        rec = json.loads(result_file.read_text())
        images.append({"id": image_id, "file_name": r, "path": str(f), "width": rec["width"], "height": rec["height"]})
        detections += _coco_rows(image_id, rec["boxes"], rec["scores"], rec["labels"], class_names, counts)
    write_text_atomic(output / "skipped.json", json.dumps(skipped, indent=1))
    return {**_write_coco(output, images, detections, class_names, counts), "skipped": skipped}


def format_summary(summary: Dict[str, Any]) -> str:
    lines = [f"{summary['images']} images with results ({summary['processed']} processed now, "
             f"{summary['already_done']} already done), {summary['detections']} detections, "
             f"{summary['images_per_s']:.1f} images/s"]
    width = max([len(n) for n in summary["per_class"]] + [5])
    lines += [f"  {n:<{width}} {c:>7}" for n, c in summary["per_class"].items()]
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} files (see skipped.json):")
        lines += [f"  {s['path']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)


def run_video(predictor: Predictor, video: Path, output: Path, every: int = 1, batch_size: int = 4,
              classes: Optional[Sequence[str]] = None, progress: bool = True) -> Dict[str, Any]:
    """Detect on every ``every``-th frame of ``video``; writes ``<stem>_detections.mp4`` (the processed
    frames, annotated) and ``detections.json`` / ``images.json`` with one image entry per frame."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise DatasetError(f"{video}: cannot open the video (unknown codec or not a video)")
    keep = _class_filter(predictor, classes)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    output.mkdir(parents=True, exist_ok=True)
    writer = None
    images, detections, counts = [], [], Counter()
    frame_no = 0
    bar = tqdm(total=total, desc="video", unit="frame", disable=not progress)
    start = time.perf_counter()
    pending: List[Tuple[int, np.ndarray]] = []

    def flush():
        nonlocal writer
        prepared = [predictor.prepare(f) for _, f in pending]
        dets = predictor.predict_tensors([p[0] for p in prepared], [p[1] for p in prepared])
        for (number, frame), det in zip(pending, dets):
            sel = np.ones(len(det["labels"]), bool) if keep is None else np.isin(det["labels"], list(keep))
            drawn = draw_boxes(frame, det["boxes"][sel], det["labels"][sel], predictor.class_names, det["scores"][sel])
            if writer is None:
                writer = cv2.VideoWriter(str(output / f"{video.stem}_detections.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                         fps / every, (frame.shape[1], frame.shape[0]))
            writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{video.name}#frame={number}", "path": str(video),
                           "frame": number, "width": frame.shape[1], "height": frame.shape[0]})
            detections.extend(_coco_rows(image_id, det["boxes"][sel], det["scores"][sel], det["labels"][sel],
                                         predictor.class_names, counts))
        pending.clear()

    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if frame_no % every == 0:
            pending.append((frame_no, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            if len(pending) == batch_size:
                flush()
        frame_no += 1
        bar.update(1)
    if pending:
        flush()
    bar.close()
    cap.release()
    if writer is not None:
        writer.release()
    if not images:
        raise DatasetError(f"{video}: no frame could be decoded")
    summary = _write_coco(output, images, detections, predictor.class_names, counts)
    elapsed = time.perf_counter() - start
    return {**summary, "processed": len(images), "already_done": 0, "skipped": [],
            "seconds": elapsed, "images_per_s": len(images) / max(elapsed, 1e-9)}
