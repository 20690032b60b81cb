"""Giving a dataset its proposals from the file ``data.<split>.proposals`` names (Fast R-CNN, R-CNN)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from detect.errors import ProposalError
from detect.proposals.cache import search_settings, settings_text
from detect.proposals.files import load_proposals, record_rows

LOG = logging.getLogger(__name__)


def compute_command(which: str) -> str:
    return (f"python tools/proposals.py compute --config <your config> --split {which} "
            f"--output proposals/<name>.npz, then set data.{which}.proposals=proposals/<name>.npz")


def attach_proposals(dataset, cfg, which: str, topk: int, required: bool) -> bool:
    """Give every item of ``dataset`` its proposals from ``data.<which>.proposals`` (top ``topk``).

    Every image is looked up now, so a missing one fails before any training, naming the image and
    the command that computes the file. Without a file: an error when ``required`` (training),
    else False (inference then computes proposals on the fly).
    """
    path = cfg.data[which].proposals
    if not path:
        if required:
            raise ProposalError(f"data.{which}.proposals is not set: {cfg.model.type} trains on precomputed "
                                f"proposals. Compute them with: {compute_command(which)}")
        return False
    if not Path(path).is_file():
        raise ProposalError(f"data.{which}.proposals: {path}: proposals file not found. "
                            f"Compute it with: {compute_command(which)}")
    proposals = load_proposals(path)
    made = proposals.meta.get("settings")
    p = cfg.model.proposals
    wanted = search_settings(p.mode, p.seed, p.max_side or None)
    if made and made != wanted:  # a user's own JSON or .npz has no settings: nothing to compare
        LOG.warning("data.%s.proposals: %s was computed with other selective search settings (%s) than "
                    "model.proposals (%s); an image without a proposals file at test time gets proposals of the "
                    "config's kind, unlike the ones the model trained on. Recompute the file or set "
                    "model.proposals to match", which, path, settings_text(made), settings_text(wanted))
    index = record_rows(proposals, list(dataset.records), compute_command(which))
    offsets, boxes = proposals.offsets, proposals.boxes

    def lookup(i: int) -> np.ndarray:
        lo = offsets[index[i]]
        return boxes[lo:min(offsets[index[i] + 1], lo + topk)]

    dataset.set_proposals(lookup)
    LOG.info("%s: proposals from %s (%.0f per image on average, using the best %d)", dataset.description, path,
             len(boxes) / max(len(proposals), 1), topk)
    return True
