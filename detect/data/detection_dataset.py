"""What every annotated dataset shares: image records, the class list, problems found while parsing.

A format (COCO json, Pascal VOC xml) only parses its files into :class:`ImageRecord` objects;
:class:`DetectionDataset` does the rest the same way for all of them: cleaning boxes (degenerate ones
dropped, the rest clipped to the image, each case reported with file and object index), mapping
category names to contiguous labels, checking that the images exist, loading and transforming.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from detect.data.image_io import ImageReadError, read_image
from detect.ops.boxes import clip_boxes_np, nonempty_boxes
from detect.errors import DatasetError

logger = logging.getLogger(__name__)

Target = Dict[str, object]
Transform = Callable[[np.ndarray, Target], Tuple[np.ndarray, Target]]


@dataclass
class Problem:
    """Something wrong in the annotations, found while parsing. ``obj`` names the object in its
    file ("object 3" for VOC, "annotation id 17" for COCO; ``None`` for the whole image)."""

    file: str
    obj: Optional[str]
    kind: str  # "degenerate", "clipped", "dropped-category"
    message: str

    def __str__(self) -> str:
        where = self.file if self.obj is None else f"{self.file}, {self.obj}"
        return f"{where}: {self.message}"


@dataclass
class ImageRecord:
    """One image and its cleaned annotations. Boxes are ``(N, 4)`` float32 xyxy pixels."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    source: str = ""  # the annotation file this record came from (for messages)


@dataclass
class RawObject:
    """An object as a format parser read it, before cleaning: xyxy pixels, category name."""

    name: str
    box: Tuple[float, float, float, float]
    ignore: bool = False
    ref: str = ""  # how messages name it: "object 3", "annotation id 17"


class CategoryMap:
    """Category names <-> contiguous labels ``1..C`` (0 is background).

    Args:
        names: class names in label order (label of ``names[i]`` is ``i + 1``).
        rename: optional mapping applied to names read from annotation files before lookup; a name
            mapped to ``None`` is dropped (reported as a problem, not an error).
    """

    def __init__(self, names: Sequence[str], rename: Optional[Mapping[str, Optional[str]]] = None):
        names = list(names)
        if not names:
            raise DatasetError("a dataset needs at least one class name")
        if len(set(names)) != len(names):
            raise DatasetError(f"duplicate class names in {names}")
        self.names = names
        self.rename = dict(rename or {})
        self._labels = {n: i + 1 for i, n in enumerate(names)}
        unknown_targets = [v for v in self.rename.values() if v is not None and v not in self._labels]
        if unknown_targets:
            raise DatasetError(f"category_map maps to names that are not classes: {unknown_targets}; "
                               f"classes are {names}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def label(self, name: str, source: str) -> Optional[int]:
        """Label of a raw category name; ``None`` when the rename map drops it.

        Raises:
            DatasetError: the name is neither a class nor mapped (names ``source`` and the name).
        """
        if name in self.rename:
            name = self.rename[name]
        if name is None:
            return None
        if name not in self._labels:
            raise DatasetError(f"{source}: unknown category {name!r}; known classes are {self.names} "
                               f"(map it with data.category_map, e.g. {{{name!r}: {self.names[0]!r}}} "
                               f"or {{{name!r}: null}} to drop it)")
        return self._labels[name]


def image_size_from_file(path: Path, source: str) -> Tuple[int, int]:
    """``(width, height)`` of an image whose annotation does not give its size (decodes it)."""
    try:
        h, w = read_image(path).shape[:2]
    except ImageReadError as e:
        raise DatasetError(f"{source}: the annotation gives no image size and the image cannot be "
                           f"read: {e}") from None
    return w, h


def clean_objects(objects: Sequence[RawObject], categories: CategoryMap, width: int, height: int,
                  source: str, problems: List[Problem]):
    """Turn raw objects of one image into ``(boxes, labels, ignore)`` arrays.

    Degenerate boxes (width or height <= 0) are dropped and boxes reaching outside the image are
    clipped; both are appended to ``problems`` with the file and the object.
    """
    boxes, labels, ignore = [], [], []
    for index, obj in enumerate(objects):
        ref = obj.ref or f"object {index}"
        label = categories.label(obj.name, f"{source}, {ref}")
        if label is None:
            problems.append(Problem(source, ref, "dropped-category",
                                    f"category {obj.name!r} dropped by data.category_map"))
            continue
        box = np.asarray(obj.box, dtype=np.float32)
        if not np.isfinite(box).all():
            problems.append(Problem(source, ref, "degenerate",
                                    f"box {obj.box} ({obj.name}) has coordinates that are not finite, dropped"))
            continue
        if not nonempty_boxes(box[None])[0]:
            problems.append(Problem(source, ref, "degenerate",
                                    f"degenerate box {obj.box} ({obj.name}): zero or negative size, dropped"))
            continue
        clipped = clip_boxes_np(box, (height, width))
        if not np.array_equal(clipped, box):
            if not nonempty_boxes(clipped[None])[0]:
                problems.append(Problem(source, ref, "degenerate",
                                        f"box {obj.box} ({obj.name}) lies outside the "
                                        f"{width}x{height} image, dropped"))
                continue
            problems.append(Problem(source, ref, "clipped",
                                    f"box {obj.box} ({obj.name}) reaches outside the {width}x{height} "
                                    f"image, clipped to {tuple(float(v) for v in clipped)}"))
        boxes.append(clipped)
        labels.append(label)
        ignore.append(obj.ignore)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(ignore, bool))


class DetectionDataset(Dataset):
    """A list of :class:`ImageRecord` with a class list; items are ``(image, target)``.

    ``image`` is ``HxWx3`` uint8 RGB; ``target`` holds ``boxes (N, 4)`` float32 xyxy, ``labels (N,)``
    int64 in ``1..C``, ``ignore (N,)`` bool (crowd / difficult), ``image_id`` int and ``orig_size``
    ``(height, width)`` of the file. With proposals attached (Fast R-CNN, R-CNN: see
    :func:`detect.proposals.attach.attach_proposals`) it also holds ``proposals (P, 4)`` float32
    xyxy, best-ranked first. ``transforms(image, target)`` is applied last.
    """

    def __init__(self, records: List[ImageRecord], categories: CategoryMap, problems: List[Problem],
                 transforms: Optional[Transform] = None, description: str = "",
                 check_files: bool = True):
        if not records:
            raise DatasetError(f"{description or 'dataset'}: no images (empty annotation file or split)")
        self.records = records
        self.categories = categories
        self.problems = problems
        self.transforms = transforms
        self.description = description
        self._size_warned = set()
        # per record, a callable giving its proposals (original pixels): set_proposals
        self.proposals: Optional[Callable[[int], np.ndarray]] = None
        if check_files:
            self._check_files_exist()
        self._report_problems()

    def set_proposals(self, lookup: Optional[Callable[[int], np.ndarray]]) -> None:
        """From now on each item's target holds ``proposals``: ``lookup(index)`` -> ``(P, 4)`` float32 xyxy
        in the file's pixels, best first (clipped to the image here); None removes them."""
        if lookup is not None and not callable(lookup):
            raise TypeError(f"set_proposals takes a function of the item index, not {type(lookup).__name__}")
        self.proposals = lookup

    @property
    def class_names(self) -> List[str]:
        return self.categories.names

    @property
    def num_classes(self) -> int:
        return self.categories.num_classes

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratio(self, index: int) -> float:
        """Width / height of an image, from the annotations (no decoding): for batch grouping."""
        r = self.records[index]
        return r.width / max(r.height, 1)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = read_image(record.path)
        height, width = image.shape[:2]
        boxes = record.boxes
        if (width, height) != (record.width, record.height):
            # The file does not match its annotation (e.g. resized after labelling): boxes are kept
            # in the annotated frame, clipped to the real image, and the mismatch is reported once.
            self._warn_size_mismatch(record, width, height)
            boxes = clip_boxes_np(boxes, (height, width))
        target = {
            "boxes": boxes.copy(),
            "labels": record.labels.copy(),
            "ignore": record.ignore.copy(),
            "image_id": record.image_id,
            "orig_size": (height, width),
        }
        if self.proposals is not None:
            target["proposals"] = clip_boxes_np(self.proposals(index), (height, width))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _check_files_exist(self) -> None:
        missing = [r for r in self.records if not r.path.is_file()]
        if missing:
            shown = "\n  ".join(f"{r.path} (from {r.source})" for r in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DatasetError(f"{self.description}: {len(missing)} of {len(self.records)} images are "
                               f"missing:\n  {shown}{more}")

    # problems too common to name one by one at every start: counted in one line (``detect dataset
    # stats`` lists each)
    SUMMARISED = {"clipped": "boxes reaching outside their image were clipped",
                  "no-label-file": "images have no label file (negative images)"}

    def _report_problems(self) -> None:
        for p in self.problems:
            if p.kind not in self.SUMMARISED:
                logger.warning("%s", p)
        for kind, what in self.SUMMARISED.items():
            count = sum(p.kind == kind for p in self.problems)
            if count:
                logger.info("%s: %d %s", self.description, count, what)

    def _warn_size_mismatch(self, record: ImageRecord, width: int, height: int) -> None:
        if record.image_id not in self._size_warned:
            self._size_warned.add(record.image_id)
            logger.warning("%s: image is %dx%d but its annotation (%s) says %dx%d; boxes clipped",
                           record.path, width, height, record.source, record.width, record.height)
