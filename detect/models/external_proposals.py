"""Proposals given from outside the network (Fast R-CNN, R-CNN): computed when missing, then cleaned."""
from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from detect.ops import clip_boxes


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
        props = props[(props[:, 2] > props[:, 0]) & (props[:, 3] > props[:, 1])]
        if props.numel() == 0:
            props = torch.tensor([[0.0, 0.0, float(w), float(h)]], device=device)
        out.append(props)
    return out
