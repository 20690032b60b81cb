"""Where a command writes: never over what another command, or an earlier run, made.

Every command that writes files writes them into a folder of its own. Without ``--output-dir`` it
takes the next free name (Ultralytics' convention: ``runs/train``, ``runs/train2``, ...; ``eval``
and ``export`` a folder inside the checkpoint's run). A folder given explicitly that already holds
the command's outputs is refused in one line naming what is there and the ways on: continue
(``--resume``, ``--skip-existing``), another folder, or ``--overwrite``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Union

from detect.errors import OutputExistsError

# what a training run writes into its folder: a folder holding any of these holds a run
TRAINING_OUTPUTS = ("last_checkpoint", "model_final.pth", "model_best.pth", "model_[0-9]*.pth", "log.jsonl",
                    "results.csv", "events.out.tfevents.*", "config.yaml", "metrics.json", "loss_curve.png",
                    "pr_curves.png")


def next_free(parent: Union[str, Path], name: str) -> Path:
    """``parent/name``, or ``parent/name2``, ``name3``, ... : the first that does not exist."""
    parent = Path(parent)
    candidate, number = parent / name, 1
    while candidate.exists():
        number += 1
        candidate = parent / f"{name}{number}"
    return candidate


def existing_outputs(folder: Union[str, Path], patterns: Iterable[str]) -> List[str]:
    """The names in ``folder`` that match ``patterns`` (glob), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({p.name for pattern in patterns for p in folder.glob(pattern)})


def claim_output_dir(folder: Union[str, Path], patterns: Iterable[str], what: str, resume_flag: Optional[str] = None,
                     resume: bool = False, overwrite: bool = False) -> Path:
    """``folder``, checked: when it holds outputs matching ``patterns`` (of ``what``: "a training run")
    and neither ``resume`` nor ``overwrite`` is set, an :class:`OutputExistsError` that names them,
    ``resume_flag`` (the command's way to continue) and the other ways on. With ``overwrite`` the
    matching files are removed first (nothing else in the folder is touched)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: a file of that name exists; the output is a folder")
    found = existing_outputs(folder, patterns)
    if found and overwrite:
        for name in found:
            (folder / name).unlink()
    elif found and not resume:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        ways = ([f"continue it with {resume_flag}"] if resume_flag else []) + \
            ["choose another --output-dir", "replace it with --overwrite"]
        raise OutputExistsError(f"{folder} already holds {what} ({shown}): {', '.join(ways[:-1])} or {ways[-1]}")
    return folder
