"""Region proposal network (Ren et al., NeurIPS 2015).

A 3x3 conv slides over each feature level; at every cell two 1x1 convs predict, for each of the A
anchors, an objectness logit and 4 box deltas. Training samples 256 anchors per image at up to 1:1
positives (IoU >= 0.7, plus each ground truth's best anchors) to negatives (IoU < 0.3). Proposals:
the top-k anchors per level by objectness, decoded, clipped, NMS at 0.7, and the best post-NMS k.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detect.models.anchors import AnchorGenerator
from detect.ops import BalancedSampler, BoxCoder, Matcher, batched_nms, clip_boxes, nonempty_boxes

ImageSize = Tuple[int, int]


class RPNHead(nn.Module):
    """Shared 3x3 conv, then objectness ``(B, A, H, W)`` and deltas ``(B, 4A, H, W)`` per level."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)  # the paper's initialisation
            nn.init.zeros_(layer.bias)

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            logits.append(self.objectness(t))
            deltas.append(self.deltas(t))
        return logits, deltas


def _flatten(logits: torch.Tensor, deltas: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, A, H, W)`` and ``(B, 4A, H, W)`` -> ``(B, H*W*A)`` and ``(B, H*W*A, 4)`` in anchor order."""
    b, a, h, w = logits.shape
    logits = logits.permute(0, 2, 3, 1).reshape(b, -1)
    deltas = deltas.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
    return logits, deltas


class RPN(nn.Module):
    """Anchors, head, training targets and losses, and proposal selection.

    Args:
        anchor_generator, head: see :class:`AnchorGenerator`, :class:`RPNHead`.
        matcher, sampler: anchor labelling (IoU 0.3 / 0.7) and the 256-anchor 1:1 sample.
        pre_nms_topk, post_nms_topk: ``(train, test)`` pairs; pre-NMS k applies per level.
        nms_thresh: IoU of the proposal NMS.
        min_size: proposals narrower or shorter than this (pixels) are dropped.
        score_thresh: proposals whose objectness probability is under this are dropped (0: none).
    """

    # under test-time flip each view takes the proposals of its own features (detect.models.two_stage)
    mirrors_proposals = False

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, matcher: Matcher,
                 sampler: BalancedSampler, pre_nms_topk: Tuple[int, int], post_nms_topk: Tuple[int, int],
                 nms_thresh: float = 0.7, min_size: float = 1e-3, smooth_l1_beta: float = 1.0 / 9,
                 score_thresh: float = 0.0):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.matcher = matcher
        self.sampler = sampler
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh

    def forward(self, features: List[torch.Tensor], image_sizes: Sequence[ImageSize],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None, images=None,
                proposals: Optional[List[torch.Tensor]] = None) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """Returns per-image proposals ``(R_i, 4)`` xyxy (detached, best first) and, with
        ``targets``, the losses ``loss_rpn_cls`` and ``loss_rpn_box``. ``images`` and ``proposals``
        complete the proposer contract (``detect.models.two_stage``): the RPN reads neither."""
        if proposals is not None:
            raise ValueError("Faster R-CNN makes its own proposals (the RPN): proposals cannot be given to it; "
                             "use a Fast R-CNN model (model.type=fast_rcnn) for external proposals")
        anchors = self.anchor_generator([f.shape[-2:] for f in features], features[0].device)
        logits, deltas = self.head(features)
        flat = [_flatten(lg, d) for lg, d in zip(logits, deltas)]
        level_logits = [lg for lg, _ in flat]
        level_deltas = [d for _, d in flat]
        proposals = self.select_proposals(anchors, level_logits, level_deltas, image_sizes)
        losses = {}
        if targets is not None:
            losses = self.losses(torch.cat(anchors), torch.cat(level_logits, 1), torch.cat(level_deltas, 1), targets)
        return proposals, losses

    @torch.no_grad()
    def select_proposals(self, anchors: List[torch.Tensor], logits: List[torch.Tensor], deltas: List[torch.Tensor],
                         image_sizes: Sequence[ImageSize]) -> List[torch.Tensor]:
        pre_k = self.pre_nms_topk[0 if self.training else 1]
        post_k = self.post_nms_topk[0 if self.training else 1]
        # Top-k per level over the whole batch at once, then decode only those anchors.
        scores, boxes, levels = [], [], []
        for level, (a, lg, d) in enumerate(zip(anchors, logits, deltas)):
            k = torch.sym_min(pre_k, lg.shape[1])  # symbolic under torch.export: no guard on the size
            top_scores, idx = lg.float().topk(k, dim=1)
            sel_deltas = torch.gather(d, 1, idx[..., None].expand(-1, -1, 4))
            sel_boxes = self.box_coder.decode(sel_deltas.reshape(-1, 4).float(), a[idx.reshape(-1)])
            scores.append(top_scores)
            boxes.append(sel_boxes.view(lg.shape[0], k, 4))
            levels.append(torch.full((k,), level, device=lg.device, dtype=torch.int64))
        scores = torch.cat(scores, 1)
        boxes = torch.cat(boxes, 1)
        levels = torch.cat(levels)
        proposals = []
        for i, size in enumerate(image_sizes):
            b = clip_boxes(boxes[i], size)
            s = scores[i]
            keep = nonempty_boxes(b, self.min_size) & torch.isfinite(s)
            if self.score_thresh > 0:
                keep &= torch.sigmoid(s) >= self.score_thresh
            b, s, lv = b[keep], s[keep], levels[keep]
            keep = batched_nms(b, s, lv, self.nms_thresh, max_keep=post_k)  # NMS per level, as torchvision
            proposals.append(b[keep])
        return proposals

    def losses(self, anchors: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor,
               targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Objectness BCE over the sampled anchors and smooth L1 on the positives' deltas, both
        normalised by the number of sampled anchors (the paper's 1/N_cls; its lambda=10 with
        N_reg ~ 2400 amounts to about the same weight)."""
        sampled_pos, sampled_neg, box_targets = [], [], []
        for i, t in enumerate(targets):
            labels, matched_boxes = self.label_anchors(anchors, t)
            pos, neg = self.sampler(labels)
            sampled_pos.append(pos + i * anchors.shape[0])
            sampled_neg.append(neg + i * anchors.shape[0])
            box_targets.append(self.box_coder.encode(anchors[pos], matched_boxes[pos]))
        pos = torch.cat(sampled_pos)
        neg = torch.cat(sampled_neg)
        num_sampled = max(pos.numel() + neg.numel(), 1)
        flat_logits = logits.reshape(-1)
        sampled = torch.cat([pos, neg])
        cls_targets = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(flat_logits.dtype)
        loss_cls = F.binary_cross_entropy_with_logits(flat_logits[sampled], cls_targets, reduction="sum") / num_sampled
        pred = deltas.reshape(-1, 4)[pos].float()
        loss_box = F.smooth_l1_loss(pred, torch.cat(box_targets), beta=self.smooth_l1_beta,
                                    reduction="sum") / num_sampled
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}

    @torch.no_grad()
    def label_anchors(self, anchors: torch.Tensor, target: Dict[str, torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Matcher labels ``(N,)`` (1 / 0 / -1) and each anchor's matched box ``(N, 4)``.

        Anchors whose best ground truth is an ``ignore`` box (crowd, difficult) are ignored, not
        used as positives nor as negatives.
        """
        gt = target["boxes"].to(anchors.device)
        if gt.numel() == 0:
            labels = anchors.new_zeros(anchors.shape[0], dtype=torch.int8)
            return labels, torch.zeros_like(anchors)
        matches, labels = self.matcher.match_boxes(gt, anchors, target.get("ignore"))
        return labels, gt[matches]
