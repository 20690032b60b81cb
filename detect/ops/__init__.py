"""Shared detection operations: box formats, the box coder, matching, sampling, NMS, RoI pooling, and
GroupNorm (whose CPU kernel follows channels-last maps).

Every stage (R-CNN, Fast R-CNN, Faster R-CNN) uses these and nothing else for this logic.
"""
from detect.ops.box_coder import BoxCoder
from detect.ops.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    clip_boxes_np,
    cxcywh_to_xyxy,
    flip_boxes,
    nonempty_boxes,
    remove_small_boxes,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from detect.ops.matcher import BACKGROUND, FOREGROUND, IGNORE, Matcher
from detect.ops.nms import batched_nms, box_voting, nms, soft_nms, suppress
from detect.ops.norm import GroupNorm, group_norm
from detect.ops.roi import RoIPooler, assign_fpn_levels
from detect.ops.sampler import BalancedSampler

__all__ = [
    "BACKGROUND", "FOREGROUND", "GroupNorm", "IGNORE", "BalancedSampler", "BoxCoder", "Matcher", "RoIPooler",
    "assign_fpn_levels", "batched_nms", "box_area", "box_iou", "box_voting", "clip_boxes", "clip_boxes_np",
    "cxcywh_to_xyxy", "flip_boxes", "group_norm", "nms", "nonempty_boxes", "remove_small_boxes", "scale_boxes",
    "soft_nms", "suppress", "xywh_to_xyxy", "xyxy_to_cxcywh", "xyxy_to_xywh",
]
