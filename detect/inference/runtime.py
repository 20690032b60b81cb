"""The inference runtime: where the speed choices of running a detector live, so that the models'
``forward`` stays the same on every device and free of any machine's policy.

``Predictor``, ``predict_dataset``, the benchmarks and the tools run a model through
:func:`prepare_for_inference` (once) and :func:`run_model` (per batch). On the CPU they apply:

- **NNPACK 3x3 convolutions** (``detect.ops.conv.use_conv3x3``): every plain 3x3 convolution of the
  model becomes a ``Conv3x3``, which takes NNPACK's Winograd kernels without gradients on large float32
  CPU maps and is ``nn.Conv2d`` everywhere else (training, CUDA, small maps). On the 256-channel FPN
  maps at stride 4 and 8 it is 2-3x faster than PyTorch's default (oneDNN) here.
- **RoIs classified in chunks** (:data:`ROI_CHUNK_BYTES` of pooled features per call, same outputs):
  1000 RoIs of 256x7x7 are 50 MB, which glibc maps afresh at every call (above its 32 MB mmap
  threshold), and the page faults cost more than the pooling itself; chunks under it reuse the heap.
- **One image at a time**: a batch pads every image to the largest and its larger maps fall out of
  the caches; measured here at 480x640 with 2 threads, ResNet-50-FPN 1.26 s per image in batches of 4
  against 0.98 s alone, MobileNetV3-FPN 250 ms against 208 ms. Training keeps its batches.

On other devices the model runs as built. None of these changes a detection beyond NNPACK's ~1e-5
relative rounding on the large maps (``tests/engine/test_runtime.py``).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from detect.ops.conv import use_conv3x3

ROI_CHUNK_BYTES = 24 << 20


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def prepare_for_inference(model: nn.Module, device: Optional[torch.device] = None) -> nn.Module:
    """Apply the CPU choices of the module docstring to ``model`` in place when it lives on the CPU
    (``device``, else the device of its parameters); returns it. Idempotent; training is unaffected
    (the convolutions take their NNPACK path only without gradients, the chunks likewise)."""
    device = torch.device(device) if device is not None else _device_of(model)
    roi_chunk = ROI_CHUNK_BYTES if device.type == "cpu" else 0
    for m in model.modules():
        if hasattr(m, "predict_chunk_bytes"):  # the RoI head
            m.predict_chunk_bytes = roi_chunk
    if device.type == "cpu":
        use_conv3x3(model)
    return model


def run_model(model: nn.Module, images: List[torch.Tensor],
              proposals: Optional[List[torch.Tensor]] = None) -> List[Dict[str, torch.Tensor]]:
    """``model``'s detections for ``images`` (and given ``proposals``), one image at a time on the
    CPU, the batch as given elsewhere."""
    if len(images) > 1 and images[0].device.type == "cpu":
        out = []
        for i, image in enumerate(images):
            out.extend(run_model(model, [image], None if proposals is None else [proposals[i]]))
        return out
    return model(images) if proposals is None else model(images, proposals=proposals)


@contextlib.contextmanager
def timed_calls(owner, name: str, calls: List[Tuple[float, Any]]):
    """Inside the block, every call of ``owner.name`` appends ``(seconds, result)`` to ``calls``: the
    runtime and the benchmarks time parts of the model's own forward from outside, and the model
    knows nothing of it."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        calls.append((time.perf_counter() - start, out))
        return out

    setattr(owner, name, timed)  # an instance attribute, found before the class's method
    try:
        yield calls
    finally:
        delattr(owner, name)
