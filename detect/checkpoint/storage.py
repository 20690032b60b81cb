"""Checkpoints: written atomically, read without running code.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` can read it: a checkpoint file cannot execute anything when loaded. It is
written to a temporary file in the same folder, flushed to disk, then renamed over the target, so
a run killed at any moment leaves either the old file or the new one, never half of one.

Here too: the check that a checkpoint fits a config, building a model from a checkpoint
(``model_from_checkpoint``), and starting from another run's weights (``load_transfer_weights``).
"""
from __future__ import annotations

import copy
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

import detect
from detect.errors import CheckpointError
from detect.utils.atomic import write_text_atomic

logger = logging.getLogger(__name__)

FORMAT = "detect-checkpoint-v1"
LAST_CHECKPOINT = "last_checkpoint"


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
        raise CheckpointError(f"{path}: not a readable detect checkpoint: {_why_unreadable(path, e)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (found {found!r}); it may come from another "
                              f"version of detect or another library")
    if "sparse" in state:  # weight-pruned tensors, stored packed (pack_sparse)
        try:
            state["model"].update({name: unpack_sparse(entry) for name, entry in state.pop("sparse").items()})
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its sparse (pruned) weights are damaged: {e}") from None
    return state


def pack_sparse(weights: Dict[str, torch.Tensor], min_zero_share: float = 0.25) -> Dict[str, Any]:
    """Split a state dict: tensors at least ``min_zero_share`` zero (weight pruning) are packed as a
    bit mask of the nonzeros and their values, ``n / 8 + 4 nnz`` bytes instead of ``4 n``; returns
    ``{"model": the others, "sparse": the packed}``, which :func:`load_checkpoint` puts back together."""
    dense, sparse = {}, {}
    for name, t in weights.items():
        if t.is_floating_point() and t.numel() >= 64 and float((t == 0).float().mean()) >= min_zero_share:
            flat = t.detach().cpu().flatten()
            nonzero = flat != 0
            sparse[name] = {"shape": list(t.shape), "mask": torch.from_numpy(np.packbits(nonzero.numpy())),
                            "values": flat[nonzero].clone()}
        else:
            dense[name] = t
    return {"model": dense, "sparse": sparse}


def unpack_sparse(entry: Dict[str, Any]) -> torch.Tensor:
    shape = [int(s) for s in entry["shape"]]
    n = int(np.prod(shape))
    nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=n).astype(bool))
    values = entry["values"]
    if int(nonzero.sum()) != values.numel():
        raise ValueError(f"{int(nonzero.sum())} nonzero positions for {values.numel()} values")
    out = values.new_zeros(n)
    out[nonzero] = values
    return out.view(shape)


def check_checkpoint_matches(state: Dict[str, Any], cfg, path) -> None:
    """Refuse a checkpoint made for another model (type, backbone, classes) with a clear message."""
    saved = state.get("config", {}).get("model", {})
    ours = cfg.model
    problems = []
    if saved.get("type") != ours.type:
        problems.append(f"model type {saved.get('type')!r} (config: {ours.type!r})")
    for key in ("name", "fpn"):
        if saved.get("backbone", {}).get(key) != ours.backbone[key]:
            problems.append(f"backbone {key} {saved.get('backbone', {}).get(key)!r} (config: {ours.backbone[key]!r})")
    names = state.get("class_names", [])
    if list(names) != list(cfg.data.classes):
        problems.append(f"{len(names)} classes {list(names)} (config: {len(cfg.data.classes)} {list(cfg.data.classes)})")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the config: it has " + "; ".join(problems))


def config_differences(saved: Any, ours: Any, prefix: str) -> List[str]:
    """``"key: A in the checkpoint, B now"`` for every leaf where two config trees differ."""
    if isinstance(saved, dict) and isinstance(ours, dict):
        out: List[str] = []
        for key in sorted(set(saved) | set(ours)):
            out += config_differences(saved.get(key), ours.get(key), f"{prefix}.{key}")
        return out
    return [] if saved == ours else [f"{prefix}: {saved!r} in the checkpoint, {ours!r} now"]


def _why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in the user's terms (PyTorch's own message
    suggests ``weights_only=False``: wrong for a corrupt file, and unsafe for an untrusted one)."""
    with open(path, "rb") as f:
        head = f.read(4)
    text = str(error)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):  # torch.save's zip format
        if "Weights only load failed" in text:
            return ("it holds Python objects besides tensors and plain values, which could run code when loaded; "
                    "refused (detect's checkpoints never hold any)")
        return ("the file is truncated or corrupt (its zip archive cannot be read); detect writes a checkpoint "
                "whole or not at all, so this one was damaged or cut after it was written")
    if head[:1] == b"\x80":  # a pickle of the legacy format
        return "a legacy pickled file, not a detect checkpoint; refused, since unpickling it could run code"
    return "not a PyTorch checkpoint at all (the file does not start like one)"


def model_weights(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights to run a checkpoint with: the moving average when training kept one (``train.ema``)."""
    return state["ema"]["weights"] if "ema" in state else state["model"]


def write_last_checkpoint(folder: Union[str, Path], name: str) -> None:
    write_text_atomic(Path(folder) / LAST_CHECKPOINT, name + "\n")


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


def model_from_checkpoint(path: Union[str, Path], config: Optional[Union[str, Path]] = None, overrides=(),
               device: Union[str, torch.device] = "cpu"):
    """A model ready for inference from a checkpoint alone: its config and class names are inside.

    ``config`` (a file) replaces the stored config; ``overrides`` apply on top either way (e.g. a test
    set's path). Returns ``(model, cfg)``; the model is in eval mode on ``device``.
    (``detect.inference.load_model`` takes exported ``.onnx`` files too.)
    """
    from detect.config import apply_overrides, config_from_dict, load_config
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
        # the defaults first (the stored config stays as saved, for the match check below): a
        # checkpoint written before a key existed still takes that key as an override
        data = config_from_dict(copy.deepcopy(raw), source=f"config stored in {path}").to_dict()
        apply_overrides(data, overrides)
        cfg = config_from_dict(data, source=f"config stored in {path}")
    if not cfg.data.classes:
        cfg.data.classes = list(state.get("class_names") or [])
    check_checkpoint_matches(state, cfg, path)
    model = build_model(cfg, backbone_weights=False)  # the checkpoint's weights replace them
    try:
        missing, unexpected = model.load_state_dict(model_weights(state), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the model built from the config: "
                              f"{' '.join(str(e).split())[:400]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model built from its config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), cfg


def load_transfer_weights(model: torch.nn.Module, path: str) -> Dict[str, List[str]]:
    """Start from another detection checkpoint: every tensor whose name and shape match is loaded;
    the rest (the classifier and box layers when the classes differ) keep their fresh initialisation."""
    state = model_weights(load_checkpoint(path))
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loaded, strict=False)
    report = {"loaded": sorted(loaded), "reinitialised": sorted(k for k in own if k not in loaded),
              "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad)}
    logger.info("transfer from %s: %d tensors loaded, %d re-initialised (%s), %d parameters frozen", path,
                len(report["loaded"]), len(report["reinitialised"]), ", ".join(report["reinitialised"]) or "none",
                len(report["frozen"]))
    return report
