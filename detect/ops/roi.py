"""RoI pooling from a feature map of known stride (Fast R-CNN's RoI max pool, or RoI align).

The kernels are ``torchvision.ops.roi_pool`` / ``roi_align`` (on float32 CPU maps: equivalent
channels-last kernels of our own and their backward, see :mod:`detect.ops._cpu_kernels`); this
module fixes the conventions around them: boxes are xyxy in image pixels, the feature map's stride gives
the spatial scale, and with several maps (FPN) each RoI is pooled from the level its size calls for (Lin
et al. 2017, eq. 1).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool

from detect.ops._cpu_kernels import roi_align_nhwc, roi_align_nhwc_backward, roi_pool_backward, roi_pool_nhwc

POOL_MODES = ("pool", "align")


def _cpu_float32(features: List[torch.Tensor]) -> bool:
    """True where the compiled CPU kernels apply: float32 maps on the CPU, outside torch.export /
    torch.compile (whose graph must hold torchvision's op, the one ONNX knows as RoiAlign)."""
    return not torch.compiler.is_compiling() and all(f.device.type == "cpu" and f.dtype == torch.float32
                                                     for f in features)


def _wants_grad(features: List[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(f.requires_grad for f in features)


def _roi_align_cpu(feature: torch.Tensor, rois: torch.Tensor, index: torch.Tensor, out: torch.Tensor,
                   stride: int, sampling_ratio: int, aligned: bool) -> None:
    """``out[index] = torchvision.ops.roi_align(feature, rois, ..., aligned=aligned)``, equal to it bit for
    bit, through the channels-last kernel in :mod:`detect.ops._cpu_kernels` (3-4x faster on CPU)."""
    nhwc = feature.detach().permute(0, 2, 3, 1).contiguous().numpy()
    roi_align_nhwc(nhwc, rois.detach().contiguous().numpy(), out.numpy(), index.numpy(), np.float32(1.0 / stride),
                   sampling_ratio, aligned)


class _RoIAlignCPU(torch.autograd.Function):
    """``torchvision.ops.roi_align(..., aligned=aligned)`` on a float32 CPU map with a gradient for the
    map, both passes through the channels-last kernels (equal to torchvision's bit for bit)."""

    @staticmethod
    def forward(ctx, feature: torch.Tensor, rois: torch.Tensor, stride: int, sampling_ratio: int,
                output_size: Tuple[int, int], aligned: bool) -> torch.Tensor:
        out = feature.new_empty((rois.shape[0], feature.shape[1]) + tuple(output_size))
        _roi_align_cpu(feature, rois, torch.arange(rois.shape[0]), out, stride, sampling_ratio, aligned)
        ctx.save_for_backward(rois)
        ctx.shape, ctx.stride, ctx.sampling_ratio, ctx.aligned = feature.shape, stride, sampling_ratio, aligned
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        b, c, h, w = ctx.shape
        grad_in = grad.new_zeros((b, h, w, c))
        roi_align_nhwc_backward(grad.permute(0, 2, 3, 1).contiguous().numpy(), rois.detach().contiguous().numpy(),
                                grad_in.numpy(), np.float32(1.0 / ctx.stride), ctx.sampling_ratio, ctx.aligned)
        return grad_in.permute(0, 3, 1, 2).contiguous(), None, None, None, None, None


def _roi_pool_cpu(feature: torch.Tensor, rois: torch.Tensor, index: torch.Tensor, out: torch.Tensor,
                  stride: int) -> torch.Tensor:
    """``out[index] = torchvision.ops.roi_pool(feature, rois, ...)``, equal to it bit for bit, through
    the channels-last kernel; returns the winning cells ``argmax (len(index), C, PH, PW)``."""
    argmax = torch.empty((rois.shape[0],) + tuple(out.shape[1:]), dtype=torch.int32)
    nhwc = feature.detach().permute(0, 2, 3, 1).contiguous().numpy()
    roi_pool_nhwc(nhwc, rois.detach().contiguous().numpy(), out.numpy(), argmax.numpy(), index.numpy(),
                  np.float32(1.0 / stride))
    return argmax


class _RoIPoolCPU(torch.autograd.Function):
    """``torchvision.ops.roi_pool`` on a float32 CPU map with a gradient for the map, both passes
    through the channels-last kernels (equal to torchvision's bit for bit)."""

    @staticmethod
    def forward(ctx, feature: torch.Tensor, rois: torch.Tensor, stride: int, output_size: Tuple[int, int]) -> torch.Tensor:
        out = feature.new_empty((rois.shape[0], feature.shape[1]) + tuple(output_size))
        argmax = _roi_pool_cpu(feature, rois, torch.arange(rois.shape[0]), out, stride)
        ctx.save_for_backward(rois, argmax)
        ctx.shape = feature.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rois, argmax = ctx.saved_tensors
        b, c, h, w = ctx.shape
        grad_in = grad.new_zeros((b, c, h * w))
        roi_pool_backward(grad.contiguous().numpy(), rois.detach().contiguous().numpy(), argmax.numpy(),
                          grad_in.numpy())
        return grad_in.view(b, c, h, w), None, None, None


def assign_fpn_levels(boxes: torch.Tensor, min_level: int, max_level: int,
                      canonical_size: float = 224.0, canonical_level: int = 4) -> torch.Tensor:
    """FPN level of each ``(N, 4)`` xyxy box: ``floor(k0 + log2(sqrt(wh) / 224))`` clamped to the range,
    in torchvision's float32 arithmetic (its ``LevelMapper``: 1e-6 added before the floor, so that a
    box of exactly 224 x 2^k px lands on level k0 + k despite rounding).

    Returns ``(N,)`` int64 indices relative to ``min_level`` (0 is the finest map).
    """
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size) + torch.tensor(1e-6, dtype=sizes.dtype))
    return (levels.clamp(min_level, max_level) - min_level).to(torch.int64)


class RoIPooler(nn.Module):
    """Pool a fixed ``output_size`` grid for each RoI from one or several feature maps.

    Args:
        output_size: ``(h, w)`` of the pooled grid (7x7 for VGG16's fc6, as in Fast R-CNN).
        strides: stride of each feature map, finest first (``[16]`` for a C4 / conv5 backbone,
            ``[4, 8, 16, 32]`` for FPN P2-P5). Strides must be powers of two.
        mode: ``"pool"`` (max pooling, as in the papers) or ``"align"`` (bilinear, Mask R-CNN).
        sampling_ratio: RoI align samples per bin side (0: adaptive, as torchvision).
        canonical_size: an RoI of this size (sqrt of area) pools from stride 16, one twice as large
            from stride 32 and so on (FPN's 224, set for ImageNet-sized objects).
        aligned: RoI align's half-pixel shift (Mask R-CNN's correction; torchvision's Faster R-CNN
            models were trained without it).
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], strides: Sequence[int],
                 mode: str = "pool", sampling_ratio: int = 0, canonical_size: float = 224.0, aligned: bool = True):
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"RoI pooling mode must be one of {POOL_MODES}, got {mode!r}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels):
            raise ValueError(f"feature strides must be powers of two, got {list(strides)}")
        self.output_size = tuple(output_size)
        self.strides = list(strides)
        self.mode = mode
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.aligned = aligned
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])

    def forward(self, features: List[torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        """Pool RoIs.

        Args:
            features: one ``(B, C, H_l, W_l)`` map per stride in ``self.strides``.
            boxes: B tensors ``(R_i, 4)`` xyxy in image pixels.

        Returns:
            ``(sum R_i, C, h, w)`` pooled features, in the order of ``boxes``.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"RoIPooler built for {len(self.strides)} feature maps, got {len(features)}")
        rois = self._to_rois(boxes, features[0])
        fast = _cpu_float32(features) and not _wants_grad(features)  # in place
        if len(features) == 1 and not fast:
            return self._pool(features[0], rois, self.strides[0])
        levels = None if len(features) == 1 else assign_fpn_levels(rois[:, 1:], self.min_level, self.max_level,
                                                                    self.canonical_size)
        out = features[0].new_empty((rois.shape[0], features[0].shape[1]) + self.output_size)  # every RoI has a level
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.arange(rois.shape[0]) if levels is None else torch.nonzero(levels == level).flatten()
            if not torch.compiler.is_compiling() and idx.numel() == 0:  # exported: known only when run
                continue
            if fast and self.mode == "align":
                _roi_align_cpu(feature, rois[idx], idx, out, stride, self.sampling_ratio, self.aligned)
            elif fast:
                _roi_pool_cpu(feature, rois[idx], idx, out, stride)
            else:
                out[idx] = self._pool(feature, rois[idx], stride).to(out.dtype)
        return out

    @staticmethod
    def _to_rois(boxes: List[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        # torchvision's (K, 5) format: batch index, then x1, y1, x2, y2.
        rois = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
        return torch.cat(rois, dim=0).to(dtype=like.dtype, device=like.device)

    def _pool(self, feature: torch.Tensor, rois: torch.Tensor, stride: int) -> torch.Tensor:
        if self.mode == "pool":
            if _cpu_float32([feature]):
                return _RoIPoolCPU.apply(feature, rois, stride, self.output_size)
            return roi_pool(feature, rois, self.output_size, spatial_scale=1.0 / stride)
        if _cpu_float32([feature]):
            return _RoIAlignCPU.apply(feature, rois, stride, self.sampling_ratio, self.output_size, self.aligned)
        return roi_align(feature, rois, self.output_size, spatial_scale=1.0 / stride,
                         sampling_ratio=self.sampling_ratio, aligned=self.aligned)
