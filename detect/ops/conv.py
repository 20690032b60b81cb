"""3x3 convolutions over large maps at CPU inference through NNPACK's Winograd kernels.

PyTorch sends CPU convolutions to oneDNN, which on the 256-channel FPN maps at stride 4 and 8 (the FPN
output convs and the RPN head of a ResNet-50-FPN at 480x640) runs 2-3x slower than NNPACK's Winograd
transform, also shipped inside PyTorch but used by it only for batches of 16 or more. Measured on
this project's CPU (AVX2, 2 threads): 256 channels at 120x160 in 87 ms against 260 ms, at 60x80 in
32 ms against 59; at 30x40 and below, or under 128 channels, oneDNN is as fast or faster, so those
stay with it. Winograd's results differ from the direct convolution by about 1e-5 relative.

:class:`Conv3x3` is an ``nn.Conv2d`` (same parameters, same state-dict keys) that takes this path
only without gradients, on float32 CPU tensors, for maps of at least :data:`MIN_PIXELS` cells and
:data:`MIN_CHANNELS` input channels; everything else (training, CUDA, small maps) is ``nn.Conv2d``.
Models are built with ``nn.Conv2d``; the inference runtime (``detect.inference.runtime.prepare_for_inference``)
turns their plain 3x3 convolutions into this class on the CPU. Set ``DETECT_NNPACK=0`` in the
environment to turn it off.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIN_PIXELS = 4096
MIN_CHANNELS = 128
_state = {"available": None}


def nnpack_enabled() -> bool:
    """NNPACK is built into this PyTorch, initialised, and not turned off by ``DETECT_NNPACK=0``."""
    if _state["available"] is None:
        try:  # _nnpack_available() also initialises the library
            _state["available"] = bool(torch._nnpack_available()) and os.environ.get("DETECT_NNPACK", "1") != "0"
        except (AttributeError, RuntimeError):
            _state["available"] = False
    return _state["available"]


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d`` that runs through NNPACK at CPU inference on large maps (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # while exporting, the graph holds the plain convolution (first: a symbolic size test would guard)
        if (not torch.compiler.is_compiling() and not torch.is_grad_enabled() and x.dim() == 4
                and x.device.type == "cpu" and x.dtype == torch.float32
                and self.in_channels >= MIN_CHANNELS and x.shape[2] * x.shape[3] >= MIN_PIXELS and nnpack_enabled()):
            try:
                x = x.contiguous()
                if x.shape[0] == 1:
                    return torch._nnpack_spatial_convolution(x, self.weight, self.bias, list(self.padding))
                # an image at a time: with a batch, PyTorch calls NNPACK's batch (training) routine,
                # 2.7x slower per image here than its single-image inference routine
                return torch.cat([torch._nnpack_spatial_convolution(x[i:i + 1], self.weight, self.bias,
                                                                    list(self.padding)) for i in range(x.shape[0])])
            except RuntimeError as err:  # never fail a forward pass over it: oneDNN from now on
                logger.warning("NNPACK convolution failed (%s); using PyTorch's default from now on", err)
                _state["available"] = False
        return super().forward(x)


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.dilation == (1, 1)
            and m.padding == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def use_conv3x3(module: nn.Module) -> int:
    """Turn every plain 3x3, stride-1, padding-1, ungrouped ``nn.Conv2d`` inside ``module`` into a
    :class:`Conv3x3` in place (parameters untouched); returns how many."""
    count = 0
    for m in module.modules():
        if _eligible(m):
            m.__class__ = Conv3x3
            count += 1
    return count
