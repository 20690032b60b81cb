"""tools/infer.py's throughput against the model's own forward-only throughput on the same images."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import torch

from detect.data.folder import list_images
from detect.data.image_io import read_image
from detect.inference.folders import run_folder
from detect.inference.predictor import Predictor
from detect.inference.runtime import run_model


def run_infer_benchmark(checkpoint: str, folder: str, batch_size: int = 4, workers: int = 2,
                        save_images: bool = True, limit: int = 0) -> Dict[str, Any]:
    predictor = Predictor.from_checkpoint(checkpoint, device="auto")
    files = list_images(folder)
    if limit:
        files = files[:limit]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for f in files:
            shutil.copy(f, src / f.name)
        # Forward only: images decoded, resized and batched beforehand.
        prepared = [predictor.prepare(read_image(f)) for f in sorted(src.iterdir())]
        with torch.inference_mode():
            run_model(predictor.model, [prepared[0][0]])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(prepared), batch_size):
                chunk = prepared[i:i + batch_size]
                run_model(predictor.model, [p[0] for p in chunk])
            forward = time.perf_counter() - start
        start = time.perf_counter()
        summary = run_folder(predictor, str(src), Path(tmp) / "out", batch_size=batch_size, num_workers=workers,
                             save_images=save_images, progress=False)
        tool = time.perf_counter() - start
    n = len(files)
    return {"images": n, "batch_size": batch_size, "workers": workers, "save_images": save_images,
            "forward_images_per_s": n / forward, "tool_images_per_s": n / tool,
            "overhead": tool / forward - 1.0, "detections": summary["detections"]}


def format_infer(r: Dict[str, Any]) -> str:
    return (f"infer on {r['images']} images, batch {r['batch_size']}, {r['workers']} workers, "
            f"save_images={r['save_images']}\n"
            f"  model forward only : {r['forward_images_per_s']:.2f} images/s\n"
            f"  tools/infer.py     : {r['tool_images_per_s']:.2f} images/s (decode, resize, draw, write included)\n"
            f"  overhead of the tool over the model: {100 * r['overhead']:+.1f}%")
