"""How a detector is trained: the training loop, its schedule and checkpoints, weight averaging,
distributed data parallel, and R-CNN's after-training phases (SVMs, box regressors)."""
