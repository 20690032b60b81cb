"""Training and test transforms, on albumentations and its box support.

Resizing follows the R-CNN papers: the short side becomes ``min_size`` (one drawn at random from a
list for multi-scale training) unless that makes the long side exceed ``max_size``; in training a
scale jitter may then multiply that factor by a random gain in ``[1 - jitter, 1 + jitter]``
(multi-scale training relative to whatever size the data has). The test-time transform is the same
resize with no randomness; the scale it applied is kept in the target (``scale``: x and y factors)
so predictions can be mapped back to the original file.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import albumentations as A
from albumentations.augmentations.geometric.resize import MaxSizeTransform
import cv2
import numpy as np

from detect.ops.boxes import scale_boxes

Size = Union[int, Sequence[int]]


class ResizeShortestEdge(MaxSizeTransform):
    """Scale so the short side is ``min_size`` (random choice from a list), the long side at most
    ``max_size``, then by a gain drawn uniformly from ``[1 - jitter, 1 + jitter]`` (the cap moves with
    it, as in MMDetection's ``RandomResize(ratio_range=...)``); one resize, aspect ratio kept. Boxes
    follow (albumentations keeps them normalised)."""

    def __init__(self, min_size: Size, max_size: int, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0,
                 jitter: float = 0.0):
        sizes = [int(min_size)] if isinstance(min_size, (int, float)) else [int(s) for s in min_size]
        if not sizes or min(sizes) <= 0 or max_size <= 0:
            raise ValueError(f"sizes must be positive: min_size={min_size}, max_size={max_size}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"the scale jitter must be in [0, 1), got {jitter}")
        super().__init__(max_size=sizes, interpolation=interpolation, p=p)
        self.min_sizes = sizes
        self.long_max = int(max_size)
        self.jitter = float(jitter)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params["shape"][:2]
        short = self.py_random.choice(self.min_sizes) if len(self.min_sizes) > 1 else self.min_sizes[0]
        gain = self.py_random.uniform(1.0 - self.jitter, 1.0 + self.jitter) if self.jitter else 1.0
        return {"scale": self.scale_for(short, height, width) * gain}

    def scale_for(self, short: int, height: int, width: int) -> float:
        return min(short / min(height, width), self.long_max / max(height, width))

    def possible_scales(self, height: int, width: int):
        """The factors this resize can apply to a ``height x width`` image: each size's, and with a
        jitter the two ends of its range too (the range is continuous; its ends bound the boxes)."""
        gains = [1.0 - self.jitter, 1.0, 1.0 + self.jitter] if self.jitter else [1.0]
        return [self.scale_for(short, height, width) * g for short in self.min_sizes for g in gains]


class ScaleBy(MaxSizeTransform):
    """Scale by a fixed factor whatever the size (sliced inference: the tiles are cut from the image at
    ``model.tiles.scale`` of its native resolution, not at the test size)."""

    def __init__(self, factor: float, interpolation: int = cv2.INTER_LINEAR):
        super().__init__(max_size=1, interpolation=interpolation, p=1.0)
        self.factor = float(factor)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        return {"scale": self.factor}

    def possible_scales(self, height: int, width: int):
        return [self.factor]


class DetectionTransform:
    """``(image, target) -> (image, target)``: resize, and when training, flip and colour jitter.

    The target's ``boxes``, ``labels`` and ``ignore`` move together (albumentations may drop a box
    and its labels as one). ``proposals`` (Fast R-CNN, R-CNN), when present, ride along in the same
    box list so that they are resized and flipped exactly as the objects are, and keep their order.
    ``scale`` = ``(new_w / old_w, new_h / old_h)`` is added to the target.

    Args:
        min_size: short side after resizing; a list draws one per image (multi-scale training).
        max_size: cap on the long side.
        train: enable the random crop, flip and photometric jitter.
        flip_prob: probability of a horizontal flip when training.
        crop_prob: probability of a random crop that keeps every box whole (before the resize, so the
            crop is enlarged to the training size: objects appear larger than in the whole image).
        color_jitter: strength of brightness / contrast / saturation jitter (0 disables; hue moves
            a tenth as far), applied to half of the training images.
        scale_jitter: when training, the resize's factor times a gain drawn from
            ``[1 - scale_jitter, 1 + scale_jitter]`` (0 disables).
    """

    def __init__(self, min_size: Size, max_size: int, train: bool = False, flip_prob: float = 0.5,
                 color_jitter: float = 0.0, crop_prob: float = 0.0, fixed_scale: Optional[float] = None,
                 tile_crop_prob: float = 0.0, tile_size: int = 0, tile_scale: float = 1.0,
                 scale_jitter: float = 0.0):
        self.resize = ScaleBy(fixed_scale) if fixed_scale else \
            ResizeShortestEdge(min_size if train else _first(min_size), max_size,
                               jitter=scale_jitter if train else 0.0)
        steps = [A.BBoxSafeRandomCrop(p=crop_prob)] if train and crop_prob > 0 else []
        steps.append(self.resize)
        self.train = train
        self.pipeline = self._compose(steps + self._augment(train, flip_prob, color_jitter))
        # a share of the training images seen as a tile at native resolution (sliced inference's view).
        # The crop holds at least one whole box when the image has any (MMDetection's RandomCrop refuses
        # crops without objects too): small objects are sparse in a large image, and a tile drawn
        # anywhere is mostly background, which the whole-image views already show. (Proposals ride
        # in the same box list, so under Fast R-CNN the box held may be a proposal.)
        self.tile_crop_prob, self.tile_scale = (tile_crop_prob, tile_scale) if train and tile_size else (0.0, 1.0)
        self.tile_pipeline = None
        if self.tile_crop_prob > 0:
            self.tile_pipeline = self._compose(
                [ScaleBy(tile_scale), A.PadIfNeeded(tile_size, tile_size, position="top_left", fill=0),
                 A.AtLeastOneBBoxRandomCrop(tile_size, tile_size, p=1.0)]
                + self._augment(train, flip_prob, color_jitter), min_visibility=0.5)
        self.rng = np.random.default_rng()

    @staticmethod
    def _augment(train: bool, flip_prob: float, color_jitter: float):
        steps = []
        if train and flip_prob > 0:
            steps.append(A.HorizontalFlip(p=flip_prob))
        if train and color_jitter > 0:
            steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                       saturation=color_jitter, hue=min(0.5, color_jitter / 10), p=0.5))
        return steps

    @staticmethod
    def _compose(steps, min_visibility: float = 0.0) -> A.Compose:
        # a box less than min_visibility in view after a tile crop is dropped, the others clipped
        return A.Compose(steps, bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels", "ignore", "is_proposal"], clip=True,
            filter_invalid_bboxes=True, min_visibility=min_visibility))

    def possible_scales(self, height: int, width: int):
        """The factors by which the transform can scale a ``height x width`` image's boxes (a random crop
        enlarges them further in some training images; the test-time scale is among these; a tile
        crop shows them at the tile scale, and only there when every training image is a tile crop)."""
        scales = self.resize.possible_scales(height, width)
        if self.tile_pipeline is None:
            return scales
        return [self.tile_scale] if self.tile_crop_prob >= 1.0 else scales + [self.tile_scale]

    def set_seed(self, seed: Optional[int]) -> None:
        """Seed the random draws (call once per DataLoader worker with distinct seeds)."""
        self.pipeline.set_random_seed(seed)
        if self.tile_pipeline is not None:
            self.tile_pipeline.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, target: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
        height, width = image.shape[:2]
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], np.int64)
        ignore = np.asarray(target["ignore"], bool)
        proposals = np.asarray(target.get("proposals", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        is_proposal = np.r_[np.zeros(len(boxes), bool), np.ones(len(proposals), bool)]
        tile = self.tile_pipeline is not None and self.rng.random() < self.tile_crop_prob
        out = (self.tile_pipeline if tile else self.pipeline)(image=image, bboxes=np.concatenate([boxes, proposals]),
                            labels=np.r_[labels, np.zeros(len(proposals), np.int64)],
                            ignore=np.r_[ignore, np.zeros(len(proposals), bool)], is_proposal=is_proposal)
        new_h, new_w = out["image"].shape[:2]
        moved = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        is_proposal = np.asarray(out["is_proposal"], bool)
        target = dict(target)
        target["boxes"] = moved[~is_proposal]
        target["labels"] = np.asarray(out["labels"], np.int64)[~is_proposal]
        target["ignore"] = np.asarray(out["ignore"], bool)[~is_proposal]
        if "proposals" in target:
            target["proposals"] = moved[is_proposal]
        target["scale"] = (self.tile_scale, self.tile_scale) if tile else (new_w / width, new_h / height)
        return out["image"], target


def _first(size: Size) -> int:
    return int(size) if isinstance(size, (int, float)) else int(size[0])


def boxes_to_original(boxes, scale: Tuple[float, float]):
    """Map boxes predicted on a transformed image back to the original file's pixels."""
    return scale_boxes(boxes, (1.0 / scale[0], 1.0 / scale[1]))


def build_transforms(cfg, train: bool) -> DetectionTransform:
    """The transform a config asks for (``input.*`` keys; with sliced inference, ``model.tiles``: the
    test images stay at the tile scale, and training sees tile crops at the share asked for)."""
    inp, tiles = cfg.input, cfg.model.tiles
    return DetectionTransform(inp.min_size if train else inp.min_size_test, inp.max_size, train=train,
                              flip_prob=inp.flip_prob, color_jitter=inp.color_jitter, crop_prob=inp.crop_prob,
                              scale_jitter=inp.scale_jitter,
                              fixed_scale=tiles.scale if tiles.size and not train else None,
                              tile_crop_prob=inp.tile_crop_prob, tile_size=tiles.size, tile_scale=tiles.scale)
