"""Turning dataset items into model inputs."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

_TENSOR_DTYPES = {"boxes": torch.float32, "labels": torch.int64, "ignore": torch.bool,
                  "proposals": torch.float32}


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 RGB -> ``3xHxW`` float32 in ``[0, 1]`` (the models' input contract)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def collate_detection(batch: Sequence[Tuple[Any, Dict[str, Any]]]) -> Tuple[List, List[Dict[str, Any]]]:
    """Batch of ``(image, target)`` -> ``(images, targets)`` as lists (images differ in size; the
    model pads). Images become float tensors, ``boxes`` / ``labels`` / ``ignore`` become tensors.
    An image that could not be read (``None``, from :class:`ImageFolder`) stays ``None``."""
    images, targets = [], []
    for image, target in batch:
        images.append(None if image is None else image_to_tensor(image))
        target = dict(target)
        for key, dtype in _TENSOR_DTYPES.items():
            if key in target:
                target[key] = torch.as_tensor(np.asarray(target[key]), dtype=dtype)
        targets.append(target)
    return images, targets
