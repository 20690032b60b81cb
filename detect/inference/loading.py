"""A model to run from a file: a detect checkpoint (``.pth``) or an exported ONNX model (``.onnx``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from detect.checkpoint.storage import model_from_checkpoint


def load_model(path: Union[str, Path], config: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
               device: Union[str, torch.device] = "cpu"):
    """``(model, cfg)`` from ``path`` alone: its config and class names are inside the file.

    A ``.pth`` checkpoint gives the detector in eval mode on ``device``
    (:func:`~detect.checkpoint.storage.model_from_checkpoint`: ``config`` replaces the stored config,
    ``overrides`` apply on top); an ``.onnx`` file (``detect export``) gives an
    :class:`~detect.inference.onnx_backend.OnnxDetector` that ONNX Runtime runs on the CPU, with the
    config stored in the file.
    """
    if str(path).lower().endswith(".onnx"):
        from detect.inference.onnx_backend import load_onnx  # onnxruntime is an extra: imported when asked for

        return load_onnx(path, config, overrides)
    return model_from_checkpoint(path, config, overrides, device)
