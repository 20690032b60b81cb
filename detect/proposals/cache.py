"""Computing a split's selective-search proposals into a proposals file (``detect.proposals.files``).

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
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from detect.data.workers import die_with_parent
from detect.errors import ProposalError
from detect.proposals.files import FORMAT, image_keys, load_proposals, write_proposals
from detect.utils.atomic import write_text_atomic

LOG = logging.getLogger(__name__)
# bump when selective search changes its output for the same settings, so old caches are refused
ALGORITHM_VERSION = 1
FLUSH_EVERY = 20  # finished images per shard of a partial run: what a kill can cost, at most (or 60 s of work)


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


def settings_text(settings: Dict) -> str:
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
    die_with_parent()  # a killed run leaves no searching workers behind


def _search_one(job) -> Tuple[int, Optional[np.ndarray], str]:
    index, path, mode, seed, max_side = job
    from detect.data.image_io import ImageReadError, read_image
    from detect.proposals.search import selective_search
    try:
        image = read_image(path)
    except ImageReadError as e:
        return index, None, str(e)
    return index, selective_search(image, mode=mode, seed=seed, max_side=max_side), ""
