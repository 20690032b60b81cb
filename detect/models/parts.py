"""The parts every stage is built from, each from its config section: the backbone, the RPN, the
external proposer, the RoI head. ``detect.models.registry.build_model`` assembles them into a stage."""
from __future__ import annotations

import logging
from typing import List, Sequence

from detect.models.anchors import AnchorGenerator
from detect.models.backbones import Backbone, build_backbone
from detect.models.external_proposals import ExternalProposals
from detect.models.roi_head import BoxPredictor, Res5Head, RoIHead, TwoFCHead
from detect.models.rpn import RPN, RPNHead
from detect.models.svd import factorise_box_head_shapes
from detect.ops import BACKGROUND, FOREGROUND, IGNORE, BalancedSampler, BoxCoder, Matcher, RoIPooler

logger = logging.getLogger(__name__)


def backbone_from_config(cfg, load_weights: bool = True) -> Backbone:
    """The backbone ``cfg.model.backbone`` describes; ``load_weights=False`` builds the same network
    (the norm layers and frozen stages its pretrained weights imply) without reading them, for a
    model whose weights come from a checkpoint next."""
    b = cfg.model.backbone
    pretrained = b.pretrained or None
    # From scratch, batch statistics of 2-4 images drift from the running averages used at test time
    # (seen here: AP50 0.85 with BN against 1.0 with GN on the same overfitting run), so GN is the default.
    norm = b.norm if b.norm != "auto" else ("frozen_bn" if pretrained else "gn")
    freeze_at = b.freeze_at if b.freeze_at >= 0 else (2 if pretrained else 0)
    return build_backbone(b.name, pretrained if load_weights else None, b.fpn, norm, freeze_at, b.fpn_channels,
                          b.fpn_strides, b.width, b.channels_last, b.fpn_norm)


def default_anchor_sizes(strides: Sequence[int], fpn: bool) -> List[List[float]]:
    if fpn:
        return [[8.0 * s] for s in strides]
    return [[32.0, 64.0, 128.0, 256.0, 512.0]]


DEFAULT_ASPECT_RATIOS = [0.5, 1.0, 2.0]


def rpn_strides(cfg) -> List[int]:
    """Strides of the RPN's levels for the config's backbone (built without weights to read them)."""
    b = cfg.model.backbone
    return build_backbone(b.name, None, b.fpn, "gn", 0, b.fpn_channels, b.fpn_strides, b.width).strides


def configured_anchors(cfg, strides: Sequence[int]):
    """``(sizes per level, aspect ratios)`` as configured; ``[]`` and ``auto`` give the defaults."""
    r = cfg.model.rpn
    sizes = r.anchor_sizes if isinstance(r.anchor_sizes, list) and r.anchor_sizes else \
        default_anchor_sizes(strides, len(strides) > 1 or cfg.model.backbone.fpn)
    ratios = r.aspect_ratios if isinstance(r.aspect_ratios, list) else DEFAULT_ASPECT_RATIOS
    return [list(map(float, s)) for s in sizes], list(map(float, ratios))


def build_rpn(cfg, backbone: Backbone) -> RPN:
    r = cfg.model.rpn
    if "auto" in (r.anchor_sizes, r.aspect_ratios):
        raise ValueError("model.rpn.anchor_sizes / aspect_ratios is 'auto' but was never fitted: detect train "
                         "fits them to the training set (and stores them in the run's config and checkpoint); "
                         "detect dataset anchors --config CFG prints them")
    sizes = r.anchor_sizes or default_anchor_sizes(backbone.strides, backbone.fpn is not None)
    anchors = AnchorGenerator(sizes, r.aspect_ratios, backbone.strides, r.anchor_offset, r.round_anchors,
                              r.anchor_spacing)
    return RPN(anchors, RPNHead(backbone.out_channels, anchors.num_anchors_per_cell),
               Matcher([r.bg_iou, r.fg_iou], [BACKGROUND, IGNORE, FOREGROUND], allow_low_quality_matches=True),
               BalancedSampler(r.batch_size_per_image, r.positive_fraction),
               pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
               post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test), nms_thresh=r.nms_thresh,
               score_thresh=r.score_thresh)


def build_external_proposer(cfg) -> ExternalProposals:
    """The proposer of the stages on external proposals (Fast R-CNN, R-CNN), from ``model.proposals``."""
    p = cfg.model.proposals
    return ExternalProposals(p.mode, p.max_side or None, p.seed, p.topk_train, p.topk_test)


def build_roi_head(cfg, backbone: Backbone, num_classes: int) -> RoIHead:
    h = cfg.model.roi_head
    if h.box_head == "res5":
        if backbone.res5 is None:
            raise ValueError("model.roi_head.box_head=res5 needs a ResNet backbone without FPN")
        # res5's first block has stride 2: pool 14x14 to get 7x7 features, as detectron2's C4 models.
        resolution = 2 * h.resolution
        box_head = Res5Head(backbone.res5, backbone.res5.channels)
        backbone.res5 = None  # the head owns it now (one copy of the weights)
    else:
        resolution = h.resolution
        box_head = TwoFCHead(backbone.out_channels, resolution, h.fc_dim, h.fc_units)
        if h.svd_ranks:  # a checkpoint compressed by tools/compress.py: build its layer shapes
            factorise_box_head_shapes(box_head, h.svd_ranks)
    pooler = RoIPooler(resolution, backbone.roi_strides, mode=h.pooler, sampling_ratio=h.sampling_ratio,
                       canonical_size=h.canonical_size, aligned=h.aligned)
    labels = [BACKGROUND, FOREGROUND] if h.bg_iou_low <= 0 else [IGNORE, BACKGROUND, FOREGROUND]
    thresholds = [h.fg_iou] if h.bg_iou_low <= 0 else [h.bg_iou_low, h.fg_iou]
    return RoIHead(pooler, box_head, BoxPredictor(box_head.out_channels, num_classes),
                   Matcher(thresholds, labels), BalancedSampler(h.batch_size_per_image, h.positive_fraction),
                   BoxCoder(h.bbox_reg_weights), score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
                   detections_per_image=h.detections_per_image, smooth_l1_beta=h.smooth_l1_beta,
                   box_vote_iou=h.box_vote_iou, soft_nms_sigma=h.soft_nms_sigma)
