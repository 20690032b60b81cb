"""Box formats and the box utilities every stage shares.

Inside the package boxes are ``(N, 4)`` float32 **xyxy** in absolute pixels. The other formats exist
only at boundaries: ``xywh`` is COCO's (annotation files, result files), ``cxcywh`` is the centre form
the box coder reasons in. The conversions accept numpy arrays and torch tensors alike (any leading
shape ``(..., 4)``) and return the same type, so the data loaders and the models use the same code.

The kernels (IoU, clipping, small-box removal) are torchvision's; this module only fixes the
conventions around them: continuous coordinates, width = x2 - x1 (no "+1" of the old VOC code).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torchvision

Boxes = Union[np.ndarray, torch.Tensor]


def _stack_last(parts: Sequence[Boxes], like: Boxes) -> Boxes:
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def xyxy_to_xywh(boxes: Boxes) -> Boxes:
    """``(..., 4)`` x1, y1, x2, y2 -> x, y, w, h (COCO)."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack_last([x1, y1, x2 - x1, y2 - y1], boxes)


def xywh_to_xyxy(boxes: Boxes) -> Boxes:
    """``(..., 4)`` x, y, w, h (COCO) -> x1, y1, x2, y2."""
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack_last([x, y, x + w, y + h], boxes)


def xyxy_to_cxcywh(boxes: Boxes) -> Boxes:
    """``(..., 4)`` x1, y1, x2, y2 -> centre x, centre y, w, h."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack_last([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], boxes)


def cxcywh_to_xyxy(boxes: Boxes) -> Boxes:
    """``(..., 4)`` centre x, centre y, w, h -> x1, y1, x2, y2."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack_last([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], boxes)


def box_area(boxes: Boxes) -> Boxes:
    """``(..., 4)`` xyxy -> ``(...)`` areas; degenerate boxes have area <= 0."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(N, M)`` between ``boxes1 (N, 4)`` and ``boxes2 (M, 4)``, both xyxy."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def clip_boxes(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Clip ``(..., 4)`` xyxy boxes to an image of ``(height, width)``: x in [0, w], y in [0, h]."""
    return torchvision.ops.clip_boxes_to_image(boxes, image_size)


def clip_boxes_np(boxes: np.ndarray, image_size: Tuple[int, int]) -> np.ndarray:
    """numpy twin of :func:`clip_boxes`, for the data loaders (which work on arrays)."""
    h, w = image_size
    out = boxes.copy()
    np.clip(out[..., 0::2], 0, w, out=out[..., 0::2])
    np.clip(out[..., 1::2], 0, h, out=out[..., 1::2])
    return out


def nonempty_boxes(boxes: Boxes, min_size: float = 0.0) -> Boxes:
    """Mask ``(N,)`` of boxes whose width and height are both > ``min_size``."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w > min_size) & (h > min_size)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of the boxes whose sides are both >= ``min_size`` (torchvision's kernel)."""
    return torchvision.ops.remove_small_boxes(boxes, min_size)


def flip_boxes(boxes: Boxes, width) -> Boxes:
    """``(..., 4)`` xyxy boxes of an image ``width`` pixels wide -> the same boxes in its mirror image
    (flipped left to right): x1' = width - x2, x2' = width - x1. Its own inverse."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack_last([width - x2, y1, width - x1, y2], boxes)


def scale_boxes(boxes: Boxes, scale_xy: Tuple[float, float]) -> Boxes:
    """Multiply x coordinates by ``scale_xy[0]`` and y coordinates by ``scale_xy[1]``.

    Used to map boxes between a resized image and its original (pass the inverse scale to go back).
    """
    sx, sy = scale_xy
    if isinstance(boxes, torch.Tensor):
        factors = boxes.new_tensor([sx, sy, sx, sy])
    else:
        factors = np.asarray([sx, sy, sx, sy], dtype=boxes.dtype)
    return boxes * factors
