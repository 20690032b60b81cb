"""Selective search (Uijlings, van de Sande, Gevers and Smeulders, IJCV 2013).

For each strategy (colour space, Felzenszwalb-Huttenlocher ``k``, similarity measure):
segment the image into initial regions, then greedily merge the two most similar neighbours
until one region is left; every region of that hierarchy is a proposal. The strategies'
boxes are ranked by their position in their hierarchy (the top region first) times a seeded
random number in ``[0, 1)``, pooled, and de-duplicated keeping the best-ranked copy.

OpenCV does the colour conversions and Gaussian filters; the loops over pixels, edges and
merges are compiled (``_search_kernels.py``).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detect.proposals import _search_kernels

SIGMA = 0.8  # the paper's Felzenszwalb-Huttenlocher smoothing
TEXTURE_SIGMA = 1.0  # Gaussian derivatives for the texture histograms


@dataclass(frozen=True)
class Strategy:
    """One diversification strategy: colour space, FH ``k`` and which similarities to sum."""

    colour_space: str  # hsv | lab | rgi | h | i | rgb
    k: float
    similarities: str  # letters out of "CTSF" (colour, texture, size, fill)

    @property
    def min_size(self) -> int:
        return int(self.k)  # as in the authors' code: minimum region size equals k


def _strategies(colour_spaces, ks, similarities) -> List[Strategy]:
    return [Strategy(c, k, s) for c in colour_spaces for k in ks for s in similarities]


#: The paper's settings (section 5.2): "single" is its best single strategy, "fast" and
#: "quality" the two diversified ones.
MODES: Dict[str, List[Strategy]] = {
    "single": _strategies(["hsv"], [100], ["CTSF"]),
    "fast": _strategies(["hsv", "lab"], [50, 100], ["CTSF", "TSF"]),
    "quality": _strategies(["hsv", "lab", "rgi", "h", "i"], [50, 100, 150, 300],
                           ["CTSF", "TSF", "F", "S"]),
}


def selective_search(image: np.ndarray, mode: str = "fast", seed: int = 0,
                     max_side: Optional[int] = None) -> np.ndarray:
    """Region proposals of one image.

    Args:
        image: ``HxWx3`` uint8 RGB (``HxW`` / ``HxWx1`` grayscale and ``HxWx4`` are accepted).
        mode: ``"single"``, ``"fast"`` or ``"quality"`` (see ``MODES``), or a list of
            ``Strategy``.
        seed: seeds the random part of the ranking; equal seeds give equal output.
        max_side: when set and the image's longer side exceeds it, the search runs on a copy
            downscaled to that side and the boxes are mapped back.

    Returns:
        ``(N, 4) float32`` xyxy boxes in the given image's pixels, best-ranked first, without
        duplicates. Never empty for a non-empty image: the whole image is always a region.
    """
    strategies = MODES[mode] if isinstance(mode, str) and mode in MODES else mode
    if isinstance(strategies, str) or not strategies:
        raise ValueError(f"unknown selective search mode {mode!r}; expected one of {sorted(MODES)}")
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"selective_search needs a non-empty image, got shape {image.shape}")
    scale = 1.0
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)

    hierarchies = _hierarchies(rgb, strategies)
    rng = np.random.default_rng(seed)
    boxes, ranks = [], []
    for hierarchy in hierarchies:
        # position 1 is the top of the hierarchy (the last merge), as in the authors' code
        position = np.arange(len(hierarchy), 0, -1, dtype=np.float64)
        ranks.append(position * rng.random(len(hierarchy)))
        boxes.append(hierarchy)
    boxes = np.concatenate(boxes)
    order = np.argsort(np.concatenate(ranks), kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)].astype(np.float32)
    # inclusive pixel indices -> continuous xyxy
    boxes[:, 2:] += 1
    if scale != 1.0:
        h_small, w_small = rgb.shape[:2]
        boxes *= np.array([width / w_small, height / h_small] * 2, np.float32)
        boxes = np.minimum(boxes, np.array([width, height] * 2, np.float32))
    return boxes


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        from detect.data.image_io import to_rgb_uint8
        return to_rgb_uint8(image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _hierarchies(rgb: np.ndarray, strategies: Sequence[Strategy]) -> List[np.ndarray]:
    """Inclusive boxes ``(M, 4) int32`` of each strategy's hierarchy, in strategy order."""
    height, width = rgb.shape[:2]
    out = []
    per_space: Dict[str, Tuple] = {}
    per_segmentation: Dict[Tuple[str, float], Tuple] = {}
    for strategy in strategies:
        space = strategy.colour_space
        if space not in per_space:
            per_space[space] = _colour_space_features(rgb, space)
        edges, colour_bins, tex_bins = per_space[space]
        key = (space, strategy.k)
        if key not in per_segmentation:
            labels, count = _search_kernels.felzenszwalb(*edges, height * width, float(strategy.k),
                                                  strategy.min_size)
            features = _search_kernels.region_features(labels, count, width, colour_bins, tex_bins)
            pairs = _search_kernels.adjacent_pairs(labels, height, width)
            per_segmentation[key] = (features, pairs)
        (sizes, boxes, colour, texture), pairs = per_segmentation[key]
        sim = strategy.similarities
        out.append(_search_kernels.hierarchical_grouping(
            sizes, boxes, colour, texture, pairs, "C" in sim, "T" in sim, "S" in sim, "F" in sim,
            float(height * width)))
    return out


def _colour_space_features(rgb: np.ndarray, space: str):
    """The image's sorted FH graph and per-pixel colour and texture bins in one colour space."""
    converted = convert_colour(rgb, space)
    height, width, channels = converted.shape
    as_float = converted.astype(np.float32)
    smoothed = _gaussian(as_float, SIGMA)
    edges = _search_kernels.sorted_edges(smoothed)
    colour_bins = (converted.reshape(-1, channels).astype(np.uint16) * _search_kernels.COLOUR_BINS // 256)
    colour_bins = colour_bins.astype(np.uint8)
    blurred = _gaussian(as_float, TEXTURE_SIGMA)
    dx = _reshape(cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=1, borderType=cv2.BORDER_REFLECT), channels)
    dy = _reshape(cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=1, borderType=cv2.BORDER_REFLECT), channels)
    tex_bins = _search_kernels.texture_bins(dx, dy)
    return edges, colour_bins, tex_bins


def convert_colour(rgb: np.ndarray, space: str) -> np.ndarray:
    """``HxWxC`` uint8 image in one of the paper's colour spaces, each channel on 0..255."""
    if space == "rgb":
        return rgb
    if space == "hsv":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    if space == "lab":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    if space == "h":
        return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)[:, :, :1])
    if space == "i":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    if space == "rgi":
        f = rgb.astype(np.float32)
        total = f.sum(axis=2, keepdims=True)
        rg = np.divide(f[:, :, :2], total, out=np.full_like(f[:, :, :2], 1 / 3), where=total > 0)
        out = np.concatenate([rg * 255, total / 3], axis=2)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown colour space {space!r}; expected hsv, lab, rgi, h, i or rgb")


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(np.ceil(4 * sigma))
    out = cv2.GaussianBlur(image, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)
    return _reshape(out, image.shape[2])


def _reshape(image: np.ndarray, channels: int) -> np.ndarray:
    # OpenCV drops a single channel axis; the kernels want (H, W, C) everywhere
    return np.ascontiguousarray(image.reshape(image.shape[0], image.shape[1], channels))
