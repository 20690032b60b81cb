"""Training, checkpoints, evaluation and inference."""
