"""Faster R-CNN: backbone -> RPN -> RoI head (Ren et al. 2015).

The model takes a list of ``3xHxW`` float images in ``[0, 1]`` (any sizes; it normalises and pads them
into one batch but never resizes; at CPU inference it runs them one at a time) and, when training, a
list of targets with ``boxes`` (xyxy pixels), ``labels`` (1..C) and optionally ``ignore``. It returns
the losses when training and, at inference, one dict per image with ``boxes``, ``scores`` and ``labels``
in that image's pixels.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detect.models.backbones import Backbone
from detect.models.roi_head import RoIHead
from detect.models.rpn import RPN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_by_image(model: nn.Module, images: List[torch.Tensor]) -> bool:
    """Whether ``model`` should run ``images`` one at a time: at inference on the CPU, where a batch
    is slower per image than single images (measured here at 480x640, 2 threads: ResNet-50-FPN 1.26 s
    per image in batches of 4 against 0.98 s alone, MobileNetV3-FPN 250 ms against 208 ms): bigger
    maps fall out of the caches, and a batch pads every image to the largest. Training keeps batches."""
    return not model.training and len(images) > 1 and images[0].device.type == "cpu"


class ImageBatcher(nn.Module):
    """Normalise images with the backbone's pixel statistics and pad them into one tensor whose
    sides are multiples of ``size_divisibility`` (padding is zero after normalisation: the mean colour)."""

    def __init__(self, size_divisibility: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.size_divisibility = size_divisibility
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def forward(self, images: List[torch.Tensor]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i}: expected a 3xHxW tensor, got shape {tuple(im.shape)}")
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisibility
        h = -(-max(s[0] for s in sizes) // d) * d
        w = -(-max(s[1] for s in sizes) // d) * d
        batch = images[0].new_zeros((len(images), 3, h, w))
        for im, b in zip(images, batch):
            b[:, : im.shape[1], : im.shape[2]].copy_((im - self.mean) / self.std)
        return batch, sizes


class FasterRCNN(nn.Module):
    """Backbone, RPN and RoI head composed; see the module docstring for inputs and outputs."""

    def __init__(self, backbone: Backbone, rpn: RPN, roi_head: RoIHead, class_names: Sequence[str]):
        super().__init__()
        # padded to the largest stride of the conv stages (FPN's extra max-pooled level takes any
        # size, as in torchvision): 480 rows stay 480 at stride 32 instead of 512 at 64
        self.batcher = ImageBatcher(max(backbone.roi_strides))
        self.backbone = backbone
        self.rpn = rpn
        self.roi_head = roi_head
        self.class_names = list(class_names)

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("FasterRCNN in training mode needs targets (call model.eval() for inference)")
        if image_by_image(self, images):
            return [out for im in images for out in self.forward([im])]
        batch, sizes = self.batcher(images)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(features, sizes, targets if self.training else None)
        if self.training:
            return {**rpn_losses, **self.roi_head(features, proposals, sizes, targets)}
        return self.roi_head(features, proposals, sizes)

    @torch.no_grad()
    def proposals(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        """The RPN's proposals per image ``(R_i, 4)`` xyxy, best first (for proposal-recall evaluation)."""
        batch, sizes = self.batcher(images)
        return self.rpn(self.backbone(batch), sizes)[0]
