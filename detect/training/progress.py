"""The training bar: it knows the run's end whether that is an iteration count or a wall-clock budget.

Under ``train.max_iter`` it counts iterations to the total, with the ETA; under
``train.max_minutes`` it counts the budget's seconds (evaluations included, as the schedule counts
them), with the time left, and shows the iterations so far and their rate beside the loss and the
learning rate. After each evaluation one line says the metrics and the best so far.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm

from detect.config import Config


class TrainingBar:
    def __init__(self, cfg: Config, iteration: int, elapsed: float, enabled: bool):
        self.by_time = cfg.train.max_minutes > 0
        self.enabled = enabled
        self.started, self.first_iteration = time.perf_counter(), iteration
        if self.by_time:
            budget = 60.0 * cfg.train.max_minutes
            self.bar = tqdm(total=round(budget), initial=min(round(elapsed), round(budget)), desc="train", unit="s",
                            disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, {remaining} left{postfix}")
        else:
            self.bar = tqdm(total=cfg.train.max_iter, initial=iteration, desc="train", unit="it", disable=not enabled,
                            dynamic_ncols=True, file=sys.stderr)
        self.shown = elapsed

    def update(self, iteration: int, elapsed: float, loss: Optional[float] = None, lr: Optional[float] = None) -> None:
        """After a step (or an evaluation): ``elapsed`` seconds of the budget spent."""
        if self.by_time:
            step = round(elapsed) - round(self.shown)
            if step > 0:
                self.bar.update(min(step, self.bar.total - self.bar.n))
            self.shown = elapsed
        else:
            self.bar.update(iteration - self.bar.n)
        if loss is not None:
            rate = (iteration - self.first_iteration) / max(time.perf_counter() - self.started, 1e-9)
            fields = {"it": f"{iteration:,}", "it/s": f"{rate:.2f}"} if self.by_time else {}
            self.bar.set_postfix(**fields, loss=f"{loss:.3f}", lr=f"{lr:.2g}", refresh=False)

    def write(self, line: str) -> None:
        """A line above the bar (or on stdout without one)."""
        if self.enabled:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def close(self) -> None:
        self.bar.close()
