"""A plain folder of images (no annotations), for inference.

Files are found recursively and sorted, so runs are reproducible and ids stable. A file that cannot
be read does not stop anything: its item carries ``image=None`` and the reason, and the caller
reports and skips it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from detect.data.detection_dataset import DatasetError
from detect.data.image_io import ImageReadError, is_image_file, read_image


def list_images(root: Union[str, Path]) -> List[Path]:
    """Image files under ``root`` (recursive, sorted by relative path, symlinked folders followed once)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class ImageFolder(Dataset):
    """Items are ``(image, info)``: ``image`` ``HxWx3`` uint8 RGB, or ``None`` when the file cannot be
    read; ``info`` has ``image_id`` (1-based position), ``path``, ``rel_path`` (relative to the
    root, for mirroring the folder layout in outputs), ``orig_size`` ``(h, w)`` and ``error``.

    Args:
        root: a folder (searched recursively) or a single image file.
        transform: ``transform(image, target) -> (image, target)`` (e.g. the test-time resize).
    """

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None,
                 paths: Optional[List[Path]] = None):
        self.root = Path(root)
        self.paths = list_images(self.root) if paths is None else list(paths)
        if not self.paths:
            raise DatasetError(f"no images found in {self.root} (looked for "
                               f"{', '.join(e.lstrip('.') for e in ('.jpg', '.png', '.bmp', '.tif', '.webp'))} "
                               f"and similar, recursively)")
        self.transform = transform
        self._base = self.root if self.root.is_dir() else self.root.parent

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[Optional[np.ndarray], dict]:
        path = self.paths[index]
        info = {"image_id": index + 1, "path": str(path), "rel_path": path.relative_to(self._base).as_posix(),
                "orig_size": None, "error": None}
        try:
            image = read_image(path)
        except ImageReadError as e:
            info["error"] = e.reason
            return None, info
        info["orig_size"] = image.shape[:2]
        if self.transform is not None:
            target = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64),
                      "ignore": np.zeros((0,), bool), **info}
            image, info = self.transform(image, target)
        return image, info
