"""Fast R-CNN: backbone -> RoI pooling of external proposals -> RoI head (Girshick, ICCV 2015).

The two-stage detector of ``detect.models.two_stage`` with
:class:`~detect.models.external_proposals.ExternalProposals` as its proposer: the proposals come from
the ``proposals`` argument, the training targets (``target["proposals"]``, attached by the dataset from
a proposals file), or, at inference without either, selective search run on the image as passed.
Inputs and outputs are the two-stage detector's.

Multi-scale testing (``pyramid_scales``) runs the backbone on rescaled copies of each image and
pools every RoI from the scale at which its area is closest to ``pyramid_roi_size ** 2`` pixels,
as the paper does to scale-normalise the proposals.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch.profiler import record_function

from detect.models.backbones import Backbone
from detect.models.external_proposals import ExternalProposals
from detect.models.roi_head import RoIHead
from detect.models.two_stage import TwoStageDetector, mirrored_views, with_mirror_images


class FastRCNN(TwoStageDetector):
    """Backbone and RoI head over external proposals (``model.proposer``).

    Args:
        backbone, roi_head: shared parts (see ``detect.models.parts``).
        class_names: the ``C`` class names, label ``i`` is ``class_names[i - 1]``.
        proposer: :class:`ExternalProposals` (selective search settings and top-k).
        pyramid_scales: image scale factors for multi-scale testing (empty: single scale).
        pyramid_roi_size: the RoI side each proposal is scale-normalised towards.
        test_flip: also score each image's mirror image and average (``detect.models.two_stage``).
        test_scales: also score the RoIs on the images resized by these factors and average
            (``detect.models.two_stage``); not with ``pyramid_scales``.
    """

    def __init__(self, backbone: Backbone, roi_head: RoIHead, class_names: Sequence[str],
                 proposer: Optional[ExternalProposals] = None, pyramid_scales: Sequence[float] = (),
                 pyramid_roi_size: float = 224.0, test_flip: bool = False, test_scales: Sequence[float] = ()):
        if pyramid_scales and test_scales:
            raise ValueError("Fast R-CNN takes either pyramid_scales (each RoI pooled from one scale) or "
                             "test_scales (every scale's view averaged), not both")
        super().__init__(backbone, proposer if proposer is not None else ExternalProposals(), roi_head, class_names,
                         test_flip=test_flip, test_scales=test_scales)
        self.pyramid_scales = [float(s) for s in pyramid_scales]
        self.pyramid_roi_size = float(pyramid_roi_size)

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                proposals: Optional[List[torch.Tensor]] = None):
        if self.training or not self.pyramid_scales:
            return super().forward(images, targets, proposals)
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        with record_function("detect.proposer"):
            rois, _ = self.proposer(None, sizes, images=images, proposals=proposals)
        if self.test_flip:  # the mirror images join, with the proposals mirrored
            images = with_mirror_images(images)
            rois, sizes = mirrored_views(rois, sizes), sizes + sizes
        with record_function("detect.roi_head"):  # the backbone runs inside, once per scale
            class_logits, box_deltas = self._pyramid_predict(images, rois)
        with record_function("detect.postprocess"):
            return self.postprocess(class_logits, box_deltas, rois, sizes, flipped=self.test_flip)

    def _pyramid_predict(self, images: List[torch.Tensor], proposals: List[torch.Tensor]):
        """Class logits and deltas of every RoI, each pooled from the scale that suits its area."""
        scales = torch.tensor(self.pyramid_scales, device=images[0].device)
        rois = torch.cat(proposals)
        area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
        level = (area[:, None] * scales[None] ** 2 - self.pyramid_roi_size ** 2).abs().argmin(dim=1)
        owner = torch.cat([torch.full((len(p),), i, device=rois.device) for i, p in enumerate(proposals)])
        class_logits = box_deltas = None
        for s_index, scale in enumerate(self.pyramid_scales):
            chosen = torch.nonzero(level == s_index).flatten()
            if chosen.numel() == 0:
                continue
            scaled = self.resized_images(images, scale)
            batch, _ = self.batcher(scaled)
            features = self.backbone(batch)
            groups = [chosen[owner[chosen] == i] for i in range(len(images))]  # this scale's RoIs per image
            logits, deltas = self.roi_head.predict(features, [rois[g] * scale for g in groups])
            if class_logits is None:  # every RoI has a scale, so every row is written
                class_logits = logits.new_empty((len(rois), logits.shape[1]))
                box_deltas = deltas.new_empty((len(rois), deltas.shape[1]))
            order = torch.cat(groups)
            class_logits[order] = logits
            box_deltas[order] = deltas
        return class_logits, box_deltas
