"""The RoI head shared by Fast R-CNN and Faster R-CNN (Girshick, ICCV 2015).

Each region of interest is pooled from the feature map (RoI max pooling as in the paper, RoI align
selectable), passed through a box head (two fully connected layers, or ResNet's res5 stage), and
classified over C + 1 classes with class-specific box deltas. Training samples RoIs per image at
25% foreground (IoU >= 0.5) with the ground-truth boxes added to the proposals; the loss is
cross-entropy plus smooth L1 on the deltas of the true class. Inference decodes each class's box,
clips, drops low scores, runs NMS per class and keeps the top detections.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detect.ops import (BalancedSampler, BoxCoder, Matcher, RoIPooler, box_voting, clip_boxes, flip_boxes,
                        nonempty_boxes, suppress)

ImageSize = Tuple[int, int]


@torch.no_grad()
def sample_proposals(proposals: torch.Tensor, target: Dict[str, torch.Tensor], matcher: Matcher,
                     sampler: BalancedSampler, add_gt: bool = True):
    """One image's training RoIs: label the proposals by IoU with the ground truth and sample them.

    ``proposals (P, 4)``; ``target`` with ``boxes``, ``labels`` and optionally ``ignore`` (crowd /
    difficult: their matches are neither foreground nor background). The ground-truth boxes join the
    proposals when ``add_gt``. An image without objects has only background. Returns the sampled
    boxes ``(S, 4)`` (foreground first), their labels ``(S,)`` (0 = background) and the ground-truth
    box each is matched to ``(S, 4)`` (meaningful for the foreground).
    """
    gt_boxes = target["boxes"].to(proposals.device, proposals.dtype)
    if add_gt and gt_boxes.numel():
        proposals = torch.cat([proposals, gt_boxes])
    if gt_boxes.numel():
        matches, match_labels = matcher.match_boxes(gt_boxes, proposals, target.get("ignore"))
    else:  # no objects: every proposal is background (even below Fast R-CNN's 0.1 IoU floor)
        matches = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
        match_labels = torch.zeros(proposals.shape[0], dtype=torch.int8, device=proposals.device)
    pos, neg = sampler(match_labels)
    keep = torch.cat([pos, neg])
    labels = torch.zeros(keep.numel(), dtype=torch.int64, device=proposals.device)
    matched = proposals.new_zeros(keep.numel(), 4)
    if pos.numel():
        labels[: pos.numel()] = target["labels"].to(proposals.device)[matches[pos]]
        matched[: pos.numel()] = gt_boxes[matches[pos]]
    return proposals[keep], labels, matched


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, size: ImageSize, score_thresh: float,
                      nms_thresh: float, detections_per_image: int, vote_iou: float = 0.0,
                      soft_nms_sigma: float = 0.0) -> Dict[str, torch.Tensor]:
    """One image's detections from per-class boxes ``(R, C, 4)`` and scores ``(R, C)``: clip, drop
    low scores and empty boxes, per-class NMS, keep the best ``detections_per_image``; with
    ``vote_iou`` > 0 each kept box is refined by box voting with the candidates of its class that
    overlap it at that IoU (:func:`detect.ops.box_voting`); with ``soft_nms_sigma`` > 0, Gaussian
    Soft-NMS replaces NMS (:func:`detect.ops.soft_nms`; ``nms_thresh`` is then unused)."""
    n, num_classes = scores.shape
    boxes = clip_boxes(boxes.reshape(-1, 4), size).view(n, num_classes, 4)
    labels = torch.arange(1, num_classes + 1, device=scores.device).expand(n, -1)
    keep = scores > score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    nonempty = nonempty_boxes(boxes, min_size=1e-2)
    boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
    keep, kept_scores = suppress(boxes, scores, labels, nms_thresh, detections_per_image, soft_nms_sigma, score_thresh)
    kept = boxes[keep]
    if vote_iou > 0:
        kept = box_voting(kept, labels[keep], boxes, scores, labels, vote_iou)
    return {"boxes": kept, "scores": kept_scores, "labels": labels[keep]}


class TwoFCHead(nn.Module):
    """Flatten the pooled grid, then two fully connected layers with ReLU (VGG16's fc6 / fc7).

    ``units``: ``(fc6, fc7)`` widths where unit pruning left them different from ``fc_dim``.
    """

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, units: Sequence[int] = ()):
        super().__init__()
        fc6_dim, fc7_dim = (int(u) for u in units) if units else (fc_dim, fc_dim)
        self.fc6 = nn.Linear(in_channels * resolution * resolution, fc6_dim)
        self.fc7 = nn.Linear(fc6_dim, fc7_dim)
        self.out_channels = fc7_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class Res5Head(nn.Module):
    """ResNet's last stage over the pooled RoIs, then global average pooling (He et al. 2016)."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """Class scores ``(R, C + 1)`` and class-specific deltas ``(R, 4 (C + 1))``."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)  # Fast R-CNN's initialisation
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHead(nn.Module):
    """Pool, box head, predictor; sampling and losses when training, post-processing at inference.

    Args:
        pooler: :class:`~detect.ops.RoIPooler` over the backbone's maps.
        box_head: :class:`TwoFCHead` or :class:`Res5Head`.
        predictor: :class:`BoxPredictor`.
        matcher: proposal labelling (Faster R-CNN: ``[0.5]``; Fast R-CNN: background in [0.1, 0.5)).
        sampler: RoIs per image and foreground fraction (512 / 0.25; Fast R-CNN 64 / 0.25).
        box_coder: the R-CNN coder with weights (10, 10, 5, 5).
        score_thresh, nms_thresh, detections_per_image: inference post-processing.
        box_vote_iou: > 0 refines each detection by box voting at this IoU (:func:`select_detections`).
        soft_nms_sigma: > 0 runs Gaussian Soft-NMS with this sigma instead of NMS.
        add_gt_as_proposals: add the ground-truth boxes to the proposals when training (both papers).
    """

    def __init__(self, pooler: RoIPooler, box_head: nn.Module, predictor: BoxPredictor, matcher: Matcher,
                 sampler: BalancedSampler, box_coder: BoxCoder, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_image: int = 100, smooth_l1_beta: float = 1.0,
                 add_gt_as_proposals: bool = True, box_vote_iou: float = 0.0, soft_nms_sigma: float = 0.0):
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.matcher = matcher
        self.sampler = sampler
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.add_gt_as_proposals = add_gt_as_proposals
        self.box_vote_iou = box_vote_iou
        self.soft_nms_sigma = soft_nms_sigma
        # without gradients, pool and classify at most this many bytes of pooled features per call
        # (0: all RoIs at once); set by the inference runtime where it pays (detect.inference.runtime)
        self.predict_chunk_bytes = 0

    def forward(self, features: List[torch.Tensor], proposals: List[torch.Tensor], image_sizes: Sequence[ImageSize],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        """Training (``targets`` given): the losses ``loss_cls`` and ``loss_box``. Inference: one dict per
        image with ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)``."""
        if targets is not None:
            rois, labels, box_targets = self.sample_rois(proposals, targets)
            class_logits, box_deltas = self.predict(features, rois)
            return self.losses(class_logits, box_deltas, labels, box_targets)
        class_logits, box_deltas = self.predict(features, proposals)
        return self.postprocess(class_logits, box_deltas, proposals, image_sizes)

    def predict(self, features: List[torch.Tensor], rois: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(R, C + 1)`` and deltas ``(R, 4 (C + 1))`` of the RoIs (all images, in order).

        With ``predict_chunk_bytes`` set and no gradients, the RoIs are pooled and classified image
        by image in chunks of at most that many bytes of pooled features (same outputs); not while
        exporting, where the graph holds one call.
        """
        if not self.predict_chunk_bytes or torch.is_grad_enabled() or not rois or torch.compiler.is_compiling():
            return self.classify(self.pool(features, rois))
        h, w = self.pooler.output_size
        per_roi = features[0].shape[1] * h * w * features[0].element_size()
        chunk = max(1, self.predict_chunk_bytes // per_roi)
        if sum(len(r) for r in rois) <= chunk:
            return self.classify(self.pool(features, rois))
        logits, deltas = [], []
        for i, boxes in enumerate(rois):
            image_features = [f[i:i + 1] for f in features]
            for start in range(0, len(boxes), chunk):
                lg, d = self.classify(self.pool(image_features, [boxes[start:start + chunk]]))
                logits.append(lg)
                deltas.append(d)
        return torch.cat(logits), torch.cat(deltas)

    def pool(self, features: List[torch.Tensor], rois: List[torch.Tensor]) -> torch.Tensor:
        """``(R, channels, r, r)`` pooled features of the RoIs (per image ``(R_i, 4)`` xyxy)."""
        return self.pooler(features[: len(self.pooler.strides)], rois)

    def classify(self, pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.predictor(self.box_head(pooled))

    @torch.no_grad()
    def sample_rois(self, proposals: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]):
        """Per image: label proposals by IoU, sample, and encode the foreground's regression targets.

        Returns the sampled RoIs (list of ``(S_i, 4)``), their class labels ``(sum S_i,)`` (0 for
        background) and regression targets ``(sum S_i, 4)`` (zeros for background).
        """
        rois, labels, box_targets = [], [], []
        for props, t in zip(proposals, targets):
            sampled, roi_labels, matched = sample_proposals(props, t, self.matcher, self.sampler,
                                                            self.add_gt_as_proposals)
            targets_i = sampled.new_zeros(len(sampled), 4)
            fg = roi_labels > 0
            if fg.any():
                targets_i[fg] = self.box_coder.encode(sampled[fg], matched[fg])
            rois.append(sampled)
            labels.append(roi_labels)
            box_targets.append(targets_i)
        return rois, torch.cat(labels), torch.cat(box_targets)

    def losses(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor,
               box_targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy over the sampled RoIs; smooth L1 on the true class's deltas of the
        foreground RoIs, summed and divided by the number of sampled RoIs (background RoIs count,
        with zero loss, as in Fast R-CNN's [u >= 1] term)."""
        class_logits = class_logits.float()
        loss_cls = F.cross_entropy(class_logits, labels) if labels.numel() else class_logits.sum() * 0
        fg = torch.nonzero(labels > 0).flatten()
        deltas = box_deltas.float().reshape(box_deltas.shape[0], class_logits.shape[1], 4)[fg, labels[fg]]
        loss_box = F.smooth_l1_loss(deltas, box_targets[fg], beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_cls": loss_cls, "loss_box": loss_box / max(labels.numel(), 1)}

    @torch.no_grad()
    def decode(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: List[torch.Tensor]
               ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per image, each RoI's boxes per class ``(R_i, C, 4)`` and class probabilities ``(R_i, C)``
        (background dropped), before any threshold or NMS."""
        scores_all = F.softmax(class_logits.float(), dim=1)
        boxes_all = self.box_coder.decode(box_deltas.float(), torch.cat(proposals))
        out = []
        start = 0
        for props in proposals:
            n = props.shape[0]
            # the number of classes spelled out: an image without RoIs has n = 0 (view(0, -1, 4) is ambiguous)
            out.append((boxes_all[start:start + n].view(n, boxes_all.shape[1] // 4, 4)[:, 1:],
                        scores_all[start:start + n, 1:]))
            start += n
        return out

    @torch.no_grad()
    def postprocess(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: List[torch.Tensor],
                    image_sizes: Sequence[ImageSize], flipped: bool = False,
                    views: Sequence[List[Tuple[torch.Tensor, torch.Tensor]]] = ()) -> List[Dict[str, torch.Tensor]]:
        """One dict of detections per image: :meth:`decode`, then :meth:`select`. ``views``: the same
        RoIs' boxes and probabilities per image as other views saw them (test-time scales, already in
        these images' pixels), averaged in RoI for RoI."""
        per_image = self.decode(class_logits, box_deltas, proposals)
        if views:
            k = len(views) + 1
            per_image = [((sum(v[i][0] for v in views) + boxes) / k, (sum(v[i][1] for v in views) + scores) / k)
                         for i, (boxes, scores) in enumerate(per_image)]
        return self.select(per_image, image_sizes, flipped=flipped)

    @torch.no_grad()
    def select(self, per_image: List[Tuple[torch.Tensor, torch.Tensor]], image_sizes: Sequence[ImageSize],
               flipped: bool = False) -> List[Dict[str, torch.Tensor]]:
        """One dict of detections per image (:func:`select_detections`) from each image's decoded
        boxes ``(R_i, C, 4)`` and class probabilities ``(R_i, C)``.

        ``flipped``: the second half of the images (and of ``image_sizes``) are the mirror images of
        the first half's, RoI for RoI (test-time flip, ``detect.models.two_stage``). Each RoI's class
        probabilities and its boxes, mirrored back, are averaged over the two views before the
        detections are selected; one dict per image of the first half."""
        if flipped:
            n = len(per_image) // 2
            image_sizes = image_sizes[:n]
            per_image = [((boxes + flip_boxes(mirror_boxes, size[1])) / 2, (scores + mirror_scores) / 2)
                         for (boxes, scores), (mirror_boxes, mirror_scores), size
                         in zip(per_image[:n], per_image[n:], image_sizes)]
        return [select_detections(boxes, scores, size, self.score_thresh, self.nms_thresh,
                                  self.detections_per_image, self.box_vote_iou, self.soft_nms_sigma)
                for (boxes, scores), size in zip(per_image, image_sizes)]
