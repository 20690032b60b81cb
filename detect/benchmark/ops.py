"""The package's CPU RoI kernels against torchvision's, same inputs, same run: RoI align and RoI max
pool, forward alone (inference) and forward + backward (training), on a small FPN map (the
quickstart's detector) and a large one (MobileNetV3-FPN at 480x640). Each pair is checked equal
before it is timed; the figure is the median of ``rounds`` interleaved rounds of ``repeats`` calls.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List

import torch
import torchvision

from detect.ops.roi import RoIPooler

# (name, batch, channels, height, width, stride, RoIs per image, largest RoI side in pixels)
CASES = [("4x64x32x44 map, 512 RoIs", 4, 64, 32, 44, 8, 128, 120),
         ("2x256x60x80 map, 1024 RoIs", 2, 256, 60, 80, 8, 512, 200)]
KERNELS = [("RoI align, 1 sample / bin", "align", 1), ("RoI align, 2 samples / bin", "align", 2),
           ("RoI max pool", "pool", 0)]


def _boxes(n: int, height: int, width: int, largest: float, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    wh = torch.rand(n, 2, generator=g) * largest + 4.0
    return torch.cat([xy, xy + wh], dim=1)


def _time(fn: Callable[[], Any], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run_ops_benchmark(rounds: int = 5, repeats: int = 10, cases=CASES) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    rows: List[Dict[str, Any]] = []
    for case, b, c, h, w, stride, per_image, largest in cases:
        feature = torch.randn(b, c, h, w, generator=g)
        boxes = [_boxes(per_image, h * stride, w * stride, largest, g) for _ in range(b)]
        rois = torch.cat([torch.cat([torch.full((per_image, 1), float(i)), x], 1) for i, x in enumerate(boxes)])
        for kernel, mode, sampling in KERNELS:
            pooler = RoIPooler(7, [stride], mode=mode, sampling_ratio=sampling)

            def ours(grad: bool):
                f = feature.detach().requires_grad_(grad)
                out = pooler([f], boxes)
                if grad:
                    out.sum().backward()
                return out.detach()

            def theirs(grad: bool):
                f = feature.detach().requires_grad_(grad)
                if mode == "pool":
                    out = torchvision.ops.roi_pool(f, rois, 7, spatial_scale=1.0 / stride)
                else:
                    out = torchvision.ops.roi_align(f, rois, 7, spatial_scale=1.0 / stride, sampling_ratio=sampling,
                                                    aligned=True)
                if grad:
                    out.sum().backward()
                return out.detach()

            if not torch.equal(ours(False), theirs(False)):
                raise AssertionError(f"{kernel} on {case}: the package's kernel differs from torchvision's")
            for grad in (False, True):
                times: Dict[str, List[float]] = {"detect": [], "torchvision": []}
                for _ in range(rounds):
                    times["detect"].append(_time(lambda: ours(grad), repeats))
                    times["torchvision"].append(_time(lambda: theirs(grad), repeats))
                ms = {k: 1000.0 * statistics.median(v) for k, v in times.items()}
                rows.append({"case": case, "kernel": kernel, "pass": "forward + backward" if grad else "forward",
                             "detect_ms": ms["detect"], "torchvision_ms": ms["torchvision"],
                             "ratio": ms["detect"] / ms["torchvision"]})
    return {"threads": torch.get_num_threads(), "rows": rows}


def format_ops(result: Dict[str, Any]) -> str:
    lines = [f"RoI kernels on the CPU, {result['threads']} threads (median of interleaved rounds)", "",
             "| input | kernel | pass | detect ms | torchvision ms | detect / torchvision |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['kernel']} | {r['pass']} | {r['detect_ms']:.2f} | {r['torchvision_ms']:.2f} "
                     f"| {r['ratio']:.2f}x |")
    return "\n".join(lines)
