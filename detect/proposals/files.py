"""Proposal files: the format Fast R-CNN and R-CNN read their proposals from, and its lookup.

Format (``.npz``, read with ``allow_pickle=False``: a proposals file cannot run code):

- ``keys`` ``(I,)`` str: each image's file path relative to the split's common image folder
  (``BloodImage_00000.jpg`` for VOC), the lookup key;
- ``image_ids`` ``(I,)`` int64: the dataset's image ids (a second lookup key);
- ``offsets`` ``(I + 1,)`` int64: image ``i`` owns rows ``offsets[i]:offsets[i + 1]`` of
- ``boxes`` ``(M, 4)`` float32 xyxy in the original image's pixels, best-ranked first, and
  optionally ``scores`` ``(M,)`` float32;
- ``meta``: a JSON string with the method and settings that made the file.

A file a user brings needs only ``boxes`` and ``offsets`` with ``keys`` or ``image_ids``;
``.json`` is accepted too: ``[{"file_name" or "image_id": ..., "boxes": [[x1, y1, x2, y2],
...], "scores": [...]}, ...]``. Computing a file: ``detect.proposals.cache``; giving a dataset its
proposals: ``detect.proposals.attach``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from detect.errors import ProposalError

FORMAT = "detect-proposals"


@dataclass
class ProposalFile:
    """Proposals of one split, looked up by an image's key (relative path) or image id."""

    path: Path
    keys: np.ndarray
    image_ids: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    scores: Optional[np.ndarray]
    meta: Dict

    def __post_init__(self):
        self._by_key = {str(k): i for i, k in enumerate(self.keys) if str(k)}
        self._by_id = {int(k): i for i, k in enumerate(self.image_ids)}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def index_of(self, key: Optional[str] = None, image_id: Optional[int] = None) -> Optional[int]:
        """Row of an image: by key when the file has keys (VOC image ids are positions within a
        split, so they could silently match another split's image), else by image id."""
        if self._by_key:
            return self._by_key.get(key) if key is not None else None
        return self._by_id.get(int(image_id)) if image_id is not None else None

    def index_of_path(self, path: Union[str, Path]) -> Optional[int]:
        """Row of the one key that ``path`` ends with (a user's file keyed by COCO's ``file_name``,
        relative to the image folder, or by any other tail of the path), or None (none, or several)."""
        full = "/" + Path(path).resolve().as_posix().lstrip("/")
        if not hasattr(self, "_by_name"):
            self._by_name: Dict[str, List[int]] = {}
            for k, i in self._by_key.items():
                self._by_name.setdefault(k.rsplit("/", 1)[-1], []).append(i)
        found = [i for i in self._by_name.get(full.rsplit("/", 1)[-1], [])
                 if full.endswith("/" + str(self.keys[i]).lstrip("./"))]
        return found[0] if len(found) == 1 else None

    def get(self, key: Optional[str] = None, image_id: Optional[int] = None
            ) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """``(boxes (N, 4), scores (N,) or None)`` of an image, or None when it is not in the file."""
        index = self.index_of(key, image_id)
        if index is None:
            return None
        lo, hi = self.offsets[index], self.offsets[index + 1]
        scores = None if self.scores is None else self.scores[lo:hi]
        return self.boxes[lo:hi], scores


def image_keys(paths: Sequence[Path]) -> List[str]:
    """Each path relative to the folder all of them share (``a/x.jpg``, ``b/x.jpg`` stay apart)."""
    if not paths:
        return []
    parents = [str(Path(p).resolve().parent) for p in paths]
    common = Path(os.path.commonpath(parents))
    return [Path(p).resolve().relative_to(common).as_posix() for p in paths]


def load_proposals(path) -> ProposalFile:
    """Read a proposals file (``.npz`` as written here or ``.json``), checking its layout."""
    path = Path(path)
    if not path.is_file():
        raise ProposalError(f"{path}: proposals file not found")
    if path.suffix == ".json":
        return _load_json(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ProposalError(f"{path}: not a readable .npz proposals file ({e})") from None
    missing = [k for k in ("boxes", "offsets") if k not in arrays]
    if missing or ("keys" not in arrays and "image_ids" not in arrays):
        raise ProposalError(f"{path}: a proposals file needs 'boxes', 'offsets' and 'keys' or 'image_ids'; "
                            f"it has {sorted(arrays)}")
    offsets = arrays["offsets"].astype(np.int64)
    boxes = arrays["boxes"].astype(np.float32).reshape(-1, 4)
    count = len(offsets) - 1
    if count < 0 or offsets[0] != 0 or offsets[-1] != len(boxes) or np.any(np.diff(offsets) < 0):
        raise ProposalError(f"{path}: 'offsets' must rise from 0 to the number of boxes ({len(boxes)})")
    keys = arrays.get("keys", np.array([""] * count)).astype(str)
    image_ids = arrays.get("image_ids", np.full(count, -1)).astype(np.int64)
    if len(keys) != count or len(image_ids) != count:
        raise ProposalError(f"{path}: {count} images in 'offsets' but {len(keys)} keys / {len(image_ids)} ids")
    scores = arrays.get("scores")
    if scores is not None and len(scores) != len(boxes):
        raise ProposalError(f"{path}: {len(scores)} scores for {len(boxes)} boxes")
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    return ProposalFile(path, keys, image_ids, offsets, boxes,
                        None if scores is None else scores.astype(np.float32), meta)


def _load_json(path: Path) -> ProposalFile:
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ProposalError(f"{path}: not a readable JSON proposals file ({e})") from None
    if not isinstance(items, list):
        raise ProposalError(f"{path}: expected a list of {{'file_name' or 'image_id', 'boxes', 'scores'}}")
    keys, ids, boxes, scores, offsets = [], [], [], [], [0]
    for n, item in enumerate(items):
        b = np.asarray(item.get("boxes", []), np.float32).reshape(-1, 4) if isinstance(item, dict) else None
        if b is None or ("file_name" not in item and "image_id" not in item):
            raise ProposalError(f"{path}: entry {n} needs 'boxes' and 'file_name' or 'image_id'")
        keys.append(str(item.get("file_name", "")))
        ids.append(int(item.get("image_id", -1)))
        boxes.append(b)
        if "scores" in item:
            scores.append(np.asarray(item["scores"], np.float32).reshape(-1))
        offsets.append(offsets[-1] + len(b))
    has_scores = len(scores) == len(items) and len(items) > 0
    return ProposalFile(path, np.array(keys), np.array(ids, np.int64), np.array(offsets, np.int64),
                        np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
                        np.concatenate(scores) if has_scores else None, {})


def write_proposals(path, keys: Sequence[str], image_ids: Sequence[int], boxes: Sequence[np.ndarray],
                    meta: Dict, scores: Optional[Sequence[np.ndarray]] = None) -> None:
    """Write a proposals file atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "keys": np.array(list(keys), dtype=str),
        "image_ids": np.asarray(image_ids, np.int64),
        "offsets": np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64),
        "boxes": (np.concatenate(boxes) if len(boxes) else np.zeros((0, 4))).astype(np.float32).reshape(-1, 4),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    if scores is not None:
        arrays["scores"] = np.concatenate(scores).astype(np.float32) if len(scores) else np.zeros(0, np.float32)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def record_rows(proposals: ProposalFile, records: Sequence, fix: str = "") -> List[int]:
    """The file's row of each record (by key, else id); a record not in the file is an error naming
    the image, the file and, with ``fix``, how to compute it."""
    keys = image_keys([r.path for r in records])
    rows = []
    for record, key in zip(records, keys):
        row = proposals.index_of(key, record.image_id)
        if row is None:
            row = proposals.index_of_path(record.path)
        if row is None:
            hint = f". Compute them with: {fix}" if fix else ""
            raise ProposalError(f"{record.path}: no proposals for this image in {proposals.path} "
                                f"(made for another split, or interrupted?){hint}")
        rows.append(row)
    return rows


def proposals_for_records(proposals: ProposalFile, records: Iterable, command_hint: str = ""
                          ) -> List[np.ndarray]:
    """Each record's boxes; a record missing from the file is an error naming it and the fix."""
    offsets, boxes = proposals.offsets, proposals.boxes
    return [boxes[offsets[i]:offsets[i + 1]] for i in record_rows(proposals, list(records), command_hint)]
