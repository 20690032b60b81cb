"""Faster R-CNN: backbone -> RPN -> RoI head (Ren et al. 2015).

The two-stage detector of ``detect.models.two_stage`` with the region proposal network as its
proposer; inputs and outputs are that module's.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from detect.models.backbones import Backbone
from detect.models.roi_head import RoIHead
from detect.models.rpn import RPN
from detect.models.two_stage import IMAGENET_MEAN, IMAGENET_STD, ImageBatcher, TwoStageDetector

__all__ = ["FasterRCNN", "ImageBatcher", "IMAGENET_MEAN", "IMAGENET_STD"]


class FasterRCNN(TwoStageDetector):
    """Backbone, RPN and RoI head; the RPN is ``model.rpn`` (and ``model.proposer``)."""

    proposer_attr = "rpn"

    def __init__(self, backbone: Backbone, rpn: RPN, roi_head: RoIHead, class_names: Sequence[str],
                 test_flip: bool = False, test_scales: Sequence[float] = ()):
        super().__init__(backbone, rpn, roi_head, class_names, test_flip=test_flip, test_scales=test_scales)

    @torch.no_grad()
    def proposals(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        """The RPN's proposals per image ``(R_i, 4)`` xyxy, best first (for proposal-recall evaluation)."""
        batch, sizes = self.batcher(images)
        return self.rpn(self.backbone(batch), sizes)[0]
