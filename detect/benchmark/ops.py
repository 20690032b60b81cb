"""The package's CPU kernels against the libraries', same inputs, same run: RoI align and RoI max
pool against torchvision's, forward alone (inference) and forward + backward (training), on a small
FPN map (the quickstart's detector) and a large one (MobileNetV3-FPN at 480x640); GroupNorm on
channels-last maps against PyTorch's ``F.group_norm`` on the same map, and on the map in NCHW (the
layout PyTorch's kernel is fast in), at MobileNetV3's largest maps. Each pair is checked equal
(GroupNorm: to 1e-5) before it is timed; the figure is the median of ``rounds`` interleaved rounds
of ``repeats`` calls.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
import torchvision

from detect.ops.norm import GroupNorm
from detect.ops.roi import RoIPooler

# (name, batch, channels, height, width, stride, RoIs per image, largest RoI side in pixels)
CASES = [("4x64x32x44 map, 512 RoIs", 4, 64, 32, 44, 8, 128, 120),
         ("2x256x60x80 map, 1024 RoIs", 2, 256, 60, 80, 8, 512, 200)]
KERNELS = [("RoI align, 1 sample / bin", "align", 1), ("RoI align, 2 samples / bin", "align", 2),
           ("RoI max pool", "pool", 0)]
# (name, batch, channels, height, width, groups): MobileNetV3-Large's GroupNorm maps at 480x640
NORM_CASES = [("2x64x240x320 map, 32 groups", 2, 64, 240, 320, 32),
              ("2x72x120x160 map, 18 groups", 2, 72, 120, 160, 18)]
NORM_REFERENCES = [("F.group_norm, channels-last", torch.channels_last),
                   ("F.group_norm, NCHW", torch.contiguous_format)]


def _boxes(n: int, height: int, width: int, largest: float, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    wh = torch.rand(n, 2, generator=g) * largest + 4.0
    return torch.cat([xy, xy + wh], dim=1)


def _time(fn: Callable[[], Any], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _timed_pair(ours: Callable[[bool], Any], theirs: Callable[[bool], Any], rounds: int, repeats: int,
                **row: Any) -> List[Dict[str, Any]]:
    """One row per pass (forward; forward + backward): medians of interleaved rounds, ours / theirs."""
    rows = []
    for grad in (False, True):
        times: Dict[str, List[float]] = {"detect": [], "reference": []}
        for _ in range(rounds):
            times["detect"].append(_time(lambda: ours(grad), repeats))
            times["reference"].append(_time(lambda: theirs(grad), repeats))
        ms = {k: 1000.0 * statistics.median(v) for k, v in times.items()}
        rows.append({**row, "pass": "forward + backward" if grad else "forward", "detect_ms": ms["detect"],
                     "reference_ms": ms["reference"], "ratio": ms["detect"] / ms["reference"]})
    return rows


def run_ops_benchmark(rounds: int = 5, repeats: int = 10, cases=CASES, norm_cases=NORM_CASES) -> Dict[str, Any]:
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
            rows += _timed_pair(ours, theirs, rounds, repeats, case=case, kernel=kernel, reference="torchvision")
    for case, b, c, h, w, groups in norm_cases:
        layer = GroupNorm(groups, c)
        torch.nn.init.normal_(layer.weight, generator=g)
        x = torch.randn(b, c, h, w, generator=g)
        dy = torch.randn(b, c, h, w, generator=g)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        dy_cl = dy.contiguous(memory_format=torch.channels_last)

        def normalise(grad: bool, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            x = x.detach().requires_grad_(grad)
            out = fn(x)
            if grad:  # the incoming gradient in the map's layout, as a network in that layout sends it
                out.backward(dy_cl if x.is_contiguous(memory_format=torch.channels_last) else dy)
            return out.detach()

        ours = lambda grad: normalise(grad, x_cl, layer)  # noqa: E731
        for reference, layout in NORM_REFERENCES:
            x_ref = x.contiguous(memory_format=layout)
            theirs = lambda grad: normalise(grad, x_ref, lambda t: F.group_norm(  # noqa: E731
                t, groups, layer.weight, layer.bias, layer.eps))
            if not torch.allclose(ours(False), theirs(False), rtol=1e-5, atol=1e-5):
                raise AssertionError(f"GroupNorm on {case}: the package's kernel differs from {reference}")
            rows += _timed_pair(ours, theirs, rounds, repeats, case=case, kernel="GroupNorm, channels-last",
                                reference=reference)
    return {"threads": torch.get_num_threads(), "rows": rows}


def format_ops(result: Dict[str, Any]) -> str:
    lines = [f"CPU kernels, {result['threads']} threads (median of interleaved rounds)", "",
             "| input | kernel | pass | detect ms | reference | reference ms | detect / reference |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['kernel']} | {r['pass']} | {r['detect_ms']:.2f} | {r['reference']} "
                     f"| {r['reference_ms']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)
