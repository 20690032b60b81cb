"""An exponential moving average of the weights (Polyak averaging), the model that is evaluated and shipped.

SGD's last iterate jitters around the minimum it is approaching; the average of the recent iterates
sits nearer to it. The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates (as
timm and the YOLO trainers do), so a short run averages over its last few percent of steps instead of
dragging its random initialisation along. Buffers that are not floating point are copied.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

import torch
from torch import nn


class WeightEMA:
    """Keeps ``ema = d * ema + (1 - d) * weights`` of every floating-point tensor of ``model``'s state."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be in (0, 1) (0 disables it), got {decay}")
        self.decay = decay
        self.updates = 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in model.state_dict().items():
            ema = self.weights[name]
            if ema.dtype.is_floating_point:
                ema.mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                ema.copy_(value)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights inside the block, its own weights back after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for name, value in state["weights"].items():
            self.weights[name].copy_(value)
