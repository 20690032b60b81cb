"""Training, checkpoints, evaluation and inference."""
from detect.engine.predictor import Predictor

__all__ = ["Predictor"]
