"""Run a tool and SIGKILL it at a chosen, reproducible point: the fault-injection suite's launcher.

    python tests/faults/killpoint.py KILL tools/train.py --config ... [args]

KILL is one of
  ``none``                  run to the end (the uninterrupted twin runs through the same launcher);
  ``step:N``                right after this process's N-th optimizer step (between checkpoints);
  ``save:N:FRACTION``       inside this process's N-th ``torch.save`` or ``numpy.savez``: FRACTION of
                            the bytes are on disk (flushed), the rest never arrive;
  ``call:MODULE.NAME:N``    on entering the N-th call of a module-level function (e.g. after N-1
                            images of ``tools/infer.py`` were finished);
  ``set:MODULE.NAME=INT``   not a kill: sets a module constant first (e.g. a smaller shard size).

Several, comma-separated, all apply.

The kill is a real ``SIGKILL`` of this process (nothing runs after it: no ``finally``, no atexit,
no flush of Python buffers); DataLoader workers and pool processes lose their parent and exit. The
launcher only patches in its trigger and then runs the tool as ``__main__``.
"""
from __future__ import annotations

import importlib
import io
import os
import runpy
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "none":
        return
    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        target, count = int(rest), [0]

        def after_step(optimizer, args, kwargs):
            count[0] += 1
            if count[0] == target:
                die()

        register_optimizer_step_post_hook(after_step)
    elif kind == "save":
        import numpy as np
        import torch

        n, fraction = rest.split(":")
        target, share, count = int(n), float(fraction), [0]
        save, savez = torch.save, np.savez

        def cut_short(write, f) -> None:
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            handle.write(data[:int(len(data) * share)])
            handle.flush()
            os.fsync(handle.fileno())
            die()

        def torch_save(obj, f, *args, **kwargs):
            if isinstance(f, io.BytesIO):  # pickling a tensor (e.g. for all_gather_object) is no file write
                return save(obj, f, *args, **kwargs)
            count[0] += 1
            if count[0] != target:
                return save(obj, f, *args, **kwargs)
            cut_short(lambda buffer: save(obj, buffer, *args, **kwargs), f)

        def numpy_savez(file, *args, **kwargs):
            count[0] += 1
            if count[0] != target:
                return savez(file, *args, **kwargs)
            name = str(file) if str(file).endswith(".npz") else f"{file}.npz"
            cut_short(lambda buffer: savez(buffer, *args, **kwargs), name)

        torch.save, np.savez = torch_save, numpy_savez
    elif kind == "call":
        where, n = rest.rsplit(":", 1)
        module_name, name = where.rsplit(".", 1)
        module = importlib.import_module(module_name)
        target, count, original = int(n), [0], getattr(module, name)

        def counted(*args, **kwargs):
            count[0] += 1
            if count[0] == target:
                die()
            return original(*args, **kwargs)

        setattr(module, name, counted)
    elif kind == "set":
        where, value = rest.split("=")
        module_name, name = where.rsplit(".", 1)
        setattr(importlib.import_module(module_name), name, int(value))
    else:
        raise SystemExit(f"killpoint: unknown kill spec {spec!r}")


if __name__ == "__main__":
    specs, script, *args = sys.argv[1:]
    for spec in specs.split(","):
        arm(spec)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
