"""The two-stage detector every stage of the family shares: named phases, one ``forward``.

    images -> preprocess (normalise, pad) -> backbone -> proposer -> RoI head -> postprocess

The proposer is a module with one contract, ``proposer(features, image_sizes, targets=None,
images=None, proposals=None) -> (proposals, losses)``: the RPN (Faster R-CNN) makes proposals from
the features and has losses; :class:`~detect.models.external_proposals.ExternalProposals` (Fast
R-CNN) takes them from the argument, the training targets or selective search on the images, and has
none. Faster and Fast R-CNN differ in that module alone.

The model takes a list of ``3xHxW`` float images in ``[0, 1]`` (any sizes; it normalises and pads them
into one batch but never resizes) and, when training, a list of targets with ``boxes`` (xyxy pixels),
``labels`` (1..C) and optionally ``ignore``. It returns the losses when training and, at inference,
one dict per image with ``boxes``, ``scores`` and ``labels`` in that image's pixels.

Test-time flip (``test_flip``, ``model.test_flip``): each image's mirror image joins the batch, and
both views score the same RoIs, the union of their proposals (the RPN's of each view; a proposer with
``mirrors_proposals``, which takes proposals from outside the network, runs once and its proposals are
mirrored), each RoI's class probabilities and boxes averaged over the two views before the detections
are selected (``RoIHead.postprocess(flipped=True)``). About twice the inference time; the detections
of an image's mirror image are the mirror of the image's.

Test-time scales (``test_scales``, ``model.test_scales``, e.g. ``[0.75]``): for each factor the backbone
runs again on copies of the images (the mirror images too, with flip) resized by it, and these views
score the same RoIs, scaled to them; each RoI's class probabilities and boxes (scaled back) are
averaged over all views. The proposals come from the images at their own size alone. Each factor adds
about a backbone and an RoI head's run at its scale.

The forward is the same on every device and contains no speed policy: the CPU choices (one image at
a time, NNPACK convolutions, RoIs classified in chunks) are applied from outside by the inference
runtime (``detect.inference.runtime``). Each phase runs inside a ``torch.profiler.record_function``
range named ``detect.<phase>``, so a profile shows them; the stage benchmark times the proposer and
the postprocess by wrapping them from outside around this same forward.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from detect.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
from detect.models.roi_head import RoIHead
from detect.ops import flip_boxes

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
        # the sizes stay symbolic under torch.export (an int() would fix the exported graph to one size)
        sizes = [(im.shape[1], im.shape[2]) for im in images]
        d = self.size_divisibility
        # (x + d - 1) // d rounds up on positive sizes alone: ONNX divides integers towards zero, so
        # the exported -(-x // d) would round down
        h = (max(s[0] for s in sizes) + d - 1) // d * d
        w = (max(s[1] for s in sizes) + d - 1) // d * d
        # F.pad by (h - height): under torch.export a zero amount is as valid as any other (copying into
        # a slice of a zero batch made the graph assume the image was never a multiple of d)
        padded = [F.pad((im - self.mean) / self.std, (0, w - im.shape[2], 0, h - im.shape[1])) for im in images]
        return torch.stack(padded) if len(padded) > 1 else padded[0][None], sizes


def with_mirror_images(images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``n`` images ``3xHxW``, then each one's mirror image (flipped left to right): ``2n``."""
    return list(images) + [im.flip(-1) for im in images]


def mirrored_views(rois: List[torch.Tensor], sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """The RoIs ``(R_i, 4)`` of ``n`` images, then the same RoIs in each image's mirror image (``2n``)."""
    return list(rois) + [flip_boxes(r, size[1]) for r, size in zip(rois, sizes)]


def union_of_views(rois: List[torch.Tensor], sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """Proposals of ``n`` images followed by those of their mirror images (``2n`` lists) -> per image
    the union ``(R_i + R_i', 4)`` (the mirror view's mirrored back), then that union mirrored, so that
    both views score the same RoIs in the same order."""
    n = len(rois) // 2
    union = [torch.cat([rois[i], flip_boxes(rois[n + i], sizes[i][1])]) for i in range(n)]
    return mirrored_views(union, sizes[:n])


class TwoStageDetector(nn.Module):
    """Backbone, proposer and RoI head composed in the phases of the module docstring.

    Args:
        backbone: the shared backbone (``detect.models.backbones``).
        proposer: a module with the proposer contract (module docstring).
        roi_head: :class:`~detect.models.roi_head.RoIHead`.
        class_names: the ``C`` class names, label ``i`` is ``class_names[i - 1]``.
        test_flip: at inference, also run each image's mirror image and average the two views
            (module docstring).
        test_scales: at inference, also score the RoIs on the images resized by each of these factors
            and average all views (module docstring).
    """

    # the attribute, and state-dict prefix, the proposer is registered under (Faster R-CNN: "rpn",
    # as its checkpoints have always named it)
    proposer_attr = "proposer"

    def __init__(self, backbone: Backbone, proposer: nn.Module, roi_head: RoIHead, class_names: Sequence[str],
                 test_flip: bool = False, test_scales: Sequence[float] = ()):
        super().__init__()
        # padded to the largest stride of the conv stages (FPN's extra max-pooled level takes any
        # size, as in torchvision): 480 rows stay 480 at stride 32 instead of 512 at 64
        self.batcher = ImageBatcher(max(backbone.roi_strides), backbone.pixel_mean, backbone.pixel_std)
        self.backbone = backbone
        self.add_module(self.proposer_attr, proposer)
        self.roi_head = roi_head
        self.class_names = list(class_names)
        self.test_flip = test_flip
        self.test_scales = [float(s) for s in test_scales]

    @property
    def proposer(self) -> nn.Module:
        try:
            return self._modules[self.proposer_attr]
        except KeyError:  # AttributeError: what hasattr (and nn.Module.add_module) expect before it is set
            raise AttributeError("proposer") from None

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                proposals: Optional[List[torch.Tensor]] = None):
        if self.training and targets is None:
            raise ValueError(f"{type(self).__name__} in training mode needs targets (call model.eval() for inference)")
        flip = self.test_flip and not self.training
        if flip:
            originals = list(images)
            images = with_mirror_images(originals)
        with record_function("detect.preprocess"):
            batch, sizes = self.batcher(images)
        with record_function("detect.backbone"):
            features = self.backbone(batch)
        with record_function("detect.proposer"):
            if flip and getattr(self.proposer, "mirrors_proposals", False):
                n = len(originals)
                rois, proposer_losses = self.proposer(features, sizes[:n], images=originals, proposals=proposals)
                rois = mirrored_views(rois, sizes[:n])
            else:
                rois, proposer_losses = self.proposer(features, sizes, targets=targets if self.training else None,
                                                      images=images, proposals=proposals)
                if flip:
                    rois = union_of_views(rois, sizes)
        if self.training:
            with record_function("detect.roi_head"):
                return {**proposer_losses, **self.roi_head(features, rois, sizes, targets)}
        with record_function("detect.roi_head"):
            class_logits, box_deltas = self.roi_head.predict(features, rois)
        with record_function("detect.test_scales"):
            views = [self.scaled_view(images, rois, scale) for scale in self.test_scales]
        with record_function("detect.postprocess"):
            return self.postprocess(class_logits, box_deltas, rois, sizes, flipped=flip, views=views)

    def scaled_view(self, images: List[torch.Tensor], rois: List[torch.Tensor], scale: float
                    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The RoIs ``(R_i, 4)`` of ``images`` scored on copies of the images resized by ``scale``: per
        image the boxes per class ``(R_i, C, 4)``, in the images' own pixels, and the class
        probabilities ``(R_i, C)`` (``RoIHead.decode``)."""
        batch, _ = self.batcher(self.resized_images(images, scale))
        scaled = [r * scale for r in rois]
        class_logits, box_deltas = self.roi_head.predict(self.backbone(batch), scaled)
        return [(boxes / scale, scores) for boxes, scores in self.roi_head.decode(class_logits, box_deltas, scaled)]

    def resized_images(self, images: List[torch.Tensor], scale: float) -> List[torch.Tensor]:
        """Copies of ``images`` (3xHxW) resized by ``scale``, a pixel at ``x`` moving to ``x * scale``
        exactly, so that boxes convert by the factor alone (test-time scales, Fast R-CNN's pyramid)."""
        out = []
        for im in images:
            least = math.ceil(1 / scale)
            if min(im.shape[1], im.shape[2]) < least:
                # a side that would shrink below one pixel (a 1-px strip at 0.75) is first padded with the
                # mean colour at the bottom / right, as the batcher pads: the pixels stay where they were
                canvas = self.batcher.mean.expand(3, max(im.shape[1], least), max(im.shape[2], least)).clone()
                canvas[:, :im.shape[1], :im.shape[2]] = im
                im = canvas
            # the factor given, not recomputed from the rounded sizes: the mapping stays exactly x * scale
            out.append(F.interpolate(im[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                     recompute_scale_factor=False)[0])
        return out

    def postprocess(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, rois: List[torch.Tensor],
                    image_sizes: Sequence[Tuple[int, int]], flipped: bool = False,
                    views: Sequence[List[Tuple[torch.Tensor, torch.Tensor]]] = ()) -> List[Dict[str, torch.Tensor]]:
        """Detections per image from the RoI head's outputs: decode, clip, score floor, per-class NMS
        (``flipped``: the second half are the mirror views, averaged in; ``views``: the same RoIs'
        decoded boxes and probabilities from other test scales, averaged in; ``RoIHead.postprocess``)."""
        return self.roi_head.postprocess(class_logits, box_deltas, rois, image_sizes, flipped=flipped, views=views)
