"""The one NMS path: every stage suppresses duplicates through :func:`nms` / :func:`batched_nms`, or
lowers their scores with :func:`soft_nms`, and may refine the kept boxes with the ones they
suppressed (:func:`box_voting`).

On CUDA they are ``torchvision.ops.nms`` / ``batched_nms``. On CPU they run the greedy kernel of
:mod:`detect.ops._cpu_kernels`, which keeps exactly the boxes torchvision keeps (same IoU arithmetic; a
test holds them equal) but compares each box only with the boxes already kept and stops at
``max_keep``: the RPN asks for its 300 (or 1000) best proposals out of ~3000 candidates, the
detector for its 100 best detections, and torchvision would finish the whole list first. Inside
torch.export (``tools/export.py``) they are torchvision's on every device, so the exported graph holds
the op ONNX knows.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torchvision

from detect.ops._cpu_kernels import greedy_nms, soft_nms_gaussian
from detect.ops.boxes import box_iou


def _library_path(boxes: torch.Tensor) -> bool:
    """True where torchvision's kernel runs: off the CPU, and inside torch.export / torch.compile (whose
    fake tensors have no numpy arrays for the compiled kernel, and whose graph must hold the library
    op that ONNX knows as NonMaxSuppression)."""
    return boxes.device.type != "cpu" or torch.compiler.is_compiling()


def _traceable_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                           iou_threshold: float) -> torch.Tensor:
    """torchvision's coordinate trick (boxes of each label shifted apart, one NMS) without the branches
    on the number of boxes that torchvision takes there: under export that number is only known when
    the graph runs."""
    boxes = boxes.float()
    # the zero keeps max() defined on an empty set of boxes
    span = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max() + 1
    shifted = boxes + (labels.to(boxes) * span)[:, None]
    return torchvision.ops.nms(shifted, scores.float(), iou_threshold)


def _greedy(boxes: torch.Tensor, scores: torch.Tensor, labels: Optional[torch.Tensor], iou_threshold: float,
            max_keep: Optional[int]) -> torch.Tensor:
    n = boxes.shape[0]
    if n == 0 or max_keep == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores.detach().float(), descending=True, stable=True)[1]
    labels = torch.zeros(n, dtype=torch.int64) if labels is None else labels.detach().to(torch.int64)
    keep = greedy_nms(boxes.detach().float().contiguous().numpy(), order.numpy(), labels.contiguous().numpy(),
                      float(iou_threshold), n if max_keep is None else int(max_keep))
    return torch.from_numpy(keep)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        max_keep: Optional[int] = None) -> torch.Tensor:
    """Class-agnostic NMS. ``boxes (N, 4)`` xyxy, ``scores (N,)``; returns the kept indices by
    decreasing score, at most ``max_keep`` (all by default)."""
    if _library_path(boxes):
        return torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold)[:max_keep]
    return _greedy(boxes, scores, None, iou_threshold, max_keep)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                iou_threshold: float, max_keep: Optional[int] = None) -> torch.Tensor:
    """Per-class NMS: boxes only suppress boxes of the same label.

    ``boxes (N, 4)`` xyxy, ``scores (N,)``, ``labels (N,)`` int; returns the kept indices sorted by
    decreasing score, at most ``max_keep`` (all by default). (For RPN proposals the "label" is the
    feature level: NMS per level.)
    """
    if torch.compiler.is_compiling():
        return _traceable_batched_nms(boxes, scores, labels, iou_threshold)[:max_keep]
    if _library_path(boxes):
        return torchvision.ops.batched_nms(boxes.float(), scores.float(), labels, iou_threshold)[:max_keep]
    return _greedy(boxes, scores, labels, iou_threshold, max_keep)


def box_voting(kept: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Refine boxes kept by NMS with the boxes they suppressed (Gidaris & Komodakis, ICCV 2015).

    Each kept box ``kept (K, 4)`` becomes the score-weighted mean of the candidates ``boxes (N, 4)``
    (``scores (N,)``) of its label that overlap it at IoU >= ``iou_threshold`` (itself among them when
    it is one of the candidates). Why: NMS keeps the single best-scored box and throws away the others'
    agreement on where the object is; their mean sits closer to it, which lifts AP at the strict IoU
    thresholds (AP75 and above) without a new detection. Scores and labels do not change. Returns the
    ``(K, 4)`` refined boxes; a kept box with no such candidate stays as it is. Tensor ops only, no
    branch on sizes, so it exports.
    """
    overlap = box_iou(kept.float(), boxes.float())
    weights = scores.float()[None, :] * ((overlap >= iou_threshold) & (kept_labels[:, None] == labels[None, :]))
    total = weights.sum(dim=1, keepdim=True)
    voted = weights @ boxes.float() / total.clamp(min=1e-12)
    return torch.where(total > 0, voted, kept.float()).to(kept.dtype)


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float,
             score_threshold: float, max_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian Soft-NMS (Bodla et al., ICCV 2017): instead of removing the boxes that overlap a kept
    box of the same label, multiply their scores by ``exp(-IoU^2 / sigma)``.

    Why: two objects that overlap (cells in a smear, people in a crowd) both survive, the second one
    with a lower score, where hard NMS at IoU 0.5 deletes it. ``boxes (N, 4)``, ``scores (N,)``,
    ``labels (N,)``. Returns the kept indices by decreasing decayed score (at most ``max_keep``; a box
    whose decayed score falls to ``score_threshold`` or below is dropped) and their decayed scores.
    Neither torchvision nor ONNX has Soft-NMS: on the CPU it runs the numba kernel
    ``soft_nms_gaussian``, elsewhere :func:`soft_nms_reference` (tensor ops, one pass per kept box),
    which a test holds the kernel to.
    """
    if _library_path(boxes):
        return soft_nms_reference(boxes, scores, labels, sigma, score_threshold, max_keep)
    keep, kept_scores = soft_nms_gaussian(boxes.detach().float().contiguous().numpy(),
                                          scores.detach().float().contiguous().numpy(),
                                          labels.detach().to(torch.int64).contiguous().numpy(), float(sigma),
                                          np.float32(score_threshold), int(max_keep))
    return torch.from_numpy(keep), torch.from_numpy(kept_scores)


def suppress(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_thresh: float, max_keep: int,
             soft_nms_sigma: float = 0.0, score_threshold: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A detector's per-class suppression, one rule for every place detections are merged (a model's
    RoI head, sliced inference's views): Gaussian :func:`soft_nms` when ``soft_nms_sigma`` > 0
    (``nms_thresh`` unused), else :func:`batched_nms`. ``boxes (N, 4)``, ``scores (N,)``, ``labels
    (N,)``; returns the kept indices by decreasing (decayed) score, at most ``max_keep``, and their scores."""
    if soft_nms_sigma > 0:
        return soft_nms(boxes, scores, labels, soft_nms_sigma, score_threshold, max_keep)
    keep = batched_nms(boxes, scores, labels, nms_thresh, max_keep=max_keep)
    return keep, scores[keep]


def soft_nms_reference(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float,
                       score_threshold: float, max_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`soft_nms` in tensor ops on any device: the reference for the CPU kernel."""
    boxes, scores = boxes.float(), scores.float().clone()
    alive = scores > score_threshold
    keep, kept_scores = [], []
    # one row of IoUs per kept box, not the (N, N) matrix: with many classes N reaches thousands
    for _ in range(min(max_keep, boxes.shape[0])):
        best = torch.where(alive, scores, torch.full_like(scores, -1.0)).argmax()
        if not alive[best]:
            break
        keep.append(best)
        kept_scores.append(scores[best])
        alive[best] = False
        overlap = box_iou(boxes[best][None], boxes)[0]
        decay = torch.exp(-overlap.square() / sigma)
        scores = scores * torch.where(labels == labels[best], decay, torch.ones_like(decay))
        alive &= scores > score_threshold
    if not keep:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores[:0]
    return torch.stack(keep), torch.stack(kept_scores)
