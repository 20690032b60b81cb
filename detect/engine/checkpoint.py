"""Checkpoints: written atomically, read without running code.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` can read it: a checkpoint file cannot execute anything when loaded. It is
written to a temporary file in the same folder, flushed to disk, then renamed over the target, so
a run killed at any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

import detect

FORMAT = "detect-checkpoint-v1"
LAST_CHECKPOINT = "last_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, another format, or another model."""


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version tags) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "detect_version": detect.__version__, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``), with clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip files, foreign objects refused by weights_only
        raise CheckpointError(f"{path}: not a readable detect checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (found {found!r}); it may come from another "
                              f"version of detect or another library")
    return state


def model_weights(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights to run a checkpoint with: the moving average when training kept one (``train.ema``)."""
    return state["ema"]["weights"] if "ema" in state else state["model"]


def write_last_checkpoint(folder: Union[str, Path], name: str) -> None:
    folder = Path(folder)
    tmp = folder / f".{LAST_CHECKPOINT}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, folder / LAST_CHECKPOINT)


def find_last_checkpoint(folder: Union[str, Path]) -> Optional[Path]:
    """The checkpoint named in ``folder/last_checkpoint``, if any."""
    marker = Path(folder) / LAST_CHECKPOINT
    if not marker.is_file():
        return None
    path = Path(folder) / marker.read_text().strip()
    return path if path.is_file() else None


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_model(path: Union[str, Path], config: Optional[Union[str, Path]] = None, overrides=(),
               device: Union[str, torch.device] = "cpu"):
    """A model ready for inference from a checkpoint alone: its config and class names are inside.

    ``config`` (a file) replaces the stored config; ``overrides`` apply on top either way (e.g. a test
    set's path). Returns ``(model, cfg)``; the model is in eval mode on ``device``.
    """
    from detect.config import apply_overrides, config_from_dict, load_config
    from detect.engine.trainer import check_checkpoint_matches
    from detect.models import build_model

    state = load_checkpoint(path)
    if config is not None:
        cfg = load_config(config, overrides)
        stored = (state.get("config") or {}).get("model", {}).get("rpn", {})
        for key in ("anchor_sizes", "aspect_ratios"):  # "auto" in a file: the anchors fitted in training
            if cfg.model.rpn[key] == "auto" and key in stored:
                cfg.model.rpn[key] = stored[key]
    else:
        raw = state.get("config")
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: the checkpoint holds no config; pass --config")
        data = copy.deepcopy(raw)  # the stored config stays as saved, for the match check below
        apply_overrides(data, overrides)
        cfg = config_from_dict(data, source=f"config stored in {path}")
    if not cfg.data.classes:
        cfg.data.classes = list(state.get("class_names") or [])
    try:
        check_checkpoint_matches(state, cfg, path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(cfg)
    try:
        missing, unexpected = model.load_state_dict(model_weights(state), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the model built from the config: "
                              f"{' '.join(str(e).split())[:400]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model built from its config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), cfg
