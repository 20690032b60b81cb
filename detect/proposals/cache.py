"""Proposal files: one per dataset split, computed once, read by Fast R-CNN and R-CNN.

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
...], "scores": [...]}, ...]``.

``compute_proposals`` fills a file in parallel processes and resumes: finished images are
written to ``<file>.partial/`` in shards as they complete, and a rerun skips them. A file or
partial folder made with other settings is never reused: the run stops and says so.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from detect.errors import ProposalError
from detect.utils.files import write_text_atomic

LOG = logging.getLogger(__name__)
FORMAT = "detect-proposals"
# bump when selective search changes its output for the same settings, so old caches are refused
ALGORITHM_VERSION = 1
FLUSH_EVERY = 20  # finished images per shard of a partial run: what a kill can cost, at most (or 60 s of work)


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


# ---------------------------------------------------------------------------------------------
# computing a split's selective-search proposals


def default_proposals_path(cfg, split: str, mode: str) -> Path:
    """``data.<split>.proposals`` if set, else ``proposals/<dataset>_<split name>_<mode>.npz``."""
    spec = cfg.data[split]
    if spec.proposals:
        return Path(spec.proposals)
    if spec.format == "voc":
        name = f"{Path(spec.root).name}_{spec.split}"
    else:
        name = Path(spec.ann_file).stem
    return Path("proposals") / f"{name}_{mode}.npz"


def search_settings(mode: str, seed: int, max_side: Optional[int]) -> Dict:
    """What decides the output: the cache records it and refuses to mix it with other settings."""
    return {"method": "selective_search", "mode": mode, "seed": int(seed),
            "max_side": None if max_side is None else int(max_side), "algorithm_version": ALGORITHM_VERSION}


def compute_proposals(records: Sequence, output, mode: str = "fast", seed: int = 0,
                      max_side: Optional[int] = None, workers: int = 0, overwrite: bool = False,
                      progress: bool = True, flush_every: Optional[int] = None, dataset: str = "") -> Dict:
    """Selective search over ``records`` (``ImageRecord``-like: ``path``, ``image_id``) into ``output``.

    Resumable: finished images land in ``<output>.partial/`` and a rerun skips them. An existing
    complete file with the same settings and images is kept as it is. Unreadable images are
    reported and left out (the others are processed); they are listed in the file's meta.

    Returns ``{"output", "images", "computed", "reused", "failed": [{"file", "error"}], "seconds"}``.
    """
    from tqdm import tqdm

    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    keys = image_keys([r.path for r in records])
    settings = search_settings(mode, seed, max_side)
    meta = {"format": FORMAT, "settings": settings, "dataset": dataset, "num_images": len(records)}
    if overwrite:
        output.unlink(missing_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    if output.exists():
        existing = load_proposals(output)
        _check_settings(existing.meta.get("settings"), settings, output)
        failed_before = set(existing.meta.get("failed", {}))  # keys of unreadable images
        if set(map(str, existing.keys)) | failed_before >= set(keys):
            LOG.info("%s already holds these proposals (same settings); nothing to do", output)
            return {"output": str(output), "images": len(records), "computed": 0, "reused": len(existing),
                    "failed": [], "seconds": 0.0}
        raise ProposalError(f"{output}: made for other images ({len(existing)} images, this split has "
                            f"{len(records)}); choose another file or pass --overwrite")
    done = _read_partial(partial, settings)
    todo = [i for i, k in enumerate(keys) if k not in done]
    flush_every = flush_every or FLUSH_EVERY
    failed: List[Dict[str, str]] = []
    start = time.perf_counter()
    if todo:
        partial.mkdir(parents=True, exist_ok=True)
        write_text_atomic(partial / "meta.json", json.dumps(meta, sort_keys=True))  # never half a meta.json
        jobs = [(i, str(records[i].path), mode, seed, max_side) for i in todo]
        workers = workers or os.cpu_count() or 1
        buffer: List[Tuple[int, np.ndarray]] = []
        last_flush = time.perf_counter()
        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="selective search",
                   unit="img", disable=not progress)
        with _pool(workers) as pool:
            for index, boxes, error in pool.imap_unordered(_search_one, jobs, chunksize=1):
                bar.update(1)
                if error:
                    LOG.warning("%s", error)
                    failed.append({"file": str(records[index].path), "key": keys[index], "error": error})
                    continue
                buffer.append((index, boxes))
                if len(buffer) >= flush_every or time.perf_counter() - last_flush > 60:
                    _flush(partial, buffer, keys, records)
                    buffer, last_flush = [], time.perf_counter()
        _flush(partial, buffer, keys, records)
        bar.close()
        done = _read_partial(partial, settings)
    order = [i for i, k in enumerate(keys) if k in done]
    meta["failed"] = {f["key"]: f["error"] for f in failed}
    write_proposals(output, [keys[i] for i in order], [records[i].image_id for i in order],
                    [done[keys[i]] for i in order], meta)
    shutil.rmtree(partial, ignore_errors=True)
    return {"output": str(output), "images": len(records), "computed": len(todo) - len(failed),
            "reused": len(records) - len(todo), "failed": failed, "seconds": time.perf_counter() - start}


def _settings_text(settings: Dict) -> str:
    return ", ".join(f"{k} {settings.get(k)!r}" for k in ("mode", "seed", "max_side", "algorithm_version"))


def _check_settings(found: Optional[Dict], wanted: Dict, where: Path) -> None:
    if found != wanted:
        raise ProposalError(f"{where}: made with other settings ({json.dumps(found, sort_keys=True)}); "
                            f"this run asks for {json.dumps(wanted, sort_keys=True)}. Choose another "
                            f"output file or pass --overwrite to recompute")


def _read_partial(partial: Path, settings: Dict) -> Dict[str, np.ndarray]:
    """The finished images of an interrupted run, by key (after checking its settings)."""
    if not partial.is_dir():
        return {}
    meta_file = partial / "meta.json"
    found = json.loads(meta_file.read_text()).get("settings") if meta_file.is_file() else None
    _check_settings(found, settings, partial)
    done: Dict[str, np.ndarray] = {}
    for shard in _shards(partial):
        part = load_proposals(shard)
        for i, key in enumerate(part.keys):
            done[str(key)] = part.boxes[part.offsets[i]:part.offsets[i + 1]]
    return done


def _shards(partial: Path) -> List[Path]:
    """The finished shards, in order; not the temporary file of a write a kill cut short."""
    return sorted(p for p in partial.glob("shard_*.npz") if re.fullmatch(r"shard_\d{6}\.npz", p.name))


def _flush(partial: Path, buffer: List[Tuple[int, np.ndarray]], keys: List[str], records: Sequence) -> None:
    if not buffer:
        return
    shards = _shards(partial)
    n = int(shards[-1].name[6:12]) + 1 if shards else 0
    write_proposals(partial / f"shard_{n:06d}.npz", [keys[i] for i, _ in buffer],
                    [records[i].image_id for i, _ in buffer], [b for _, b in buffer], {})


def _pool(workers: int):
    # spawn: the parent may hold OpenMP / torch thread pools that fork would copy half-initialised
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)


def _init_worker() -> None:
    import cv2
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def _search_one(job) -> Tuple[int, Optional[np.ndarray], str]:
    index, path, mode, seed, max_side = job
    from detect.data.image_io import ImageReadError, read_image
    from detect.proposals.search import selective_search
    try:
        image = read_image(path)
    except ImageReadError as e:
        return index, None, str(e)
    return index, selective_search(image, mode=mode, seed=seed, max_side=max_side), ""


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


def compute_command(which: str) -> str:
    return (f"python tools/proposals.py compute --config <your config> --split {which} "
            f"--output proposals/<name>.npz, then set data.{which}.proposals=proposals/<name>.npz")


def attach_proposals(dataset, cfg, which: str, topk: int, required: bool) -> bool:
    """Give every item of ``dataset`` its proposals from ``data.<which>.proposals`` (top ``topk``).

    Every image is looked up now, so a missing one fails before any training, naming the image and
    the command that computes the file. Without a file: an error when ``required`` (training),
    else False (inference then computes proposals on the fly).
    """
    path = cfg.data[which].proposals
    if not path:
        if required:
            raise ProposalError(f"data.{which}.proposals is not set: {cfg.model.type} trains on precomputed "
                                f"proposals. Compute them with: {compute_command(which)}")
        return False
    if not Path(path).is_file():
        raise ProposalError(f"data.{which}.proposals: {path}: proposals file not found. "
                            f"Compute it with: {compute_command(which)}")
    proposals = load_proposals(path)
    made = proposals.meta.get("settings")
    p = cfg.model.proposals
    wanted = search_settings(p.mode, p.seed, p.max_side or None)
    if made and made != wanted:  # a user's own JSON or .npz has no settings: nothing to compare
        LOG.warning("data.%s.proposals: %s was computed with other selective search settings (%s) than "
                    "model.proposals (%s); an image without a proposals file at test time gets proposals of the "
                    "config's kind, unlike the ones the model trained on. Recompute the file or set "
                    "model.proposals to match", which, path, _settings_text(made), _settings_text(wanted))
    index = record_rows(proposals, list(dataset.records), compute_command(which))
    offsets, boxes = proposals.offsets, proposals.boxes

    def lookup(i: int) -> np.ndarray:
        lo = offsets[index[i]]
        return boxes[lo:min(offsets[index[i] + 1], lo + topk)]

    dataset.proposals = lookup
    LOG.info("%s: proposals from %s (%.0f per image on average, using the best %d)", dataset.description, path,
             len(boxes) / max(len(proposals), 1), topk)
    return True
