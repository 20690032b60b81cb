"""Truncated SVD of fully connected layers for faster testing (Fast R-CNN, section 3.1).

A ``u x v`` weight matrix ``W`` is approximated by ``U_t diag(S_t) V_t^T`` with its ``t`` largest
singular values, so one layer of ``u v`` multiply-adds becomes two of ``t (u + v)``: the first
without bias (``diag(S_t) V_t^T``), the second with ``U_t`` and the original bias. With ``t`` equal
to the full rank the outputs are unchanged up to rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def low_rank_linear(in_features: int, out_features: int, rank: int) -> nn.Sequential:
    """The two-layer shape of a rank-``rank`` factorised ``nn.Linear`` (weights set by ``truncate``)."""
    rank = min(rank, in_features, out_features)
    return nn.Sequential(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features))


@torch.no_grad()
def truncate(linear: nn.Linear, rank: int) -> nn.Sequential:
    """``linear`` replaced by its rank-``rank`` truncated SVD (float64 decomposition for accuracy)."""
    weight = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    out = low_rank_linear(linear.in_features, linear.out_features, rank).to(linear.weight.device)
    t = out[0].out_features
    out[0].weight.copy_((s[:t, None] * vh[:t]).to(linear.weight.dtype))
    out[1].weight.copy_(u[:, :t].to(linear.weight.dtype))
    if linear.bias is not None:
        out[1].bias.copy_(linear.bias)
    else:
        out[1].bias.zero_()
    return out


def compress_box_head(box_head: nn.Module, ranks: Sequence[int]) -> nn.Module:
    """Replace ``fc6`` / ``fc7`` of a :class:`~detect.models.roi_head.TwoFCHead` by truncated SVDs.

    ``ranks``: ``[fc6_rank, fc7_rank]`` (0 keeps that layer as it is). Returns the same module.
    """
    if not hasattr(box_head, "fc6"):
        raise ValueError("truncated SVD applies to the two fully connected layers (model.roi_head.box_head=fc)")
    for name, rank in zip(("fc6", "fc7"), ranks):
        layer = getattr(box_head, name)
        if rank > 0 and isinstance(layer, nn.Linear):
            setattr(box_head, name, truncate(layer, rank))
    return box_head


def factorise_box_head_shapes(box_head: nn.Module, ranks: Sequence[int]) -> nn.Module:
    """Give a freshly built head the compressed layers' shapes, so a compressed checkpoint loads."""
    for name, rank in zip(("fc6", "fc7"), ranks):
        layer = getattr(box_head, name)
        if rank > 0 and isinstance(layer, nn.Linear):
            setattr(box_head, name, low_rank_linear(layer.in_features, layer.out_features, rank))
    return box_head
