"""Balanced sampling of foreground and background examples (RPN anchors, RoIs, R-CNN crops)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from detect.ops.matcher import BACKGROUND, FOREGROUND


class BalancedSampler:
    """Draw up to ``batch_size_per_image`` examples with at most ``positive_fraction`` foreground.

    When there are too few foreground examples the rest of the batch is background (the papers'
    choice: Ren et al. pad with negatives), so the batch is smaller than requested only when both
    kinds run out. Ignored examples (label -1) are never drawn.

    Args:
        batch_size_per_image: examples per image (256 for the RPN, 512 / 128 for RoI heads).
        positive_fraction: the largest share of foreground (0.5 for the RPN, 0.25 for RoI heads).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, match_labels: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sample from one image.

        Args:
            match_labels: ``(N,)`` labels from :class:`~detect.ops.matcher.Matcher` (1 / 0 / -1).
            generator: optional torch generator, for reproducible draws.

        Returns:
            ``(pos_idx, neg_idx)``: int64 indices into ``match_labels``.
        """
        positive = torch.nonzero(match_labels == FOREGROUND).flatten()
        negative = torch.nonzero(match_labels == BACKGROUND).flatten()
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
        pos_idx = positive[self._choose(positive.numel(), num_pos, generator, positive.device)]
        neg_idx = negative[self._choose(negative.numel(), num_neg, generator, negative.device)]
        return pos_idx, neg_idx

    @staticmethod
    def _choose(n: int, k: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
        if generator is not None and generator.device != torch.device(device):
            return torch.randperm(n, generator=generator)[:k].to(device)
        return torch.randperm(n, generator=generator, device=device)[:k]
