"""Validation during training: when to evaluate, the best checkpoint, and when to stop early.

``train.eval_period`` counts iterations, or minutes under a wall-clock budget (``train.max_minutes``);
each evaluation scores ``data.val`` (else ``data.test``), its first ``train.eval_images`` images
when set. ``model_best.pth`` is the checkpoint of the evaluation with the best ``train.best_metric``
(AP by default); ``train.patience`` stops the run after that many evaluations without a better one.
Everything here is part of a checkpoint's state, so a resumed run keeps the best value, its
iteration and the patience count exactly.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from detect.config import Config
from detect.errors import ConfigError

BEST_CHECKPOINT = "model_best.pth"


def validation_subset(cfg: Config) -> Optional[str]:
    """``"val"`` when ``data.val`` names a dataset, else ``"test"`` when ``data.test`` does, else None."""
    for subset in ("val", "test"):
        spec = cfg.data[subset]
        if spec.ann_file or spec.root:
            return subset
    return None


def check_validation_config(cfg: Config) -> None:
    """The settings that cannot work, each one line before anything is written."""
    t = cfg.train
    if t.patience and not t.eval_period:
        raise ConfigError(f"train.patience={t.patience} needs train.eval_period (evaluations to count)")
    if not t.eval_period:
        return
    if t.max_minutes > 0 and t.eval_period > t.max_minutes:
        raise ConfigError(f"train.eval_period={t.eval_period:g} minutes is longer than the run "
                          f"(train.max_minutes={t.max_minutes:g}): it would never evaluate")
    if t.max_minutes <= 0:
        if t.eval_period != int(t.eval_period):
            raise ConfigError(f"train.eval_period={t.eval_period:g}: a number of iterations (minutes only under "
                              f"train.max_minutes)")
        if t.eval_period > t.max_iter:
            raise ConfigError(f"train.eval_period={int(t.eval_period)} iterations is longer than the run "
                              f"(train.max_iter={t.max_iter}): it would never evaluate")
    if validation_subset(cfg) is None:
        raise ConfigError("train.eval_period is set but there is no split to validate on: set data.val "
                          "(or data.test)")


class Validation:
    """The schedule of evaluations and the best so far (``state_dict`` goes into every checkpoint)."""

    def __init__(self, cfg: Config):
        self.period = float(cfg.train.eval_period)
        self.in_minutes = cfg.train.max_minutes > 0
        self.budget_s = 60.0 * cfg.train.max_minutes
        self.metric = cfg.train.best_metric
        self.patience = int(cfg.train.patience)
        self.done = 0                 # evaluations so far
        self.best = -math.inf
        self.best_iteration = -1
        self.since_best = 0           # evaluations since the best one
        # seconds the last evaluation took: under a time budget the run's clock counts them ahead while
        # another evaluation is due within the budget, so one due at the end fits inside it instead of
        # running past it
        self.reserve_s = 0.0

    @property
    def enabled(self) -> bool:
        return self.period > 0

    def due(self, iteration: int, elapsed: float) -> bool:
        """Whether an evaluation is due after ``iteration`` (``elapsed``: seconds of the budget spent)."""
        if not self.enabled:
            return False
        if self.in_minutes:
            return self.clock_s(elapsed) >= self._due_s(self.done + 1)
        return iteration % int(self.period) == 0

    def _due_s(self, n: int) -> float:
        """Seconds into a time budget at which the ``n``-th evaluation is due."""
        return n * self.period * 60.0

    def clock_s(self, elapsed: float) -> float:
        """A time budget's clock, ``elapsed`` seconds spent: while another evaluation is due within the
        budget, the last one's duration is counted ahead (so one due at the end fits inside it); once
        the evaluation due at the end has run, the whole budget (the run ends with the weights it
        scored, even when that evaluation was quicker than the one counted ahead)."""
        if not (self.in_minutes and self.enabled):
            return elapsed
        if self._due_s(self.done) >= self.budget_s - 1e-6:
            return max(elapsed, self.budget_s)
        return elapsed + (self.reserve_s if self._due_s(self.done + 1) <= self.budget_s + 1e-6 else 0.0)

    def took(self, seconds: float) -> None:
        """The last evaluation's duration: under a time budget, counted ahead of the clock from now on."""
        if self.in_minutes:
            self.reserve_s = float(seconds)

    def record(self, iteration: int, metrics: Dict[str, Any]) -> bool:
        """Count an evaluation; True when it is the best so far (``model_best.pth`` is then written)."""
        self.done += 1
        value = float(metrics["coco"][self.metric])
        if value > self.best:
            self.best, self.best_iteration, self.since_best = value, iteration, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def summary(self) -> Dict[str, Any]:
        return {"metric": self.metric, "value": self.best, "iteration": self.best_iteration,
                "checkpoint": BEST_CHECKPOINT if self.best_iteration >= 0 else None}

    def state_dict(self) -> Dict[str, Any]:
        return {"done": self.done, "best": self.best, "best_iteration": self.best_iteration,
                "since_best": self.since_best, "reserve_s": self.reserve_s}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.done, self.best = int(state["done"]), float(state["best"])
        self.best_iteration, self.since_best = int(state["best_iteration"]), int(state["since_best"])
        self.reserve_s = float(state.get("reserve_s", 0.0))  # checkpoints written before it: none


def validation_images(model, cfg: Config, subset: str, device, count: int = 4, score_thresh: float = 0.5):
    """The first ``count`` images of ``data.<subset>`` at the test size with the detections scoring at
    least ``score_thresh`` drawn (``HxWx3`` uint8 RGB): what TensorBoard shows at each evaluation."""
    import torch

    from detect.data.build import build_dataset
    from detect.data.collate import image_to_tensor
    from detect.data.transforms import build_transforms
    from detect.utils.visualize import draw_boxes

    dataset = build_dataset(cfg, subset, transforms=build_transforms(cfg, train=False), class_names=cfg.data.classes)
    model.eval()
    drawn = []
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            image, _ = dataset[index]
            det = model([image_to_tensor(image).to(device)])[0]
            keep = det["scores"] >= score_thresh
            drawn.append(draw_boxes(image, det["boxes"][keep].cpu().numpy(), det["labels"][keep].cpu().tolist(),
                                    dataset.class_names, det["scores"][keep].cpu().tolist()))
    return drawn
