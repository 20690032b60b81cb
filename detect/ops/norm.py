"""GroupNorm (Wu & He, ECCV 2018) with a CPU kernel for channels-last maps.

``torch.nn.functional.group_norm`` is the reference and the path everywhere else: on CUDA, on
NCHW maps, in other dtypes, and inside ``torch.onnx`` export / ``torch.compile`` (whose graphs
must hold the library's op). On a float32 channels-last CPU map it runs the kernels in
:mod:`detect.ops._cpu_kernels`: PyTorch's own backward is slow there (forward and backward over
[2, 64, 240, 320]: 65 ms against its 33 on the same map in NCHW, the kernels' 40;
``tools/benchmark.py ops``), and that is what kept a CPU backbone of depthwise and 1x1 convolutions
(MobileNetV3) in NCHW, where oneDNN reorders each of their inputs and outputs. Forward alone,
PyTorch's channels-last kernel is the faster (15 ms against 17) but lost the variance of a map of
values 1000 +- 0.01 (outputs off by 9.5; the kernels' by under 1e-4); inference runs the kernels
too, so a model is evaluated with the arithmetic it was trained with.

Not bit for bit: the kernel sums in float64 in another order, and the outputs agree with the
reference to 1e-5 (gradients to 1e-4; tests hold them to it). PyTorch's own channels-last kernel
differs from its NCHW one by up to 8e-5 on the same map.
"""
from __future__ import annotations

from typing import Optional

import numba
import torch
import torch.nn.functional as F
from torch import nn

from detect.ops._cpu_kernels import group_norm_nhwc, group_norm_nhwc_backward


def _uses_kernel(x: torch.Tensor, weight, bias) -> bool:
    # torch.compiler.is_compiling(): inside the exporter (dynamo), whose graph must hold the library's op
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and weight is not None
            and bias is not None and weight.dtype == bias.dtype == torch.float32
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and not torch.compiler.is_compiling())


def _share_torchs_threads() -> None:
    """The kernels' parallel loops use as many threads as PyTorch's ops (``torch.set_num_threads``)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _rows(x: torch.Tensor):
    """A channels-last ``(N, C, H, W)`` tensor as the kernels' ``(N, H * W, C)`` rows (a numpy view)."""
    n, c, h, w = x.shape
    return x.detach().permute(0, 2, 3, 1).view(n, h * w, c).numpy()


class _GroupNormNHWC(torch.autograd.Function):
    """``F.group_norm`` on a float32 channels-last CPU map, both passes through the row kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> torch.Tensor:
        _share_torchs_threads()
        y = torch.empty_like(x, memory_format=torch.channels_last)
        ctx.stats = group_norm_nhwc(_rows(x), groups, weight.detach().numpy(), bias.detach().numpy(), eps, _rows(y))
        ctx.save_for_backward(x, weight)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        _share_torchs_threads()
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dweight, dbias = group_norm_nhwc_backward(_rows(grad.contiguous(memory_format=torch.channels_last)), _rows(x),
                                                  *ctx.stats, ctx.groups, weight.detach().numpy(), _rows(dx))
        return dx, None, torch.from_numpy(dweight), torch.from_numpy(dbias), None


def group_norm(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.group_norm(x, groups, weight, bias, eps)`` for ``x (N, C, H, W)``; the
    output keeps ``x``'s memory format."""
    if _uses_kernel(x, weight, bias):
        return _GroupNormNHWC.apply(x, groups, weight, bias, eps)
    return F.group_norm(x, groups, weight, bias, eps)


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` (same parameters and state-dict keys) through :func:`group_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)  # None without affine
