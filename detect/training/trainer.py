"""The training loop shared by every stage that trains end to end (Faster R-CNN, Fast R-CNN).

``train(cfg, output_dir)`` builds the datasets and the model from the config, then runs SGD with
momentum, linear warm-up and step or cosine decay. The schedule is a function of the run's progress,
``max(iteration / max_iter, budget_seconds / budget)``, so a wall-clock budget (``train.max_minutes``)
scales it like an iteration count does; the budget's seconds count the training steps and the
validations both, so a 15-minute run ends at 15 minutes with its schedule complete. A run folder holds:

    config.yaml  log.jsonl  results.csv  [TensorBoard events]  model_<iter>.pth  last_checkpoint
    model_best.pth (with train.eval_period)  model_final.pth  metrics.json  pr_curves.png  loss_curve.png

The records, validation and the bar have modules of their own (``records.py``, ``validation.py``,
``progress.py``); ``Trainer.run_step`` is one optimisation step and ``Trainer.train`` the loop.

``resume=True`` continues from ``last_checkpoint`` exactly: weights, optimizer, iteration, elapsed
time, RNG states, the best validation so far and the patience count, and the data stream (each
batch's images and augmentations are a function of the seed and the batch number, so the same
batches come whatever happened before).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detect.config import Config, save_config
from detect.data.build import build_dataset
from detect.data.collate import collate_detection
from detect.data.detection_dataset import DatasetError
from detect.data.image_io import ImageReadError
from detect.data.samplers import GroupedBatchSampler, InfiniteSampler, aspect_ratio_groups
from detect.data.transforms import build_transforms
from detect.data.workers import die_with_parent
from detect.training import distributed as dist
from detect.checkpoint.storage import (CheckpointError, check_checkpoint_matches, config_differences,
                                      find_last_checkpoint, load_checkpoint, load_transfer_weights,
                                      rng_state, save_checkpoint, set_rng_state, write_last_checkpoint)
from detect.utils.device import resolve_device
from detect.training.ema import WeightEMA
from detect.evaluation.metrics import evaluate, format_metrics  # evaluate: also imported from here by scripts
from detect.models import build_model
from detect.models.anchor_fit import is_auto, lost_boxes_advice, settle_anchors
from detect.models.registry import stage_of
from detect.proposals.attach import attach_proposals
from detect.training.progress import TrainingBar
from detect.training.rcnn_phases import run_after_training
from detect.training.records import RunRecords, check_loggers, trim_rows
from detect.training.validation import (BEST_CHECKPOINT, Validation, check_validation_config, validation_images,
                                        validation_subset)
from detect.utils.atomic import write_text_atomic
from detect.utils.output_dirs import TRAINING_OUTPUTS, claim_output_dir

logger = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite."""


def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SeededItems(Dataset):
    """Wraps a dataset so an item is asked for as ``(index, seed)``: the transform's random draws
    come from that seed, not from whichever worker process loads the item.

    An image that cannot be read is replaced by another of the set, drawn from the same seed (a
    resumed run makes the same replacement); the target then names the files replaced
    (``unreadable``) so that the training loop reports each once and counts them.
    """

    MAX_DRAWS = 20

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        unreadable: List[str] = []
        for draw in range(self.MAX_DRAWS):
            self.dataset.transforms.set_seed(seed)
            try:
                image, target = self.dataset[index]
            except ImageReadError as e:
                unreadable.append(str(e))
                index = int(np.random.default_rng([seed, draw]).integers(len(self.dataset)))
                continue
            if unreadable:
                target["unreadable"] = unreadable
            return image, target
        raise ImageReadError(f"{self.MAX_DRAWS} training images in a row could not be read", "; ".join(unreadable[:3]))


class SeededBatches:
    """Batches of ``(index, seed)`` from a batch sampler, starting at batch ``start`` (for resuming);
    the seed is a function of (base seed, rank, batch number, position)."""

    def __init__(self, batch_sampler, seed: int, rank: int, start: int = 0):
        self.batch_sampler, self.seed, self.rank, self.start = batch_sampler, seed, rank, start

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for number, batch in enumerate(self.batch_sampler):
            if number < self.start:
                continue
            yield [(index, int(np.random.SeedSequence([self.seed, self.rank, number, j]).generate_state(1)[0]))
                   for j, index in enumerate(batch)]


def lr_factor(cfg: Config, iteration: int, progress: float) -> float:
    """Warm-up times decay; ``progress`` in [0, 1] is the share of the run done."""
    t = cfg.train
    warm = 1.0
    if iteration < t.warmup_iters:
        alpha = iteration / t.warmup_iters
        warm = t.warmup_factor * (1 - alpha) + alpha
    if t.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm * t.gamma ** sum(progress >= s for s in t.steps)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW (``train.optimizer``); no weight decay on norm layers and biases
    (as detectron2)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum)


def loss_curve(log_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    its = [r["iteration"] for r in rows]
    for key in [k for k in rows[-1] if k.startswith("loss")]:
        ax.plot(its, [r.get(key, np.nan) for r in rows], label=key, linewidth=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


class Trainer:
    """One training run; see the module docstring."""

    def __init__(self, cfg: Config, output_dir, resume: bool = False, progress: bool = True,
                 model: Optional[torch.nn.Module] = None, overwrite: bool = False):
        # the run's own copy: classes and fitted anchors are written into it (and into config.yaml),
        # never into the caller's config
        self.cfg = cfg = copy.deepcopy(cfg)
        self.output_dir = Path(output_dir)
        self.progress = progress
        check_validation_config(cfg)  # settings that cannot work: one line each, before anything is written
        check_loggers(cfg.train.loggers)
        self.device = resolve_device(cfg.device)
        dist.init_distributed(self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        if dist.is_main():  # a finished run is never started over by accident (detect/utils/output_dirs.py)
            claim_output_dir(self.output_dir, TRAINING_OUTPUTS, "a training run", "--resume", resume=resume,
                             overwrite=overwrite)
        dist.barrier()
        self.stage = stage_of(cfg)  # an unknown model.type stops here, before the data is read
        if cfg.train.batch_size % self.world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by {self.world} processes")
        seed_all(cfg.train.seed)

        self.train_set = build_dataset(cfg, "train", transforms=build_transforms(cfg, train=True))
        if self.stage.external_proposals:
            attach_proposals(self.train_set, cfg, "train", cfg.model.proposals.topk_train, required=True)
        if not any(int((~r.ignore).sum()) for r in self.train_set.records):
            raise DatasetError(f"{self.train_set.description}: no box to learn from in {len(self.train_set)} images "
                               f"(no annotations, or every one dropped or ignored; tools/dataset.py stats lists them)")
        if not cfg.data.classes:
            cfg.data.classes = list(self.train_set.class_names)
        if self.stage.fits_anchors and model is None:
            self._settle_anchors(resume)
        for subset in ("val", "test"):  # fail at start, not after training
            if cfg.data[subset].ann_file or cfg.data[subset].root:
                held_out = build_dataset(cfg, subset, class_names=cfg.data.classes)
                if self.stage.external_proposals:
                    attach_proposals(held_out, cfg, subset, cfg.model.proposals.topk_test, required=False)

        # ``model`` lets a benchmark train another library's detector with the same data, schedule
        # and evaluation (anything taking images + targets and returning a loss dict).
        # resuming from a checkpoint, its weights replace the backbone's pretrained ones: those are not read
        resuming = resume and find_last_checkpoint(self.output_dir) is not None
        self.model = (model if model is not None else build_model(cfg, backbone_weights=not resuming)).to(self.device)
        if cfg.model.weights:
            load_transfer_weights(self.model, cfg.model.weights)
        self.optimizer = build_optimizer(cfg, self.model)
        self.ema = WeightEMA(self.model, cfg.train.ema) if cfg.train.ema > 0 else None
        self.use_amp = bool(cfg.train.amp) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.iteration = 0
        self.elapsed = 0.0  # seconds of the budget spent: training steps and evaluations
        self.unreadable: List[str] = []  # training images that could not be read (each reported once)
        self.last_checkpoint: Optional[Path] = None
        self.validation = Validation(cfg)
        if resume:
            self._resume()
        # the records hold each row once: none from after the checkpoint resumed from (main process only)
        self.records = RunRecords(self.output_dir, cfg.train.loggers, self.iteration if resuming else None) \
            if dist.is_main() else None
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if dist.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / "config.yaml")

    def _settle_anchors(self, resume: bool) -> None:
        """Fit ``auto`` anchors to the training boxes (resuming: take the ones the run started with),
        writing them into the config that config.yaml and every checkpoint store; report the share of
        boxes that no anchor reaches, with the fix, whether fitted or configured."""
        rpn = self.cfg.model.rpn
        saved = find_last_checkpoint(self.output_dir) if resume and is_auto(self.cfg) else None
        if saved is not None:
            stored = load_checkpoint(saved).get("config", {}).get("model", {}).get("rpn", {})
            rpn.anchor_sizes, rpn.aspect_ratios = stored["anchor_sizes"], stored["aspect_ratios"]
            logger.info("anchors of the run being resumed (%s): sizes %s, ratios %s", saved, rpn.anchor_sizes,
                        rpn.aspect_ratios)
            return
        auto = is_auto(self.cfg)
        fit = settle_anchors(self.cfg, self.train_set)
        if auto:
            logger.info("anchors fitted to the training boxes: sizes %s on strides %s, ratios (h/w) %s; best possible "
                        "recall %.3f (before fitting: %.3f)", rpn.anchor_sizes, fit["strides"], rpn.aspect_ratios,
                        fit["report"]["bpr"] or 0.0, fit["reports"]["current"]["bpr"] or 0.0)
        advice = lost_boxes_advice(fit["missed"], fitted=auto)  # the boxes likely missed (anchor_fit.MISSED_IOU)
        if advice:
            logger.warning("%s", advice)

    def _resume(self) -> None:
        path = find_last_checkpoint(self.output_dir)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return
        state = load_checkpoint(path)
        hint = (f"; --resume continues a run with the config it started with ({self.output_dir / 'config.yaml'}), "
                f"or choose another --output-dir")
        try:
            check_checkpoint_matches(state, self.cfg, path)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except CheckpointError as e:
            raise CheckpointError(f"{e}{hint}") from None
        except (RuntimeError, ValueError, KeyError):  # shapes or parameter groups of another model
            changed = config_differences(state.get("config", {}).get("model", {}), self.cfg.to_dict()["model"], "model")
            raise CheckpointError(f"{path} was made with another config ({'; '.join(changed[:6]) or 'other weights'})"
                                  f"{hint}") from None
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # model_final.pth: its weights already are the average
                self.ema = WeightEMA(self.model, self.cfg.train.ema)
        if "scaler" in state and self.use_amp:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
        if "validation" in state:
            self.validation.load_state_dict(state["validation"])
        per_rank = state.get("rng_per_rank") or []  # each process's own stream under DDP
        set_rng_state(per_rank[self.rank] if len(per_rank) == self.world else state["rng"])
        self.last_checkpoint = path
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        per_rank = cfg.train.batch_size // self.world
        sampler = InfiniteSampler(len(self.train_set), seed=cfg.train.seed, rank=self.rank, world_size=self.world)
        groups = aspect_ratio_groups([self.train_set.aspect_ratio(i) for i in range(len(self.train_set))])
        batches = SeededBatches(GroupedBatchSampler(sampler, groups, per_rank), cfg.train.seed, self.rank,
                                start=self.iteration)
        return DataLoader(SeededItems(self.train_set), batch_sampler=batches, collate_fn=collate_detection,
                          num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                          pin_memory=self.device.type == "cuda", worker_init_fn=die_with_parent)

    def progress_fraction(self) -> float:
        t = self.cfg.train
        p = self.iteration / max(t.max_iter, 1)
        if t.max_minutes > 0:  # evaluations due within the budget count on its clock (Validation.clock_s)
            p = max(p, self.validation.clock_s(self.elapsed) / (60.0 * t.max_minutes))
        return dist.all_reduce_max(p)  # ranks agree on when to stop

    def state(self, rng_per_rank: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_amp else {}, "iteration": self.iteration,
                "elapsed": self.elapsed, "rng": rng_state(), "config": self.cfg.to_dict(),
                **({"rng_per_rank": rng_per_rank} if rng_per_rank and len(rng_per_rank) > 1 else {}),
                "class_names": list(self.cfg.data.classes), "validation": self.validation.state_dict(),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def save(self, name: str, all_ranks: bool = True) -> None:
        """Write a checkpoint (rank 0); with ``all_ranks`` every process calls this and adds its RNG state."""
        rng_per_rank = dist.gather_objects(rng_state()) if self.world > 1 and all_ranks else None
        if dist.is_main():
            save_checkpoint(self.output_dir / name, self.state(rng_per_rank))
            write_last_checkpoint(self.output_dir, name)
        self.last_checkpoint = self.output_dir / name  # every rank names it in its messages

    def forward_losses(self, images: List[torch.Tensor], targets: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        """The model's training losses on a batch from the loader (unreadable images reported, tensors
        moved to the device, autocast as configured); no backward pass."""
        self._note_unreadable(targets)
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(self.device.type, enabled=self.use_amp):
            return self.ddp_model(images, targets)

    def run_step(self, images: List[torch.Tensor], targets: List[Dict[str, Any]], lr: float) -> Dict[str, float]:
        """One optimisation step on a batch at learning rate ``lr``; returns the losses (mean over the
        processes) by name, ``"loss"`` their sum. A loss that is not finite raises TrainingDiverged."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.forward_losses(images, targets)
        loss = sum(losses.values())
        # Averaged over the processes before the backward pass: a NaN on one rank reaches all of
        # them, so all stop here together instead of the others waiting in DDP's gradient all-reduce.
        logged = dist.all_reduce_mean(torch.stack([loss.detach()] + [v.detach() for v in losses.values()]).float())
        values = dict(zip(["loss"] + list(losses), logged.tolist()))
        if not torch.isfinite(logged).all():
            where = f" (mean over {self.world} processes)" if self.world > 1 else ""
            raise TrainingDiverged(f"iteration {self.iteration}: loss is not finite{where} {values}; "
                                   f"last good checkpoint: {self.last_checkpoint or 'none written yet'}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return values

    def train(self) -> Dict[str, Any]:
        """The loop: steps until the budget (iterations or minutes) is spent or patience runs out,
        logging, validations and checkpoints at their periods; then the final model, the stage's
        after-training phase and the final evaluation on the test split. Returns its metrics (empty
        without a test split)."""
        cfg = self.cfg
        model = self.ddp_model
        model.train()
        # Creating a DataLoader iterator draws a base seed from torch's global generator; keep that
        # draw out of the stream so a resumed run's RNG continues exactly where the checkpoint left it.
        rng_before = torch.get_rng_state()
        loader_iter = iter(self._loader())
        torch.set_rng_state(rng_before)
        self.bar = TrainingBar(cfg, self.iteration, self.elapsed, self.progress and dist.is_main())
        window: List[Dict[str, float]] = []
        images_seen, window_start = 0, time.perf_counter()
        while not self.validation.should_stop:
            progress = self.progress_fraction()
            if progress >= 1.0:
                break
            step_start = time.perf_counter()
            images, targets = next(loader_iter)
            factor = lr_factor(cfg, self.iteration, progress)
            losses = self.run_step(images, targets, cfg.train.lr * factor)
            self.iteration += 1
            self.elapsed += time.perf_counter() - step_start
            images_seen += len(images) * self.world

            window.append(losses)
            self.bar.update(self.iteration, self.elapsed, losses["loss"], cfg.train.lr * factor)
            if self.iteration % cfg.train.log_period == 0:
                self._log(window, images_seen, window_start, cfg.train.lr * factor)
                window, images_seen, window_start = [], 0, time.perf_counter()
            # the evaluation before the checkpoint: the checkpoint's state then holds its result
            if self.validation.due(self.iteration, self.elapsed):
                self._validate()
                model.train()
            if cfg.train.checkpoint_period and self.iteration % cfg.train.checkpoint_period == 0:
                self.save(f"model_{self.iteration:07d}.pth")
        if window:
            self._log(window, images_seen, window_start, cfg.train.lr * factor)
        if self.validation.should_stop:
            self.bar.write(f"stopped early at iteration {self.iteration:,}: no better {self.validation.metric} in "
                           f"{self.validation.patience} evaluations (best {self.validation.best:.4f} at iteration "
                           f"{self.validation.best_iteration:,}, {BEST_CHECKPOINT})")
        self.bar.close()
        if self.ema is not None:  # the final model is the average: evaluated, shipped, read by R-CNN's SVMs
            self.model.load_state_dict(self.ema.weights)
            self.ema = None
        self.save("model_final.pth")
        if self.stage.after_training and dist.is_main():
            # R-CNN's phases 2 and 3 (SVMs, box regressors) on the fine-tuned network; their feature
            # cache resumes on its own, and model_final.pth is rewritten with what they fitted
            run_after_training(self.stage, self.model, cfg, self.output_dir, self.device, self.progress)
            self.save("model_final.pth", all_ranks=False)
            model.train()
        if dist.is_main():
            self.records.flush()
            if (self.output_dir / "log.jsonl").exists():
                loss_curve(self.output_dir / "log.jsonl", self.output_dir / "loss_curve.png")
        metrics: Dict[str, Any] = {}
        if cfg.data.test.ann_file or cfg.data.test.root:
            metrics = self._evaluate_final()
        if dist.is_main():
            self.records.close()
        dist.barrier()
        return metrics

    def _note_unreadable(self, targets: List[Dict[str, Any]]) -> None:
        """Report each unreadable training image once; stop when more than ``data.max_unreadable`` of
        the set could not be read (a broken copy of a dataset should not train quietly on the rest)."""
        for target in targets:
            for message in target.pop("unreadable", ()):
                if message not in self.unreadable:
                    self.unreadable.append(message)
                    logger.warning("training image unreadable, another of the set takes its place: %s", message)
        limit = self.cfg.data.max_unreadable * len(self.train_set)
        # every rank stops at the same iteration (the most any rank has seen), none waits in an all-reduce
        seen = int(dist.all_reduce_max(float(len(self.unreadable))))
        if seen > limit:
            shown = "\n  ".join(self.unreadable[:10])
            raise DatasetError(f"{seen} training images could not be read, more than "
                               f"data.max_unreadable={self.cfg.data.max_unreadable:g} of {len(self.train_set)}:\n  {shown}")

    def _log(self, window: List[Dict[str, float]], images_seen: int, window_start: float, lr: float) -> None:
        rate = images_seen / max(time.perf_counter() - window_start, 1e-9)
        row = {"iteration": self.iteration, "elapsed_s": round(self.elapsed, 2), "lr": lr, "images_per_s": round(rate, 3),
               **{k: float(np.mean([w[k] for w in window])) for k in window[-1]}}
        if dist.is_main():
            self.records.log_step(row)

    def _averaged_model(self):
        return self.ema.applied_to(self.model) if self.ema is not None else contextlib.nullcontext(self.model)

    def _validate(self) -> None:
        """One evaluation during training (rank 0; its time counts in the budget): the records, the
        summary line, and ``model_best.pth`` when it is the best so far."""
        start = time.perf_counter()
        if dist.is_main():
            subset = validation_subset(self.cfg)
            with self._averaged_model() as model:
                metrics = evaluate(model, self.cfg, self.device, progress=False, subset=subset,
                                   max_images=self.cfg.train.eval_images)
                images = validation_images(model, self.cfg, subset, self.device) if self.records.writer else None
            improved = self.validation.record(self.iteration, metrics)
            best = self.validation.summary()
            self.records.log_eval(self.iteration, metrics, best, images)
            c = metrics["coco"]
            self.bar.write(f"eval @ {self.iteration:,} ({subset}, {metrics['num_images']} images): AP {c['AP']:.4f}  "
                           f"AP50 {c['AP50']:.4f}  best {best['metric']} {best['value']:.4f} at {best['iteration']:,}"
                           + ("  (new best: model_best.pth)" if improved else ""))
            if improved:
                save_checkpoint(self.output_dir / BEST_CHECKPOINT, {**self.state(), "metrics": {
                    k: c[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}, "subset": subset})
        # every rank takes the main process's result (patience stops all of them at the same evaluation)
        self.validation.load_state_dict(dist.gather_objects(self.validation.state_dict())[0])
        seconds = dist.all_reduce_max(time.perf_counter() - start)
        self.elapsed += seconds
        self.validation.took(seconds)

    def _evaluate_final(self) -> Dict[str, Any]:
        """The final model on the whole test split: metrics.json (naming the checkpoint, and the best
        of the validations when there were any), pr_curves.png, the records."""
        metrics: Dict[str, Any] = {}
        if dist.is_main():
            with self._averaged_model() as model:
                metrics = evaluate(model, self.cfg, self.device, self.output_dir, self.progress,
                                   source=str(self.output_dir / "model_final.pth"))
            if self.validation.enabled:
                metrics["best"] = self.validation.summary()
                metrics_file = self.output_dir / "metrics.json"
                stored = json.loads(metrics_file.read_text())
                write_text_atomic(metrics_file, json.dumps({**stored, "best": metrics["best"]}, indent=2))
            # a finished run resumed evaluates again: its row replaces the earlier one
            trim_rows(self.output_dir / "log.jsonl", lambda r: not ("final" in r and r["iteration"] == self.iteration),
                      json.loads)
            with open(self.output_dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"iteration": self.iteration, "final": True, "eval": {
                    k: metrics["coco"][k] for k in ("AP", "AP50", "AP75")}}) + "\n")
            print(format_metrics(metrics))
        dist.barrier()
        return metrics


def train(cfg: Config, output_dir, resume: bool = False, progress: bool = True,
          model: Optional[torch.nn.Module] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Train ``cfg``'s model (or ``model``) into ``output_dir`` and evaluate it; returns the final metrics.
    A folder that holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it)."""
    return Trainer(cfg, output_dir, resume=resume, progress=progress, model=model, overwrite=overwrite).train()
