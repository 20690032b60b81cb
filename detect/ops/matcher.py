"""Assign each prediction (anchor, proposal) to a ground-truth box by IoU.

One matcher serves every stage; only its thresholds differ:

=====================  ============  ==================  =========================================
user                   thresholds    labels              meaning
=====================  ============  ==================  =========================================
RPN (Ren et al.)       [0.3, 0.7]    [0, -1, 1]          < 0.3 background, >= 0.7 object, rest ignored;
                                                         low-quality matches on
RoI head               [0.5]         [0, 1]              < 0.5 background
Fast R-CNN (Girshick)  [0.1, 0.5]    [-1, 0, 1]          background only in [0.1, 0.5)
=====================  ============  ==================  =========================================
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from detect.ops.boxes import box_iou

FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


class Matcher:
    """IoU matcher with interval labels.

    Args:
        thresholds: increasing IoU thresholds ``t_1 < ... < t_k`` cutting [0, 1] into k + 1 intervals
            ``[0, t_1), [t_1, t_2), ..., [t_k, 1]``.
        labels: one label per interval: ``1`` foreground, ``0`` background, ``-1`` ignore. For the usual
            "high / low / between" matcher: ``thresholds=[low, high]``, ``labels=[0, -1, 1]``.
        allow_low_quality_matches: also make foreground, for each ground truth, the predictions with
            its highest IoU (ties included), so a ground truth no anchor covers at ``high`` still gets
            one. A ground truth that overlaps no prediction at all (best IoU 0) gets none.
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool = False):
        thresholds = [float(t) for t in thresholds]
        if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"Matcher thresholds must be increasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"Matcher needs {len(thresholds) + 1} labels for {len(thresholds)} "
                             f"thresholds, got {list(labels)}")
        if any(lab not in (FOREGROUND, BACKGROUND, IGNORE) for lab in labels):
            raise ValueError(f"Matcher labels must be 1, 0 or -1, got {list(labels)}")
        self.thresholds = thresholds
        self.labels = [int(lab) for lab in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Match predictions to ground truth.

        Args:
            iou: ``(M, N)`` IoU between M ground-truth boxes and N predictions.

        Returns:
            matches: ``(N,)`` int64 index of the best ground truth of each prediction (0 when M == 0;
                only meaningful where the label is foreground).
            match_labels: ``(N,)`` int8, 1 / 0 / -1 as set by ``labels``.
        """
        num_preds = iou.shape[1]
        if iou.shape[0] == 0:
            # No ground truth: every prediction falls in the lowest interval (IoU 0).
            matches = iou.new_zeros(num_preds, dtype=torch.int64)
            match_labels = iou.new_full((num_preds,), self.labels[0], dtype=torch.int8)
            return matches, match_labels

        best_iou, matches = iou.max(dim=0)
        match_labels = torch.full_like(matches, self.labels[0], dtype=torch.int8)
        for threshold, label in zip(self.thresholds, self.labels[1:]):
            match_labels[best_iou >= threshold] = label

        if self.allow_low_quality_matches:
            self._add_low_quality_matches(iou, match_labels)
        return matches, match_labels

    def match_boxes(self, gt_boxes: torch.Tensor, boxes: torch.Tensor, ignore: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Match ``boxes (N, 4)`` to ``gt_boxes (M, 4)`` by IoU, as ``__call__`` does; a box whose
        best ground truth is an ``ignore`` one (``(M,)`` bool: crowd, difficult) is IGNORE instead of
        foreground: neither a positive nor a negative (the RPN's anchors, the RoI head's proposals)."""
        matches, match_labels = self(box_iou(gt_boxes, boxes))
        if ignore is not None and ignore.any():
            match_labels[ignore.to(boxes.device)[matches] & (match_labels == FOREGROUND)] = IGNORE
        return matches, match_labels

    @staticmethod
    def _add_low_quality_matches(iou: torch.Tensor, match_labels: torch.Tensor) -> None:
        # As in Ren et al.: the anchor(s) with the highest IoU for each ground truth are positive.
        # Their match index stays the argmax over ground truths: if such an anchor overlaps another
        # ground truth more, it regresses towards that one.
        best_per_gt = iou.max(dim=1, keepdim=True).values
        is_best = (iou == best_per_gt) & (best_per_gt > 0)
        match_labels[is_best.any(dim=0)] = FOREGROUND
