"""How a detector is trained: the training loop, its schedule and checkpoints, weight averaging,
distributed data parallel, and R-CNN's after-training phases (SVMs, box regressors)."""
from detect.training.trainer import Trainer, train

__all__ = ["Trainer", "train"]
