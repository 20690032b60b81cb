"""One trained detector four ways: PyTorch eager (ours), ONNX Runtime fp32, ONNX Runtime int8, and
torchvision's eager Faster R-CNN with the same backbone as the reference (``tools/benchmark.py deploy``).

Latency is the model alone on images already decoded and resized by the test transform (batch of
one), the backends taking turns over the images for ``rounds`` rounds so that a change in the
machine's load falls on all of them; the figure is the median over the rounds, averaged over the
images. AP and AP50 come from the same evaluation ``tools/eval.py`` runs, on the whole test set.
torchvision's model is built from random weights: it gives the latency reference only (its accuracy
at an equal training budget is ``tools/benchmark.py frcnn --train-minutes``).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch

from detect.benchmark.frcnn import torchvision_model
from detect.data.build import build_dataset
from detect.data.image_io import read_image
from detect.inference.loading import load_model
from detect.evaluation.metrics import evaluate
from detect.export.onnx_export import export_onnx
from detect.inference.predictor import Predictor
from detect.export.int8 import calibration_images, quantize_onnx
from detect.inference.runtime import prepare_for_inference, run_model

BACKENDS = ("pytorch_fp32", "onnxruntime_fp32", "onnxruntime_int8", "torchvision_fp32")


def _median_latency(calls: Dict[str, Callable[[torch.Tensor], Any]], images: List[torch.Tensor],
                    rounds: int) -> Dict[str, Dict[str, Any]]:
    """Milliseconds per image of each call, after an untimed pass of every backend over all the
    images (ONNX Runtime's memory arenas grow over the first images of varying detection counts: its
    first 20 BCCD images ran at 104 ms, the next at 85). In every round each backend then runs over
    all the images in turn, after one untimed call: not image by image, as PyTorch's OpenMP threads
    and ONNX Runtime's spin for a while after their work and slow the next backend down."""
    for call in calls.values():
        for image in images:
            call(image)
    seconds = {name: np.zeros((rounds, len(images))) for name in calls}
    for r in range(rounds):
        for name, call in calls.items():
            call(images[0])
            for i, image in enumerate(images):
                start = time.perf_counter()
                call(image)
                seconds[name][r, i] = time.perf_counter() - start
    return {name: {"ms": 1000 * float(np.median(s, axis=0).mean()),
                   "ms_per_round": [1000 * float(x) for x in s.mean(axis=1)]} for name, s in seconds.items()}


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def run_deploy_benchmark(checkpoint: str, output_dir: str, num_images: int = 20, rounds: int = 3,
                         calibration_count: int = 64, overrides=()) -> Dict[str, Any]:
    """Export ``checkpoint`` (fp32 and int8) into ``output_dir``, then time and evaluate the four
    backends of the module docstring. Returns the rows and the settings."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, cfg = load_model(checkpoint, overrides=[*overrides, "device=cpu"])
    prepare_for_inference(model, torch.device("cpu"))
    fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
    # a copy: export swaps Soft-NMS for NMS in what it is given, and the eager row is the checkpoint as shipped
    export_onnx(copy.deepcopy(model), copy.deepcopy(cfg), fp32)
    calib = build_dataset(cfg, "train").records
    onnx_fp32 = Predictor.from_checkpoint(fp32, device="cpu")
    q = quantize_onnx(fp32, int8, calibration_images(onnx_fp32, [r.path for r in calib], calibration_count),
                      source="the checkpoint's training split")
    onnx_int8 = Predictor.from_checkpoint(int8, device="cpu")
    try:  # the reference exists for torchvision's backbones only (not the package's tiny one)
        theirs = torchvision_model(cfg).eval()
    except ValueError:
        theirs = None

    test = build_dataset(cfg, "test").records[:num_images]
    images = [onnx_fp32.prepare(read_image(r.path))[0] for r in test]
    with torch.inference_mode():
        calls = {"pytorch_fp32": lambda im: run_model(model, [im]),
                 "onnxruntime_fp32": lambda im: onnx_fp32.model([im]),
                 "onnxruntime_int8": lambda im: onnx_int8.model([im])}
        if theirs is not None:
            calls["torchvision_fp32"] = lambda im: theirs([im])
        latency = _median_latency(calls, images, rounds)
    rows: Dict[str, Dict[str, Any]] = {name: dict(latency[name]) for name in calls}
    for name, m in (("pytorch_fp32", model), ("onnxruntime_fp32", onnx_fp32.model),
                    ("onnxruntime_int8", onnx_int8.model)):
        coco = evaluate(m, cfg, torch.device("cpu"), progress=False)["coco"]
        rows[name].update(AP=coco["AP"], AP50=coco["AP50"])
    rows["pytorch_fp32"]["bytes"] = _weight_bytes(model)
    rows["onnxruntime_fp32"]["bytes"] = fp32.stat().st_size
    rows["onnxruntime_int8"]["bytes"] = int8.stat().st_size
    if theirs is not None:
        rows["torchvision_fp32"]["bytes"] = _weight_bytes(theirs)
    base = rows["pytorch_fp32"]["ms"]
    for row in rows.values():
        row["latency_vs_pytorch"] = row["ms"] / base
    h, w = images[0].shape[-2:]
    return {"rows": rows, "images": len(images), "image_size": [int(h), int(w)], "rounds": rounds,
            "threads": torch.get_num_threads(), "int8": q, "checkpoint": str(checkpoint),
            "onnx_nms_for_soft_nms": bool(getattr(getattr(model, "roi_head", None), "soft_nms_sigma", 0))}


def format_deploy(result: Dict[str, Any]) -> str:
    h, w = result["image_size"]
    lines = [f"deploy: {result['images']} test images at {h}x{w}, batch 1, {result['threads']} threads, median of "
             f"{result['rounds']} alternating rounds; AP on the whole test set",
             f"{'backend':<32}{'ms/image':>10}{'vs ours':>9}{'AP':>8}{'AP50':>8}{'file MB':>9}"]
    names = {"pytorch_fp32": "detect, PyTorch eager fp32", "onnxruntime_fp32": "detect, ONNX Runtime fp32",
             "onnxruntime_int8": "detect, ONNX Runtime int8", "torchvision_fp32": "torchvision eager fp32 (ref.)"}
    for key in (k for k in BACKENDS if k in result["rows"]):
        r = result["rows"][key]
        ap = f"{r['AP']:8.3f}{r['AP50']:8.3f}" if "AP" in r else f"{'-':>8}{'-':>8}"
        lines.append(f"{names[key]:<32}{r['ms']:10.1f}{r['latency_vs_pytorch']:8.2f}x{ap}{r['bytes'] / 1e6:9.1f}")
    q = result["int8"]
    lines.append(f"int8: {q['calibration_images']} calibration images, quantized {', '.join(q['quantized_ops'])} "
                 f"({q['float_depthwise_convs']} depthwise convolutions in float)"
                 f"{', 7-bit weights (no VNNI)' if q['reduce_range'] else ''}; torchvision: random weights, latency "
                 f"only; PyTorch size: the weights in memory")
    if result.get("onnx_nms_for_soft_nms"):
        lines.append("the checkpoint tests with Soft-NMS, which an ONNX graph cannot hold: the ONNX rows run NMS "
                     "(model.roi_head.nms_thresh), hence their AP")
    return "\n".join(lines)
