"""The R-CNN box parametrisation, shared by the RPN, the RoI heads and R-CNN's ridge regressors.

For a reference box ``P`` (anchor or proposal) and a target box ``G``, both as centre / size
(Girshick et al. 2014, appendix C):

    tx = wx * (Gx - Px) / Pw        ty = wy * (Gy - Py) / Ph
    tw = ww * log(Gw / Pw)          th = wh * log(Gh / Ph)

The weights ``(wx, wy, ww, wh)`` scale the targets to roughly unit variance (Fast R-CNN uses
10, 10, 5, 5 for its head and 1, 1, 1, 1 for the RPN). ``decode`` clamps ``tw, th`` at
``log(1000 / 16)`` before the exponential: an untrained network can emit large deltas and
``exp`` would overflow to inf, which then poisons IoUs and NMS.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes, and decode deltas back to boxes.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplied into the deltas when encoding (divided out when decoding).
        scale_clamp: upper bound on ``tw / ww`` and ``th / wh`` when decoding.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, boxes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Deltas ``(N, 4)`` that turn ``boxes (N, 4)`` xyxy into ``targets (N, 4)`` xyxy.

        ``boxes`` must have positive width and height (anchors and filtered proposals do).
        """
        boxes = boxes.float()
        targets = targets.float()
        wx, wy, ww, wh = self.weights
        pw = boxes[:, 2] - boxes[:, 0]
        ph = boxes[:, 3] - boxes[:, 1]
        px = boxes[:, 0] + 0.5 * pw
        py = boxes[:, 1] + 0.5 * ph
        gw = targets[:, 2] - targets[:, 0]
        gh = targets[:, 3] - targets[:, 1]
        gx = targets[:, 0] + 0.5 * gw
        gy = targets[:, 1] + 0.5 * gh
        return torch.stack([
            wx * (gx - px) / pw,
            wy * (gy - py) / ph,
            ww * torch.log(gw / pw),
            wh * torch.log(gh / ph),
        ], dim=1)

    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Apply ``deltas`` to ``boxes (N, 4)`` xyxy.

        ``deltas`` is ``(N, 4 * K)``: K sets of deltas per box (one per class for the class-specific
        heads, K = 1 for the RPN). Returns xyxy boxes of the same shape as ``deltas``.
        """
        # Computed in float32 whatever the input (AMP gives half deltas): exp and the
        # centre/size arithmetic lose whole pixels in half precision on large images.
        d = deltas.float().reshape(boxes.shape[0], deltas.shape[-1] // 4, 4)
        boxes = boxes.float()
        wx, wy, ww, wh = self.weights
        pw = (boxes[:, 2] - boxes[:, 0])[:, None]
        ph = (boxes[:, 3] - boxes[:, 1])[:, None]
        px = boxes[:, 0][:, None] + 0.5 * pw
        py = boxes[:, 1][:, None] + 0.5 * ph
        dx = d[..., 0] / wx
        dy = d[..., 1] / wy
        dw = (d[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (d[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = dx * pw + px
        cy = dy * ph + py
        w = torch.exp(dw) * pw
        h = torch.exp(dh) * ph
        out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        return out.reshape(deltas.shape).to(deltas.dtype)
