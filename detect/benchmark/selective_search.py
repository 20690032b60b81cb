"""Selective search: this package's against OpenCV contrib's, same images, one thread each.

OpenCV's implementation (``cv2.ximgproc.segmentation``) exists only in the contrib build, which
cannot sit beside ``opencv-python-headless`` in one environment; it runs in a subprocess with
another Python (``--opencv-python``, e.g. a venv with ``opencv-contrib-python-headless``).
Both are timed on decoded images (decoding excluded) and scored by the same recall function.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from detect.proposals.recall import evaluate_proposal_recall

# Runs under the other interpreter: only cv2 and numpy there.
_OPENCV_SCRIPT = r"""
import json, sys, time
import cv2, numpy as np
cv2.setNumThreads(1)
paths, mode, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
boxes, seconds = {}, []
for i, path in enumerate(paths):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    start = time.perf_counter()
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image)
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality()
    else:
        ss.switchToSingleStrategy()
    rects = np.asarray(ss.process(), np.float32).reshape(-1, 4)
    seconds.append(time.perf_counter() - start)
    rects[:, 2:] += rects[:, :2]  # x, y, w, h -> x1, y1, x2, y2
    boxes[str(i)] = rects
np.savez(out, seconds=np.array(seconds), **boxes)
print(cv2.__version__)
"""


def opencv_available(python: str) -> Optional[str]:
    """OpenCV's version if ``python`` has ``cv2.ximgproc``, else None."""
    try:
        out = subprocess.run([python, "-c", "import cv2; cv2.ximgproc.segmentation; print(cv2.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_opencv(python: str, paths: List[str], mode: str) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "opencv.npz"
        proc = subprocess.run([python, "-c", _OPENCV_SCRIPT, json.dumps(paths), mode, str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"OpenCV selective search failed under {python}:\n{proc.stderr[-2000:]}")
        with np.load(out, allow_pickle=False) as data:
            boxes = [data[str(i)] for i in range(len(paths))]
            seconds = data["seconds"]
    return {"boxes": boxes, "seconds": seconds, "version": proc.stdout.strip()}


def run_detect(images: List[np.ndarray], mode: str, seed: int = 0) -> Dict[str, Any]:
    import cv2

    from detect.proposals import selective_search

    cv2.setNumThreads(1)
    selective_search(images[0][:64, :64], mode=mode)  # compile (or load the compiled cache) first
    boxes, seconds = [], []
    for image in images:
        start = time.perf_counter()
        boxes.append(selective_search(image, mode=mode, seed=seed))
        seconds.append(time.perf_counter() - start)
    return {"boxes": boxes, "seconds": np.array(seconds)}


def run_proposal_benchmark(records, class_names, modes=("fast",), opencv_python: Optional[str] = None,
                           counts=(100, 300, 1000, 2000)) -> Dict[str, Any]:
    """Per mode and implementation: seconds per image, proposals per image and recall figures."""
    from detect.data.image_io import read_image

    images = [read_image(r.path) for r in records]
    gt_boxes = [r.boxes for r in records]
    gt_labels = [r.labels for r in records]
    ignore = [r.ignore for r in records]
    version = opencv_available(opencv_python) if opencv_python else None
    result: Dict[str, Any] = {"images": len(records), "size": f"{images[0].shape[1]}x{images[0].shape[0]}",
                              "opencv": version, "rows": []}
    for mode in modes:
        runs = {"detect": run_detect(images, mode)}
        if version:
            runs["opencv-contrib"] = run_opencv(opencv_python, [str(r.path) for r in records], mode)
        for name, run in runs.items():
            recall = evaluate_proposal_recall(run["boxes"], gt_boxes, gt_labels, class_names, counts, ignore)
            result["rows"].append({"impl": name, "mode": mode, "seconds_per_image": float(np.mean(run["seconds"])),
                                   "proposals_per_image": recall["mean_proposals"], "recall": recall})
    return result


def format_proposal_benchmark(result: Dict[str, Any]) -> str:
    lines = [f"selective search on {result['images']} images ({result['size']}), one thread each; "
             f"OpenCV contrib: {result['opencv'] or 'not available (pass --opencv-python)'}",
             f"{'impl':<15} {'mode':<8} {'s/img':>7} {'props':>6} | {'N':>5} {'R@0.5':>6} {'R@0.7':>6} "
             f"{'AR':>6} {'MABO':>6}"]
    for row in result["rows"]:
        for j, n in enumerate(row["recall"]["counts"]):
            m = row["recall"]["overall"][n]
            head = (f"{row['impl']:<15} {row['mode']:<8} {row['seconds_per_image']:7.3f} "
                    f"{row['proposals_per_image']:6.0f}") if j == 0 else " " * 39
            lines.append(f"{head} | {n:>5} {m['recall@0.5']:6.3f} {m['recall@0.7']:6.3f} {m['AR']:6.3f} "
                         f"{m['MABO']:6.3f}")
    by_mode: Dict[str, Dict[str, Any]] = {}
    for row in result["rows"]:
        by_mode.setdefault(row["mode"], {})[row["impl"]] = row
    for mode, rows in by_mode.items():
        if "opencv-contrib" not in rows:
            continue
        d, o = rows["detect"], rows["opencv-contrib"]
        dm, om = d["recall"]["overall"]["2000"], o["recall"]["overall"]["2000"]
        lines.append(f"{mode}: detect / OpenCV  time {d['seconds_per_image'] / o['seconds_per_image']:.2f}x, "
                     f"recall@2000 (IoU 0.5) {dm['recall@0.5']:.3f} vs {om['recall@0.5']:.3f}, "
                     f"MABO@2000 {dm['MABO']:.3f} vs {om['MABO']:.3f}")
    return "\n".join(lines)
