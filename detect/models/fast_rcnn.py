"""Fast R-CNN: backbone -> RoI pooling of external proposals -> RoI head (Girshick, ICCV 2015).

The same backbone, batcher and RoI head as Faster R-CNN; only the proposals come from outside:
from the training targets (``target["proposals"]``, attached by the dataset from a proposals file),
from the ``proposals`` argument, or, at inference without either, from selective search run on the
image as passed. Inputs and outputs follow the models' contract (see ``faster_rcnn.py``).

Multi-scale testing (``pyramid_scales``) runs the backbone on rescaled copies of each image and
pools every RoI from the scale at which its area is closest to ``pyramid_roi_size ** 2`` pixels,
as the paper does to scale-normalise the proposals.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detect.models.backbones import Backbone
from detect.models.external_proposals import forward_proposals
from detect.models.faster_rcnn import ImageBatcher, image_by_image
from detect.models.roi_head import RoIHead


class FastRCNN(nn.Module):
    """Backbone and RoI head over given proposals.

    Args:
        backbone, roi_head: shared parts (see ``detect.models.build``).
        class_names: the ``C`` class names, label ``i`` is ``class_names[i - 1]``.
        proposal_mode, proposal_max_side, proposal_seed: selective search settings used when
            inference gets no proposals.
        topk_train, topk_test: best-ranked proposals kept per image.
        pyramid_scales: image scale factors for multi-scale testing (empty: single scale).
        pyramid_roi_size: the RoI side each proposal is scale-normalised towards.
    """

    def __init__(self, backbone: Backbone, roi_head: RoIHead, class_names: Sequence[str],
                 proposal_mode: str = "fast", proposal_max_side: Optional[int] = None, proposal_seed: int = 0,
                 topk_train: int = 2000, topk_test: int = 2000, pyramid_scales: Sequence[float] = (),
                 pyramid_roi_size: float = 224.0):
        super().__init__()
        # padded to the largest stride of the conv stages (FPN's extra max-pooled level takes any
        # size, as in torchvision): 480 rows stay 480 at stride 32 instead of 512 at 64
        self.batcher = ImageBatcher(max(backbone.roi_strides))
        self.backbone = backbone
        self.roi_head = roi_head
        self.class_names = list(class_names)
        self.proposal_mode = proposal_mode
        self.proposal_max_side = proposal_max_side
        self.proposal_seed = proposal_seed
        self.topk = (topk_train, topk_test)
        self.pyramid_scales = [float(s) for s in pyramid_scales]
        self.pyramid_roi_size = float(pyramid_roi_size)
        # seconds spent in selective search by the last forward (0 when proposals were given)
        self.last_proposal_seconds = 0.0

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                proposals: Optional[List[torch.Tensor]] = None):
        proposals, sizes = forward_proposals(self, images, targets, proposals)
        if image_by_image(self, images):  # selective search ran on the whole batch (in parallel)
            seconds = self.last_proposal_seconds
            out = [o for im, p in zip(images, proposals) for o in self.forward([im], proposals=[p])]
            self.last_proposal_seconds = seconds
            return out
        if not self.training and self.pyramid_scales:
            return self._pyramid_inference(images, proposals, sizes)
        batch, sizes = self.batcher(images)
        features = self.backbone(batch)
        if self.training:
            return self.roi_head(features, proposals, sizes, targets)
        return self.roi_head(features, proposals, sizes)

    def _pyramid_inference(self, images: List[torch.Tensor], proposals: List[torch.Tensor], sizes):
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
            scaled = [F.interpolate(im[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                    recompute_scale_factor=False)[0] for im in images]
            batch, _ = self.batcher(scaled)
            features = self.backbone(batch)
            groups = [chosen[owner[chosen] == i] for i in range(len(images))]  # this scale's RoIs per image
            # pooled and classified in chunks (RoIHead.predict): 2000 VGG16 RoIs pooled at once are 200 MB
            logits, deltas = self.roi_head.predict(features, [rois[g] * scale for g in groups])
            if class_logits is None:  # every RoI has a scale, so every row is written
                class_logits = logits.new_empty((len(rois), logits.shape[1]))
                box_deltas = deltas.new_empty((len(rois), deltas.shape[1]))
            order = torch.cat(groups)
            class_logits[order] = logits
            box_deltas[order] = deltas
        return self.roi_head.postprocess(class_logits, box_deltas, proposals, sizes)
