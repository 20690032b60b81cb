"""Anchor boxes (Ren et al. 2015, section 3.1.1): at every feature-map cell, one box per
(size, aspect ratio), centred on the cell."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_corners: bool = False) -> torch.Tensor:
    """``(len(sizes) * len(aspect_ratios), 4)`` xyxy boxes centred on (0, 0).

    A size ``s`` and ratio ``r = h / w`` give ``w = s / sqrt(r)``, ``h = s * sqrt(r)``: the area stays
    ``s**2`` whatever the ratio. Order: sizes outer, ratios inner. ``round_corners``: the corners
    rounded to whole pixels, computed in float32 as torchvision's ``AnchorGenerator`` does (its
    models were trained on those boxes).
    """
    if round_corners:
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32))
        ws = (scales[:, None] * (1 / h_ratios)[None, :]).reshape(-1)
        hs = (scales[:, None] * h_ratios[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
    boxes = []
    for s in sizes:
        for r in aspect_ratios:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            boxes.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(boxes, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors for each feature level.

    Args:
        sizes: one list of sizes (pixels, sqrt of area) per level.
        aspect_ratios: height / width ratios, the same on every level.
        strides: stride of each level.
        offset: where an anchor's centre sits in its cell, in strides (0.5: the cell's centre;
            torchvision and detectron2 put it at the cell's top-left corner, 0).
        round_corners: see :func:`cell_anchors`.
        spacing: ``"stride"``, anchors ``stride`` px apart; ``"image"``, the padded image's side over
            the map's, per axis, as torchvision spaces them (the same except on FPN's max-pooled
            level, when the image's side is not a multiple of its stride: 224 px give a 4-cell map
            and anchors 56 px apart, not 64; torchvision's models were trained so).
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float], strides: Sequence[int],
                 offset: float = 0.5, round_corners: bool = False, spacing: str = "stride"):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"anchor sizes are given for {len(sizes)} levels but the backbone has "
                             f"{len(strides)} (model.rpn.anchor_sizes)")
        if len({len(s) for s in sizes}) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes (the RPN head is shared "
                             f"across levels), got {[list(s) for s in sizes]}")
        self.strides = list(strides)
        self.offset = float(offset)
        self.spacing = spacing
        self.cells = [cell_anchors(s, aspect_ratios, round_corners) for s in sizes]
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    @property
    def num_anchors_per_cell(self) -> int:
        return self.cells[0].shape[0]

    def forward(self, feature_sizes: Sequence[Tuple[int, int]], device: torch.device) -> List[torch.Tensor]:
        """Anchors per level, ``(H_l * W_l * A, 4)`` xyxy, ordered (y, x, anchor) as the head's outputs."""
        if torch.compiler.is_compiling():  # symbolic sizes under torch.export: the graph makes the grid
            return self._grids(feature_sizes, device)
        key = (tuple(feature_sizes), str(device))
        if key not in self._cache:
            self._cache[key] = self._grids(feature_sizes, device)
        return self._cache[key]

    def _grids(self, feature_sizes: Sequence[Tuple[int, int]], device: torch.device) -> List[torch.Tensor]:
        spacings = [(stride, stride) for stride in self.strides]
        if self.spacing == "image":  # the padded image: the finest map times its stride (padding makes it exact)
            image_h, image_w = feature_sizes[0][0] * self.strides[0], feature_sizes[0][1] * self.strides[0]
            spacings = [(image_h // h, image_w // w) for h, w in feature_sizes]
        return [self._grid(size, spacing, cell.to(device), self.offset)
                for size, spacing, cell in zip(feature_sizes, spacings, self.cells)]

    @staticmethod
    def _grid(size: Tuple[int, int], spacing: Tuple[int, int], cell: torch.Tensor, offset: float) -> torch.Tensor:
        h, w = size
        ys = (torch.arange(h, device=cell.device, dtype=torch.float32) + offset) * spacing[0]
        xs = (torch.arange(w, device=cell.device, dtype=torch.float32) + offset) * spacing[1]
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        return (centres + cell[None]).reshape(-1, 4)
