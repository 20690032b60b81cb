"""Prune a trained checkpoint (``tools/compress.py prune``): weight, unit or Fisher pruning, one-shot
or gradually while fine-tuning, written as a checkpoint every tool loads.

One-shot (no fine-tuning): the weights or units are ranked once and removed (Fisher and activation
scores come from ``score_batches`` training batches, forward and backward, no update). With
``finetune_minutes``, the training loop of :mod:`detect.training.trainer` runs on the checkpoint's
training data at a cosine-decaying learning rate while the sparsity follows Zhu & Gupta's cubic
schedule over the first ``prune_end`` of the budget (``prune_steps`` steps), then holds: weight masks
are re-applied after every step, pruned units stay zeroed; units are removed physically at the end.
Fisher scores are accumulated between two pruning steps and start again after each (Theis et al.: a
removal changes what the others are worth).

What is written: the model, its config with the new widths (``model.roi_head.fc_units``, or R-CNN's
``model.rcnn.fc_dim``), and ``pruning``, the list of the pruning runs it went through; weight-pruned
tensors are stored packed (:func:`detect.checkpoint.storage.pack_sparse`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from detect.checkpoint.storage import load_checkpoint, pack_sparse, save_checkpoint
from detect.inference.loading import load_model
from detect.training.trainer import Trainer
from detect.compression import PRUNE_METHODS, UNIT_CRITERIA
from detect.errors import ConfigError
from detect.training.rcnn_phases import run_after_training
from detect.models.pruning import (UnitMasks, cubic_sparsity, lowest, magnitude_masks, remove_units, unit_layers,
                                 weight_norm_scores, weight_targets)

logger = logging.getLogger(__name__)



@dataclass
class PruneSpec:
    """What to prune and how (``tools/compress.py prune``'s options)."""

    method: str
    sparsity: float                       # share of the weights (weight) or of each layer's units removed
    layers: Sequence[str] = ()            # () = the fully connected layers (fc6 / fc7, R-CNN's fc)
    scope: str = "layer"                  # weight pruning: per tensor, or "global" over the layers
    criterion: str = "l2"                 # unit pruning: l2 | l1 | activation
    finetune_minutes: float = 0.0
    lr: Optional[float] = None            # fine-tuning's first learning rate (default train.lr * train.gamma)
    score_batches: int = 20               # one-shot activation / Fisher scores: training batches
    prune_end: float = 0.75               # the schedule reaches the sparsity at this share of the budget
    prune_steps: int = 10

    def check(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"pruning method must be one of {', '.join(PRUNE_METHODS)}, not {self.method!r}")
        if not 0.0 < float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be between 0 and 1 (exclusive): the share removed, got {self.sparsity}")
        if self.method == "unit" and self.criterion not in UNIT_CRITERIA:
            raise ConfigError(f"unit pruning criterion must be one of {', '.join(UNIT_CRITERIA)}, not {self.criterion!r}")
        if self.finetune_minutes < 0:
            raise ConfigError(f"fine-tuning minutes must be >= 0, got {self.finetune_minutes}")
        if not 0.0 < self.prune_end <= 1.0 or self.prune_steps < 1:
            raise ConfigError(f"the schedule needs 0 < prune_end <= 1 and prune_steps >= 1 "
                              f"(got {self.prune_end}, {self.prune_steps})")


class WeightPruner:
    """Magnitude masks on the weights of ``modules`` (path -> Linear / Conv2d)."""

    def __init__(self, modules: Dict[str, torch.nn.Module], scope: str):
        self.modules, self.scope = modules, scope
        self.masks: Dict[str, torch.Tensor] = {}

    def zero_share(self) -> float:
        zeros = sum(int((m.weight == 0).sum()) for m in self.modules.values())
        return zeros / max(sum(m.weight.numel() for m in self.modules.values()), 1)

    def apply(self, sparsity: float) -> None:
        if sparsity <= 0:
            return
        self.masks = magnitude_masks({p: m.weight for p, m in self.modules.items()}, sparsity, self.scope)
        self.after_step()

    @torch.no_grad()
    def after_step(self) -> None:
        for path, mask in self.masks.items():
            self.modules[path].weight.mul_(mask)

    def finish(self) -> Dict[str, Any]:
        self.after_step()
        return {p: {"weights": m.weight.numel(), "zero": int((m.weight == 0).sum())} for p, m in self.modules.items()}


class UnitPruner:
    """Units of the fully connected layers ``aliases``, zeroed by masks, removed by ``finish``."""

    def __init__(self, model: torch.nn.Module, aliases: Sequence[str], criterion: str):
        self.units = {a: unit_layers(model)[a] for a in aliases}
        self.criterion = criterion
        self.widths = {a: u.layer.out_features for a, u in self.units.items()}
        self.masks = UnitMasks(self.units, score=criterion if criterion in ("activation", "fisher") else None)

    def __enter__(self) -> "UnitPruner":
        self.masks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.masks.__exit__(*exc)

    def scores(self, alias: str) -> torch.Tensor:
        if self.criterion in ("l1", "l2"):
            return weight_norm_scores(self.units[alias], 1 if self.criterion == "l1" else 2)
        if self.masks.count[alias] == 0:
            raise RuntimeError(f"no {self.criterion} statistics gathered for {alias}: no training RoI went through it")
        return self.masks.mean_scores(alias)

    def apply(self, sparsity: float) -> None:
        """Zero the lowest-scored live units until ``round(sparsity * width)`` of each layer are gone."""
        for alias, unit in self.units.items():
            mask = self.masks.masks[alias]
            need = int(round(sparsity * self.widths[alias])) - int((mask == 0).sum())
            if need > 0:
                mask[lowest(self.scores(alias), need, alive=mask > 0).to(mask.device)] = 0.0
        self.masks.reset_scores()

    def after_step(self) -> None:
        pass

    def finish(self) -> Dict[str, Any]:
        out = {}
        for alias, unit in self.units.items():
            keep = torch.nonzero(self.masks.masks[alias].cpu() > 0).flatten()
            remove_units(unit, keep)
            out[alias] = {"units": self.widths[alias], "kept": int(keep.numel())}
        return out


def _check_layers(model: torch.nn.Module, spec: PruneSpec, cfg, checkpoint) -> List[str]:
    units = unit_layers(model)
    layers = list(spec.layers) or list(units)
    if not layers:
        why = (f"its box head is factorised by truncated SVD (svd_ranks {list(cfg.model.roi_head.svd_ranks)}): prune "
               f"before compressing" if list(getattr(cfg.model.roi_head, "svd_ranks", [])) else
               "the model has no fully connected head (box_head=res5?)")
        raise ConfigError(f"{checkpoint}: no fully connected layer to prune: {why}; weight pruning takes --layers "
                          f"with module paths")
    if spec.method == "weight":
        weight_targets(model, layers)  # refuses unknown names with the list
        return layers
    unknown = [n for n in layers if n not in units]
    if unknown:
        raise ConfigError(f"{spec.method} pruning removes units of {', '.join(units) or 'no layer of this model'}; "
                          f"not of {', '.join(map(repr, unknown))}")
    for alias in layers:
        width = units[alias].layer.out_features
        removed = int(round(spec.sparsity * width))
        if removed >= width:
            raise ConfigError(f"sparsity {spec.sparsity:g} removes every unit of {alias} ({width}): keep at least one")
        if removed == 0:
            raise ConfigError(f"sparsity {spec.sparsity:g} removes no unit of {alias} ({width} units)")
    return layers


def _training_cfg(cfg, spec: PruneSpec):
    t = copy.deepcopy(cfg)
    t.model.weights = ""  # the checkpoint's weights are the start, not a transfer source
    t.train.ema = 0.0     # masks and an average of unmasked weights do not mix
    t.train.max_minutes = max(spec.finetune_minutes, 1e-6)
    t.train.max_iter = 10 ** 9
    return t


def _score_one_shot(model, trainer, pruner: UnitPruner, batches: int) -> None:
    """Activation / Fisher statistics over ``batches`` training batches (forward and backward, no update)."""
    loader = iter(trainer._loader())
    model.train()
    for _ in range(batches):
        sum(trainer.forward_losses(*next(loader)).values()).backward()
        model.zero_grad(set_to_none=True)


def _finetune(model, cfg, trainer, pruner, spec: PruneSpec, workdir: Path, progress: bool) -> Dict[str, Any]:
    """Fine-tune for ``spec.finetune_minutes`` while the sparsity follows the cubic schedule."""
    lr0 = spec.lr if spec.lr is not None else cfg.train.lr * cfg.train.gamma
    loader = iter(trainer._loader())
    model.train()
    start, iterations, current = time.perf_counter(), 0, None
    budget = 60.0 * spec.finetune_minutes
    while True:
        done = (time.perf_counter() - start) / budget
        if done >= 1.0:
            break
        target = cubic_sparsity(done, spec.sparsity, end=spec.prune_end, steps=spec.prune_steps)
        if target != current:
            pruner.apply(target)
            current = target
        images, targets = next(loader)
        trainer.run_step(images, targets, lr0 * 0.5 * (1.0 + math.cos(math.pi * done)))
        pruner.after_step()
        iterations += 1
    if iterations == 0 and isinstance(pruner, UnitPruner) and pruner.masks.score:  # a budget shorter than one step
        _score_one_shot(model, trainer, pruner, spec.score_batches)
    pruner.apply(spec.sparsity)  # a budget too short for the schedule still ends at the sparsity asked for
    # R-CNN: its SVMs and box regressors read the changed features
    run_after_training(trainer.stage, model, trainer.cfg, workdir, trainer.device, progress)
    return {"iterations": iterations, "seconds": round(time.perf_counter() - start, 1), "lr": lr0}


def prune_model(model: torch.nn.Module, cfg, spec: PruneSpec, checkpoint="checkpoint", progress: bool = False) -> Dict[str, Any]:
    """Prune ``model`` (built from ``cfg``) in place as ``spec`` says; fills ``cfg`` with the new
    widths. Returns what was done: per layer the weights zeroed or units kept, fine-tuning figures."""
    spec.check()
    layers = _check_layers(model, spec, cfg, checkpoint)
    if spec.method == "weight":
        pruner = WeightPruner(weight_targets(model, layers), spec.scope)
        already = pruner.zero_share()
        if already >= spec.sparsity:
            raise ConfigError(f"{checkpoint}: {', '.join(layers)} already {already:.1%} zero: ask for a sparsity above it")
    else:
        pruner = UnitPruner(model, layers, "fisher" if spec.method == "fisher" else spec.criterion)
    needs_data = spec.finetune_minutes > 0 or (spec.method != "weight" and pruner.criterion in ("activation", "fisher"))
    workdir = Path(tempfile.mkdtemp(prefix="detect-prune-"))
    info: Dict[str, Any] = {}
    try:
        trainer = Trainer(_training_cfg(cfg, spec), workdir, progress=False, model=model) if needs_data else None
        with pruner if isinstance(pruner, UnitPruner) else contextlib.nullcontext():
            if spec.finetune_minutes > 0:
                info["finetune"] = _finetune(model, cfg, trainer, pruner, spec, workdir, progress)
            else:
                if trainer is not None:
                    _score_one_shot(model, trainer, pruner, spec.score_batches)
                pruner.apply(spec.sparsity)
            info["layers"] = pruner.finish()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    model.eval()
    widths = {a: u.layer.out_features for a, u in unit_layers(model).items()}
    if "fc" in widths:
        cfg.model.rcnn.fc_dim = widths["fc"]
    elif "fc6" in widths and (widths["fc6"] != cfg.model.roi_head.fc_dim or widths["fc7"] != cfg.model.roi_head.fc_dim):
        cfg.model.roi_head.fc_units = [widths["fc6"], widths["fc7"]]
    return info


def prune_checkpoint(checkpoint, spec: PruneSpec, output, overrides=(), progress: bool = False) -> Dict[str, Any]:
    """Write ``output``: ``checkpoint`` pruned as ``spec`` says. Returns the original and pruned
    models, the config and what was done (``info``)."""
    state = load_checkpoint(checkpoint)
    model, cfg = load_model(checkpoint, overrides=overrides)
    original = copy.deepcopy(model)
    info = prune_model(model, cfg, spec, checkpoint, progress)
    history = list(state.get("pruning") or []) + [{**asdict(spec), "layers": list(info["layers"]), "from": str(checkpoint),
                                                   **({"finetune": info["finetune"]} if "finetune" in info else {})}]
    packed = pack_sparse(model.state_dict())  # weight-pruned tensors (of this run or an earlier one) packed
    save_checkpoint(output, {"model": packed["model"], **({"sparse": packed["sparse"]} if packed["sparse"] else {}),
                             "config": cfg.to_dict(), "class_names": list(cfg.data.classes), "pruning": history})
    return {"original": original, "pruned": model, "config": cfg, "info": info}
