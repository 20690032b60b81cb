"""Worker processes end with the process that started them, however it ends."""
import os
import signal
import subprocess
import sys
import time

import pytest

CHILD = "from detect.data.workers import die_with_parent; {call}import time; time.sleep(60)"
PARENT = ("import subprocess, sys, time; "
          "p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True); time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended
    except OSError:
        return False


def _orphan_after_parent_killed(call: str) -> bool:
    """Start a parent that starts a sleeping child, SIGKILL the parent: is the child still alive 5 s on?"""
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(child=CHILD.format(call=call))],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child has imported and made its request
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_with_its_parent():
    assert _orphan_after_parent_killed("") is True  # without the request the child sleeps on
    assert _orphan_after_parent_killed("die_with_parent(); ") is False
