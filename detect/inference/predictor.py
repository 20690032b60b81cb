"""Inference from a checkpoint alone: ``Predictor.from_checkpoint(path)(image)``.

The checkpoint holds the config (test-time resize, thresholds) and the class names, so nothing else
is needed. Predictions come back in the pixels of the image as given (EXIF-rotated files: as
displayed), whatever size the model saw.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from detect.data.collate import image_to_tensor
from detect.data.image_io import read_image, to_rgb_uint8
from detect.data.transforms import build_transforms
from detect.inference.loading import load_model
from detect.utils.device import resolve_device
from detect.inference.over_dataset import to_original
from detect.inference.runtime import prepare_for_inference, run_model
from detect.inference.tiling import tiled

ImageLike = Union[str, Path, np.ndarray]


class Predictor:
    """A detector ready to run on images (arrays ``HxWx3`` RGB uint8, or paths).

    Args:
        model: a detector in eval mode.
        cfg: its config (for the test-time transform).
        device: where it runs.
    """

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device):
        # with model.tiles, the detector runs over tiles of the images (detect.inference.tiling)
        self.model = tiled(prepare_for_inference(model.to(device).eval(), device), cfg)
        self.cfg = cfg
        self.device = device
        self.class_names: List[str] = list(cfg.data.classes)
        self.transform = build_transforms(cfg, train=False)

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: Optional[str] = "auto",
                        score_thresh: Optional[float] = None, overrides: Sequence[str] = ()) -> "Predictor":
        """Load ``path`` (``.pth`` or ``.onnx``); ``overrides`` (``key=value``, e.g. the test-time keys
        ``model.test_flip=true``) apply to its stored config, ``score_thresh`` replaces
        ``model.roi_head.score_thresh``; ``device=None`` runs where the config's ``device`` says."""
        extra = list(overrides)
        if score_thresh is not None:
            extra.append(f"model.roi_head.score_thresh={float(score_thresh)}")
        if device is not None:
            extra.append(f"device={device}")
        model, cfg = load_model(path, overrides=extra, device="cpu")
        return cls(model, cfg, resolve_device(cfg.device))

    def prepare(self, image: np.ndarray):
        """``(tensor, target)`` for one RGB uint8 image: resized as in training's test transform."""
        empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64),
                 "ignore": np.zeros((0,), bool)}
        resized, target = self.transform(image, empty)
        target["orig_size"] = image.shape[:2]
        return image_to_tensor(resized), target

    @torch.no_grad()
    def predict_tensors(self, images: List[torch.Tensor], targets: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Run the model on prepared images; results in each original image's pixels."""
        outputs = run_model(self.model, [im.to(self.device, non_blocking=True) for im in images])
        results = []
        for out, target in zip(outputs, targets):
            det = to_original(out, target)
            det["class_names"] = [self.class_names[int(lab) - 1] for lab in det["labels"]]
            results.append(det)
        return results

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]]):
        """One image (array or path) -> one dict; a list -> a list of dicts with ``boxes`` (xyxy, original
        pixels), ``scores``, ``labels`` (1..C) and ``class_names``."""
        single = isinstance(images, (str, Path, np.ndarray))
        batch = [images] if single else list(images)
        arrays = [read_image(im) if isinstance(im, (str, Path)) else to_rgb_uint8(np.asarray(im)) for im in batch]
        prepared = [self.prepare(a) for a in arrays]
        results = self.predict_tensors([p[0] for p in prepared], [p[1] for p in prepared])
        return results[0] if single else results
