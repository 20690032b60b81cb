"""What a training run leaves to read: ``log.jsonl`` and ``results.csv`` always, TensorBoard events
with ``train.loggers: [tensorboard]``.

Rows are of two kinds: a training row per ``train.log_period`` (losses, lr, images/s, elapsed
seconds) and an evaluation row per validation (the COCO metrics, the best so far). ``results.csv``
has one header for the whole run (its columns are fixed by the first row and kept on resume);
TensorBoard gets the same scalars, per-class AP, the precision-recall curves and a few validation
images with their detections at each evaluation.

Resuming from the checkpoint of iteration ``k``, every record drops what the killed run wrote after
``k`` (``log.jsonl`` and ``results.csv`` are rewritten atomically; TensorBoard's writer marks the
events from ``k + 1`` on as purged, which its reader honours), so each row is there once. Only
the main process writes (DDP).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from detect.errors import ConfigError
from detect.utils.atomic import write_text_atomic

LOGGERS = ("tensorboard",)
EVAL_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# results.csv's columns after the losses: the validation metrics and the best so far
EVAL_COLUMNS = [f"val_{k}" for k in EVAL_KEYS] + ["best", "best_iteration"]


def check_loggers(loggers: Sequence[str]) -> None:
    """Each logger named must be installed: one line with the ``pip install`` otherwise."""
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: {name!r} is not a logger; one of {list(LOGGERS)}")
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise ConfigError('train.loggers: tensorboard is not installed: pip install tensorboard '
                              '(or pip install -e ".[tensorboard]")') from None


def trim_rows(path: Path, keep, parse) -> None:
    """Rewrite ``path`` atomically with only the lines ``keep(parse(line))`` accepts; a last line cut
    short by a kill (unparseable) goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = parse(line)
        except (ValueError, json.JSONDecodeError):
            continue
        if keep(row):
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class RunRecords:
    """The records of one run in ``folder``; ``resume_from``: the iteration of the checkpoint the run
    continues from (what was written after it is dropped), or ``None`` for a new run."""

    def __init__(self, folder: Path, loggers: Sequence[str] = (), resume_from: Optional[int] = None):
        self.folder = Path(folder)
        self.log_file = self.folder / "log.jsonl"
        self.csv_file = self.folder / "results.csv"
        self.columns: Optional[List[str]] = None
        self.writer = None
        start = resume_from or 0
        trim_rows(self.log_file, lambda r: isinstance(r, dict) and r.get("iteration", 0) <= start, json.loads)
        if self.csv_file.is_file():
            header = self.csv_file.read_text().splitlines()[:1]
            if header:
                self.columns = header[0].split(",")
                trim_rows(self.csv_file, lambda r: r[0] == "iteration" or int(float(r[0])) <= start,
                          lambda line: next(csv.reader([line])))
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            # events of steps after the checkpoint are marked purged; TensorBoard's reader drops them
            self.writer = SummaryWriter(str(self.folder), purge_step=start + 1 if resume_from is not None else None)

    def log_step(self, row: Dict[str, float]) -> None:
        """A training row: ``iteration``, ``elapsed_s``, ``lr``, ``images_per_s`` and the losses."""
        self._append_json(row)
        if self.columns is None:
            self.columns = list(row) + EVAL_COLUMNS
            write_text_atomic(self.csv_file, ",".join(self.columns) + "\n")
        self._append_csv(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration":
                    self.writer.add_scalar(("train/" if key.startswith("loss") else "") + key, value,
                                           row["iteration"])

    def log_eval(self, iteration: int, metrics: Dict[str, Any], best: Dict[str, Any], images=None) -> None:
        """An evaluation row: the COCO metrics of ``metrics`` and ``best`` (``value``, ``iteration``);
        TensorBoard also gets the per-class AP, the PR curves and ``images`` (``HxWx3`` uint8 RGB with
        the detections drawn)."""
        coco = metrics["coco"]
        self._append_json({"iteration": iteration, "eval": {k: coco[k] for k in EVAL_KEYS},
                           "best": {"metric": best["metric"], "value": best["value"], "iteration": best["iteration"]}})
        if self.columns is not None:
            self._append_csv({"iteration": iteration, **{f"val_{k}": coco[k] for k in EVAL_KEYS},
                              "best": best["value"], "best_iteration": best["iteration"]})
        if self.writer is None:
            return
        for key in EVAL_KEYS:
            self.writer.add_scalar(f"val/{key}", coco[key], iteration)
        for name, per in coco.get("per_class", {}).items():
            self.writer.add_scalar(f"val_AP_per_class/{name}", per["AP"], iteration)
        if coco.get("pr_curves"):
            self.writer.add_image("val/pr_curves", _pr_curves_image(coco["pr_curves"]), iteration, dataformats="HWC")
        for k, image in enumerate(images or []):
            self.writer.add_image(f"val_images/{k}", image, iteration, dataformats="HWC")
        self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _append_json(self, row: Dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _append_csv(self, row: Dict[str, Any]) -> None:
        values = [row.get(c, "") for c in self.columns]
        with open(self.csv_file, "a", newline="") as f:
            csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])


def _pr_curves_image(curves) -> np.ndarray:
    """The evaluator's precision-recall figure as an ``HxWx3`` uint8 image."""
    import cv2

    from detect.evaluation.metrics import plot_pr_curves

    buffer = io.BytesIO()
    plot_pr_curves(curves, buffer, title="precision-recall at IoU 0.5")
    image = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
