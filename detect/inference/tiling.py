"""Sliced inference for small objects in large images (SAHI, Akyon et al. 2022), built in.

With ``model.tiles.size`` > 0 an image is not shrunk to the test size: it is cut, at
``model.tiles.scale`` of its native resolution, into overlapping ``size`` x ``size`` tiles
(``overlap``: the share two neighbours share), which run through the detector in batches; with
``full_image`` the whole image also runs at the normal test size, for the objects larger than a tile.
The detections come back into the image's pixels and are merged with the detector's own per-class
suppression (:func:`detect.ops.suppress`: NMS, or Soft-NMS where the model uses it). A detection
that touches a tile's inner edge (one that is not the image's border) is the part of an object the
tile cut: it is dropped, since the overlap shows a whole object whole in another tile (or the full
view does), and would otherwise survive beside the whole one as a fragment.

The wrapper has the detectors' ``forward`` (a list of ``3xHxW`` images, one dict of detections per
image), so the PyTorch model and the ONNX Runtime backend take it alike; the test transform keeps
the images at the tile scale instead of the test size (:func:`detect.data.transforms.build_transforms`).
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detect.errors import ConfigError
from detect.ops import suppress

logger = logging.getLogger(__name__)

EDGE = 1.0  # px: a box this close to a tile's inner edge was cut by it


def tile_windows(height: int, width: int, size: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` windows of ``size`` px covering the image, neighbours sharing ``overlap``
    of a tile; the last of a row or column flush with the image's edge. A side shorter than a tile
    is one window of that side."""

    def starts(side: int) -> List[int]:
        if side <= size:
            return [0]
        step = max(1, int(size * (1 - overlap)))
        count = math.ceil((side - size) / step) + 1
        return sorted({min(i * step, side - size) for i in range(count)})

    return [(x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)]


def check_tiles(cfg) -> None:
    t = cfg.model.tiles
    if not 0 <= t.overlap < 0.9:
        raise ConfigError(f"model.tiles.overlap={t.overlap}: the share of a tile its neighbours share, from 0 to "
                          f"under 0.9")
    smallest = 2 * 32  # the detectors pad to their largest stride (32) and take at least two cells of it
    if 0 < t.size < smallest:
        raise ConfigError(f"model.tiles.size={t.size}: a tile must be at least {smallest} px (the model's smallest "
                          f"input)")


class TiledDetector(nn.Module):
    """``detector`` run over tiles of each image (see the module docstring).

    Args:
        detector: a detector module in eval mode (``forward(images) -> [dict]``).
        size, overlap: the tiles.
        full_image: also run the whole image at ``full_size``: ``(short side, long side cap)``.
        nms_thresh, detections_per_image: the merge.
        batch: tiles per call of the detector.
        soft_nms_sigma, score_thresh: > 0: the merge is Gaussian Soft-NMS, as the detector's own
            suppression then is (hard NMS across the views would delete the overlapping objects
            each view kept: cells in a smear, people in a crowd).
    """

    def __init__(self, detector: nn.Module, size: int, overlap: float, full_image: bool,
                 full_size: Tuple[int, int], nms_thresh: float, detections_per_image: int, batch: int = 4,
                 soft_nms_sigma: float = 0.0, score_thresh: float = 0.0):
        super().__init__()
        self.detector = detector
        self.size, self.overlap, self.full_image, self.full_size = int(size), float(overlap), full_image, full_size
        self.nms_thresh, self.detections_per_image, self.batch = nms_thresh, detections_per_image, batch
        self.soft_nms_sigma, self.score_thresh = float(soft_nms_sigma), float(score_thresh)
        self.class_names = getattr(detector, "class_names", None)
        self._said_whole = False

    @torch.no_grad()
    def forward(self, images: List[torch.Tensor], targets=None, proposals=None) -> List[Dict[str, torch.Tensor]]:
        return [self._one(image) for image in images]

    def _one(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        if h <= self.size and w <= self.size:
            if not self._said_whole:
                logger.info("model.tiles.size=%d: an image of %dx%d fits one tile; it runs whole", self.size, w, h)
                self._said_whole = True
            return self.detector([image])[0]
        windows = tile_windows(h, w, self.size, self.overlap)
        parts: List[Dict[str, torch.Tensor]] = []
        for start in range(0, len(windows), self.batch):
            chunk = windows[start:start + self.batch]
            outputs = self.detector([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk])
            for (x0, y0, x1, y1), out in zip(chunk, outputs):
                boxes = out["boxes"] + out["boxes"].new_tensor([x0, y0, x0, y0])
                cut = ((out["boxes"][:, 0] <= EDGE) & (x0 > 0)) | ((out["boxes"][:, 1] <= EDGE) & (y0 > 0)) | \
                      ((out["boxes"][:, 2] >= x1 - x0 - EDGE) & (x1 < w)) | ((out["boxes"][:, 3] >= y1 - y0 - EDGE) & (y1 < h))
                parts.append({"boxes": boxes[~cut], "scores": out["scores"][~cut], "labels": out["labels"][~cut]})
        if self.full_image:
            parts.append(self._full_view(image))
        boxes = torch.cat([p["boxes"] for p in parts])
        scores = torch.cat([p["scores"] for p in parts])
        labels = torch.cat([p["labels"] for p in parts])
        keep, kept_scores = suppress(boxes, scores, labels, self.nms_thresh, self.detections_per_image,
                                     self.soft_nms_sigma, self.score_thresh)
        return {"boxes": boxes[keep], "scores": kept_scores.to(scores.dtype), "labels": labels[keep]}

    def _full_view(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        short, cap = self.full_size
        scale = min(short / min(h, w), cap / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        out = self.detector([small])[0]
        factor = out["boxes"].new_tensor([w / size[1], h / size[0], w / size[1], h / size[0]])
        return {"boxes": out["boxes"] * factor, "scores": out["scores"], "labels": out["labels"]}


def tiled(model: nn.Module, cfg) -> nn.Module:
    """``model`` under :class:`TiledDetector` when ``cfg.model.tiles.size`` > 0, else itself."""
    t = cfg.model.tiles
    if not t.size:
        return model
    check_tiles(cfg)
    if cfg.model.type != "faster_rcnn":
        raise ConfigError(f"model.tiles: sliced inference runs Faster R-CNN, whose proposals come from each tile; "
                          f"a {cfg.model.type} model's come from a file of whole images")
    h = cfg.model.roi_head
    return TiledDetector(model, t.size, t.overlap, t.full_image, (cfg.input.min_size_test, cfg.input.max_size),
                         h.nms_thresh, h.detections_per_image, t.batch, h.soft_nms_sigma, h.score_thresh)
