"""How a model runs on images: the predictor, datasets, folders and videos, the ONNX Runtime backend."""
from detect.inference.loading import load_model
from detect.inference.predictor import Predictor

__all__ = ["Predictor", "load_model"]
