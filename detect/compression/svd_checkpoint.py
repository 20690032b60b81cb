"""Truncated-SVD compression of a trained checkpoint's box head, and what it buys at test time."""
from __future__ import annotations

import copy
import time
from typing import Any, Dict, Sequence

import torch

from detect.checkpoint.storage import save_checkpoint
from detect.inference.loading import load_model
from detect.errors import CheckpointError
from detect.models.svd import compress_box_head


def compress_checkpoint(checkpoint, ranks: Sequence[int], output, overrides=()) -> Dict[str, Any]:
    """Write ``output``: ``checkpoint`` with fc6 / fc7 replaced by rank-``ranks`` truncated SVDs.

    The stored config gets ``model.roi_head.svd_ranks`` so the compressed checkpoint loads (and is
    refused by nothing else) like any other. Returns the original and compressed models and config.
    """
    model, cfg = load_model(checkpoint, overrides=overrides)
    if list(cfg.model.roi_head.svd_ranks):
        raise CheckpointError(f"{checkpoint} is already compressed (svd_ranks={list(cfg.model.roi_head.svd_ranks)})")
    original = copy.deepcopy(model)
    compress_box_head(model.roi_head.box_head, list(ranks))
    cfg.model.roi_head.svd_ranks = [int(r) for r in ranks]
    save_checkpoint(output, {"model": model.state_dict(), "config": cfg.to_dict(),
                             "class_names": list(cfg.data.classes), "compressed_from": str(checkpoint)})
    return {"original": original, "compressed": model, "config": cfg}


@torch.no_grad()
def time_box_head(model: torch.nn.Module, num_rois: int = 2000, repeats: int = 5) -> float:
    """Seconds for the box head and predictor on ``num_rois`` pooled RoIs (the part SVD speeds up)."""
    head = model.roi_head
    fc6 = head.box_head.fc6
    in_features = fc6[0].in_features if isinstance(fc6, torch.nn.Sequential) else fc6.in_features
    x = torch.randn(num_rois, in_features)
    head.classify(x[:8])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        head.classify(x)
        best = min(best, time.perf_counter() - start)
    return best


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
