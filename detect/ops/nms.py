"""The one NMS path: every stage suppresses duplicates through these two functions."""
from __future__ import annotations

import torch
import torchvision


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-agnostic NMS. ``boxes (N, 4)`` xyxy, ``scores (N,)``; returns kept indices by score."""
    return torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Per-class NMS: boxes only suppress boxes of the same label.

    ``boxes (N, 4)`` xyxy, ``scores (N,)``, ``labels (N,)`` int; returns kept indices sorted by
    decreasing score. (For RPN proposals the "label" is the feature level: NMS per level.)
    """
    return torchvision.ops.batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
