"""What every command-line tool shares: logging to the terminal, and errors as one clear line.

A user's mistake (a missing file, an unknown config key, a bad annotation) is reported as
``error: <message>`` with exit status 2, never as a traceback from deep inside a library.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

from detect.errors import USER_ERRORS


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


def user_message(error: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker arrives re-raised in the main
    process with the worker's whole traceback as its text; the user gets its last line, the
    original message (``"<path>: <what is wrong>"``), without the exception's module path."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a tool's ``main``; user errors become ``error: ...`` on stderr and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
