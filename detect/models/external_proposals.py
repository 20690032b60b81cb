"""Proposals given from outside the network (Fast R-CNN, R-CNN): computed when missing, then cleaned."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detect.ops import clip_boxes, nonempty_boxes


def prepare_proposals(proposals: Sequence[torch.Tensor], sizes: Sequence[Tuple[int, int]], device,
                      topk: int) -> List[torch.Tensor]:
    """The best ``topk`` per image, on ``device``, clipped, empty boxes dropped; an image left
    without any gets the whole image (so every image yields a prediction or a loss)."""
    out = []
    for props, (h, w) in zip(proposals, sizes):
        props = torch.as_tensor(props, dtype=torch.float32, device=device).reshape(-1, 4)[:topk]
        props = clip_boxes(props, (h, w))
        props = props[nonempty_boxes(props)]
        # the whole image after the proposals, kept only when there are none: no branch on their
        # number, which an exported graph knows only when it runs
        whole = clip_boxes(props.new_tensor([[0.0, 0.0, 1e9, 1e9]]), (h, w))
        out.append(torch.cat([props, whole])[: torch.sym_max(props.shape[0], 1)])
    return out


class ExternalProposals(nn.Module):
    """The proposer of Fast R-CNN and R-CNN: proposals from outside the network, with the proposer
    contract of ``detect.models.two_stage`` (no losses).

    Taken from the ``proposals`` argument first, else the training targets' ``proposals`` (the data
    path attaches them from a proposals file), else, at inference only, from selective search on the
    images as passed. Cleaned by :func:`prepare_proposals` and cut to the best ``topk``.

    Args:
        mode, max_side, seed: selective search settings (``detect.proposals.selective_search``).
        topk_train, topk_test: best-ranked proposals kept per image.
    """

    # under test-time flip the mirror view takes these proposals mirrored: they belong to the image,
    # not to the network's view of it, and selective search runs once instead of twice
    mirrors_proposals = True

    def __init__(self, mode: str = "fast", max_side: Optional[int] = None, seed: int = 0,
                 topk_train: int = 2000, topk_test: int = 2000):
        super().__init__()
        self.mode = mode
        self.max_side = max_side
        self.seed = seed
        self.topk = (topk_train, topk_test)

    @torch.no_grad()
    def search(self, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Selective search with this proposer's settings on ``3xHxW`` images in [0, 1] as passed:
        ``(P, 4)`` boxes each, best first. (Callers time it from outside: ``timed_calls``.)"""
        from detect.proposals import selective_search

        out = []
        for im in images:
            rgb = (im.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            out.append(torch.from_numpy(selective_search(np.ascontiguousarray(rgb), mode=self.mode, seed=self.seed,
                                                         max_side=self.max_side)))
        return out

    def forward(self, features, image_sizes: Sequence[Tuple[int, int]],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None, images: Optional[List[torch.Tensor]] = None,
                proposals: Optional[List[torch.Tensor]] = None) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """Per-image proposals ``(R_i, 4)`` xyxy in the images' pixels, and no losses (``{}``)."""
        if proposals is None and targets is not None and all("proposals" in t for t in targets):
            proposals = [t["proposals"] for t in targets]
        if proposals is None:
            if self.training:
                raise ValueError("training on external proposals needs each target's 'proposals' "
                                 "(set data.train.proposals to a file made by tools/proposals.py)")
            if images is None:
                raise ValueError("no proposals given and no images to run selective search on")
            proposals = self.search(images)
        device = images[0].device if images else (features[0].device if features else None)
        return prepare_proposals(proposals, image_sizes, device, self.topk[0 if self.training else 1]), {}
