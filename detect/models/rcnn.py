"""R-CNN: one CNN pass per warped proposal, linear SVMs, linear box regression (Girshick et al. 2014).

Each proposal is dilated so that, once warped to ``crop_size x crop_size`` (anisotropically, as in
the paper), ``context`` pixels of its surroundings border it; the crops of all proposals of a
batch are cut in one ``roi_align`` call over the normalised images. A crop goes through the shared
backbone, global average pooling and one fully connected layer: that layer's output is the
feature the SVMs and box regressors read.

Training has three phases (``detect/training/rcnn_phases.py`` runs phases 2 and 3):

1. fine-tune the network as a (C+1)-way classifier on crops: this module's training forward, with
   128 crops per batch, 25% foreground (IoU >= 0.5), the rest background;
2. one linear SVM per class on cached features, with hard negative mining;
3. class-specific ridge regression from features to box deltas (the shared ``BoxCoder``).

At test time every proposal is scored by the SVMs (before phase 2: by the softmax classifier),
its box regressed per class, and per-class NMS (0.3 in the paper) keeps the detections.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torchvision.ops import roi_align

from detect.models.backbones import Backbone
from detect.models.external_proposals import ExternalProposals
from detect.models.roi_head import sample_proposals, select_detections
from detect.models.two_stage import ImageBatcher
from detect.ops import BalancedSampler, BoxCoder, Matcher

SCORE_FLOOR = 1e-3  # sigmoid of the SVM margin: keep nearly everything, NMS and top-k decide


class RCNN(nn.Module):
    """See the module docstring.

    Args:
        backbone: the shared backbone (its last map is pooled).
        class_names: the ``C`` class names.
        crop_size: warped crop side (the paper: 227).
        context: context pixels around the proposal at the warped size (the paper: 16).
        fc_dim: feature size (the SVMs' input).
        batch_rois, fg_fraction, fg_iou: fine-tuning mini-batch (128, 0.25, 0.5).
        crops_per_chunk: crops per network call at inference (bounds memory).
        nms_thresh, detections_per_image: test-time post-processing.
        bbox_reg: apply the box regressors at test time (once fitted).
        proposer: :class:`ExternalProposals` (selective search settings and top-k), ``model.proposer``.
    """

    def __init__(self, backbone: Backbone, class_names: Sequence[str], crop_size: int = 227, context: int = 16,
                 fc_dim: int = 512, batch_rois: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                 crops_per_chunk: int = 256, nms_thresh: float = 0.3, detections_per_image: int = 100,
                 bbox_reg: bool = True, proposer: Optional[ExternalProposals] = None):
        super().__init__()
        if not 0 <= 2 * context < crop_size:
            raise ValueError(f"context {context} leaves no room in a {crop_size}-pixel crop")
        num_classes = len(class_names)
        self.class_names = list(class_names)
        self.batcher = ImageBatcher(1, backbone.pixel_mean, backbone.pixel_std)
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.crop_size = int(crop_size)
        self.context = int(context)
        self.matcher = Matcher([fg_iou], [0, 1])
        self.batch_rois = int(batch_rois)
        self.fg_fraction = float(fg_fraction)
        self.crops_per_chunk = int(crops_per_chunk)
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.bbox_reg = bbox_reg
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))  # the paper's regression targets, unweighted
        self.proposer = proposer if proposer is not None else ExternalProposals()
        # phases 2 and 3, saved with the model: SVM (C, D) + (C,), regressors (C, D + 1, 4)
        self.register_buffer("svm_weight", torch.zeros(num_classes, fc_dim))
        self.register_buffer("svm_bias", torch.zeros(num_classes))
        self.register_buffer("bbox_weight", torch.zeros(num_classes, fc_dim + 1, 4))
        self.register_buffer("svm_fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("bbox_fitted", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ crops and features

    def crops(self, batch: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:
        """``(R, 3, S, S)`` warped crops of per-image boxes from a normalised, padded batch."""
        rois = torch.cat(boxes)
        w = (rois[:, 2] - rois[:, 0]).clamp(min=1.0)
        h = (rois[:, 3] - rois[:, 1]).clamp(min=1.0)
        # dilate so that the box spans [context, S - context] of the warped crop
        grow = self.context / (self.crop_size - 2 * self.context)
        dilated = torch.stack([rois[:, 0] - w * grow, rois[:, 1] - h * grow,
                               rois[:, 2] + w * grow, rois[:, 3] + h * grow], dim=1)
        index = torch.cat([torch.full((len(b), 1), i, dtype=rois.dtype, device=rois.device)
                           for i, b in enumerate(boxes)])
        # outside the image roi_align reads zeros: the mean colour after normalisation (the paper
        # pads with the mean too)
        return roi_align(batch, torch.cat([index, dilated], dim=1), (self.crop_size, self.crop_size),
                         spatial_scale=1.0, sampling_ratio=2, aligned=True)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """``(R, D)`` features of crops: backbone, global average pooling, fc + ReLU."""
        fmap = self.backbone(crops)[-1]
        return F.relu(self.fc(fmap.mean(dim=(2, 3))))

    def box_features(self, images: List[torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        """Features ``(sum R_i, D)`` of per-image boxes, computed in chunks of ``crops_per_chunk``."""
        batch, _ = self.batcher(images)
        out = []
        flat = [(i, b) for i, bs in enumerate(boxes) for b in bs.split(self.crops_per_chunk)]
        for i, chunk in flat:
            out.append(self.features(self.crops(batch[i:i + 1], [chunk])))
        if not out:
            return batch.new_zeros((0, self.fc.out_features))
        return torch.cat(out)

    # ------------------------------------------------------------------ phase 1: fine-tuning

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                proposals: Optional[List[torch.Tensor]] = None):
        """The phases of ``detect.models.two_stage``: proposer, then crops through the network
        (fine-tuning loss when training; SVM scores, box regression and per-class NMS at inference)."""
        if self.training and targets is None:
            raise ValueError("RCNN in training mode needs targets (call model.eval() for inference)")
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        with record_function("detect.proposer"):
            proposals, _ = self.proposer(None, sizes, targets=targets if self.training else None, images=images,
                                         proposals=proposals)
        if self.training:
            return self.finetune_loss(images, proposals, targets)
        return self.detect(images, proposals, sizes)

    def finetune_loss(self, images, proposals, targets) -> Dict[str, torch.Tensor]:
        sampler = BalancedSampler(max(1, self.batch_rois // len(images)), self.fg_fraction)
        boxes, labels = [], []
        for props, t in zip(proposals, targets):
            sampled, lab, _ = sample_proposals(props, t, self.matcher, sampler)
            boxes.append(sampled)
            labels.append(lab)
        batch, _ = self.batcher(images)
        logits = self.cls_score(self.features(self.crops(batch, boxes)))
        return {"loss_cls": F.cross_entropy(logits.float(), torch.cat(labels))}

    # ------------------------------------------------------------------ test time

    @torch.no_grad()
    def detect(self, images, proposals, sizes) -> List[Dict[str, torch.Tensor]]:
        out = []
        for image, props, size in zip(images, proposals, sizes):
            with record_function("detect.roi_head"):  # crops, network, SVMs, regressors
                boxes, scores = self.score_and_regress(image, props)
            with record_function("detect.postprocess"):
                out.append(self.postprocess(boxes, scores, size))
        return out

    @torch.no_grad()
    def score_and_regress(self, image: torch.Tensor, props: torch.Tensor):
        """The network part of testing one image: ``(boxes (R, C, 4), scores (R, C))`` per class."""
        feats = self.box_features([image], [props])
        scores = self.class_scores(feats)
        boxes = props[:, None, :].expand(-1, scores.shape[1], -1)
        if self.bbox_reg and bool(self.bbox_fitted):
            boxes = self.regress(feats, props)
        return boxes, scores

    def class_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """``(R, C)``: SVM margins squashed to (0, 1) by a sigmoid once fitted (margin 0 -> 0.5),
        else the fine-tuned softmax's class probabilities."""
        if bool(self.svm_fitted):
            return torch.sigmoid(feats @ self.svm_weight.T + self.svm_bias)
        return F.softmax(self.cls_score(feats).float(), dim=1)[:, 1:]

    def regress(self, feats: torch.Tensor, props: torch.Tensor) -> torch.Tensor:
        """``(R, C, 4)`` boxes: each class's ridge regressor applied to the proposal."""
        x = torch.cat([feats, feats.new_ones(len(feats), 1)], dim=1)
        deltas = torch.einsum("rd,cdk->rck", x, self.bbox_weight)  # (R, C, 4)
        num_classes = deltas.shape[1]
        decoded = self.box_coder.decode(deltas.reshape(len(props), -1), props)
        return decoded.view(len(props), num_classes, 4)

    def postprocess(self, boxes: torch.Tensor, scores: torch.Tensor, size) -> Dict[str, torch.Tensor]:
        return select_detections(boxes, scores, size, SCORE_FLOOR, self.nms_thresh, self.detections_per_image)
