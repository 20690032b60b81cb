"""Proposals given from outside the network (Fast R-CNN, R-CNN): computed when missing, then cleaned."""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detect.ops import clip_boxes, nonempty_boxes


@torch.no_grad()
def search_images(images: Sequence[torch.Tensor], mode: str, seed: int,
                  max_side: Optional[int]) -> Tuple[List[torch.Tensor], float]:
    """Selective search on each ``3xHxW`` image in [0, 1] as passed; ``(P, 4)`` boxes each, and seconds."""
    from detect.proposals import selective_search

    start = time.perf_counter()
    out = []
    for im in images:
        rgb = (im.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        out.append(torch.from_numpy(selective_search(np.ascontiguousarray(rgb), mode=mode, seed=seed,
                                                     max_side=max_side)))
    return out, time.perf_counter() - start


def prepare_proposals(proposals: Sequence[torch.Tensor], sizes: Sequence[Tuple[int, int]], device,
                      topk: int) -> List[torch.Tensor]:
    """The best ``topk`` per image, on ``device``, clipped, empty boxes dropped; an image left
    without any gets the whole image (so every image yields a prediction or a loss)."""
    out = []
    for props, (h, w) in zip(proposals, sizes):
        props = torch.as_tensor(props, dtype=torch.float32, device=device).reshape(-1, 4)[:topk]
        props = clip_boxes(props, (h, w))
        props = props[nonempty_boxes(props)]
        if props.numel() == 0:
            props = torch.tensor([[0.0, 0.0, float(w), float(h)]], device=device)
        out.append(props)
    return out


def forward_proposals(model, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]],
                      proposals: Optional[List[torch.Tensor]]) -> Tuple[List[torch.Tensor], List[Tuple[int, int]]]:
    """The proposals one forward of a Fast R-CNN or R-CNN ``model`` uses, and the image sizes.

    Given ``proposals`` first, else the targets' (the training data path attaches them), else, at
    inference only, selective search with the model's settings (its time lands in
    ``model.last_proposal_seconds``). Cleaned by :func:`prepare_proposals` with the model's top-k.
    """
    name = type(model).__name__
    if model.training and targets is None:
        raise ValueError(f"{name} in training mode needs targets (call model.eval() for inference)")
    if proposals is None and targets is not None and all("proposals" in t for t in targets):
        proposals = [t["proposals"] for t in targets]
    model.last_proposal_seconds = 0.0
    if proposals is None:
        if model.training:
            raise ValueError(f"{name} training needs proposals: each target's 'proposals' "
                             "(set data.train.proposals to a file made by tools/proposals.py)")
        proposals, model.last_proposal_seconds = search_images(
            images, model.proposal_mode, model.proposal_seed, model.proposal_max_side)
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    topk = model.topk[0 if model.training else 1]
    return prepare_proposals(proposals, sizes, images[0].device, topk), sizes
