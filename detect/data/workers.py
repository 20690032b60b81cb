"""Worker processes that die with the process that started them.

A DataLoader worker blocked on writing a batch into a full result pipe outlives a parent killed with
SIGKILL: its sibling workers still hold the pipe's read end, so the write never fails, and PyTorch's
watchdog only looks at the parent between items. Seen here: `tools/infer.py` killed with two workers
left both asleep for good, holding their share of memory. On Linux each worker asks the kernel to
send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(*_ignored) -> None:
    """Call in a freshly started worker process (a DataLoader ``worker_init_fn``, a Pool
    ``initializer``): the worker is killed when its parent process ends, however it ends."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc to ask: PyTorch's watchdog stays the only guard
        return
    if parent == 1 or os.getppid() != parent:  # the parent died before the request was made
        os._exit(0)
