"""Reading images: every loader in the package goes through :func:`read_image`.

The result is always ``HxWx3`` uint8 RGB as displayed: EXIF orientation applied (a phone photo
stored sideways is returned upright, so boxes refer to what a person sees), grayscale expanded to
three channels, the alpha channel of RGBA dropped, 16-bit and float images brought to 8 bits.

Failures raise :class:`ImageReadError` naming the file and the reason, never a bare OpenCV error.
Every caller goes on without the file and says so: inference lists it in ``skipped.json``,
evaluation leaves the image and its ground truth out and names it in ``metrics.json``, training
replaces it by another image of the set (and stops past ``data.max_unreadable``).

A file cut short (a JPEG without its end-of-image marker, a PNG without its IEND chunk) is refused,
not decoded as far as it goes. OpenCV would return the image with the missing rows grey and PIL
refuses it; we refuse it in training, evaluation and inference alike, because the grey part is not
the scene: boxes annotated there would teach the detector that a flat grey area is an object,
ground truth there would count as missed in every evaluation, and a detection run would report
"no objects" for a part of the photo it never saw. A partial download is better re-fetched than used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import cv2
import numpy as np

from detect.errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# ANYDEPTH keeps 16-bit data for a proper conversion; ANYCOLOR keeps grayscale as one channel.
# Unlike IMREAD_UNCHANGED, this combination still applies the EXIF orientation.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file as ``HxWx3`` uint8 RGB, EXIF orientation applied.

    Raises:
        ImageReadError: the file is missing, empty, truncated or cannot be decoded.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    if data.size == 0:
        raise ImageReadError(path, "file is empty")
    truncated = _truncation_reason(data)
    if truncated:
        raise ImageReadError(path, truncated)
    image = cv2.imdecode(data, _DECODE_FLAGS)
    if image is None:
        raise ImageReadError(path, "not a decodable image (unknown format or corrupt data)")
    return to_rgb_uint8(image, channel_order="bgr")


def to_rgb_uint8(image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """Bring an array of any common layout to ``HxWx3`` uint8 RGB.

    Accepts ``HxW`` (grayscale), ``HxWx1``, ``HxWx3`` and ``HxWx4`` (alpha dropped), in uint8,
    uint16 (scaled by 1/257, as OpenCV does), or float (``[0, 1]`` if its maximum is <= 1, else
    ``[0, 255]``). ``channel_order`` says whether colour input is RGB or BGR (OpenCV's order).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    image = _to_uint8(image)
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    image = image[:, :, :3]
    if channel_order == "bgr":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image // 257).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(finite * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
        return np.clip(image, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def _truncation_reason(data: np.ndarray) -> str:
    """Detect JPEG and PNG files cut short (OpenCV would decode them silently with grey or garbage
    rows, and a model would then be trained or evaluated on half an image)."""
    head = data[:8].tobytes()
    if head[:2] == b"\xff\xd8":  # JPEG: must end with the EOI marker (some writers pad after it)
        tail = data[-4096:].tobytes().rstrip(b"\x00\r\n ")
        if not tail.endswith(b"\xff\xd9"):
            return "truncated JPEG (no end-of-image marker)"
    elif head == b"\x89PNG\r\n\x1a\n":  # PNG: must contain its IEND chunk
        if b"IEND" not in data[-64:].tobytes():
            return "truncated PNG (no IEND chunk)"
    return ""


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def displayed_size(path: Union[str, Path]) -> Tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` returns it (EXIF orientation applied),
    from the file's header alone: the pixels are not decoded (a 10,000-image set in seconds).

    Raises:
        ImageReadError: the file is missing or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(path, f"not an image ({e})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # turned a quarter
