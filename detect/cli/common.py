"""What every command shares: the flags that mean the same thing everywhere, the notes for old
spellings, logging to the terminal, and errors as one clear line.

A user's mistake (a missing file, an unknown config key, a bad annotation, an output folder that
holds another run) is reported as ``error: <message>`` with exit status 2, never as a traceback from
deep inside a library. Nothing here imports torch: ``detect --help`` answers at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Optional, Sequence

from detect.errors import USER_ERRORS

REMOVED_IN = "0.3"


def note(text: str) -> None:
    """One line on stderr for the user (an old spelling, a default chosen for them)."""
    print(f"note: {text}", file=sys.stderr)


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


def run_cli(main: Callable[..., int], *args: Any) -> int:
    """Run a command; user errors become ``error: ...`` on stderr and exit status 2."""
    try:
        return main(*args)
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class OldSpelling(argparse.Action):
    """A flag's spelling before 0.2: stores into the new flag's ``dest`` and says the new name once."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        note(f"{option_string} is now {self.new}; the old spelling works until detect {REMOVED_IN}")
        setattr(namespace, self.dest, values)


class ListOf(argparse.Action):
    """A list flag, written one way: space-separated (``--classes a b``). A comma-separated list (the
    spelling of some tools before 0.2) is split, with a note."""

    def __init__(self, option_strings, dest, item: Callable[[str], Any] = str, choices=None, **kwargs):
        # the choices are checked here, after a comma-separated list is split (argparse's own check
        # would refuse "a,b" whole)
        self.item, self.allowed = item, choices
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if any("," in v for v in values):
            note(f"lists are space-separated: {option_string} {' '.join(v for x in values for v in x.split(',') if v)}"
                 f" (commas work until detect {REMOVED_IN})")
        try:
            items = [self.item(v.strip()) for x in values for v in x.split(",") if v.strip()]
        except ValueError as e:
            parser.error(f"{option_string}: {e}")
        wrong = [v for v in items if self.allowed is not None and v not in self.allowed]
        if wrong:
            parser.error(f"{option_string}: {' '.join(map(str, wrong))} is not one of {' '.join(map(str, self.allowed))}")
        setattr(namespace, self.dest, items)


def add_old_spelling(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    parser.add_argument(old, action=OldSpelling, new=new, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_config(parser: argparse.ArgumentParser, required: bool = False,
               help: str = "config file (configs/<stage>/<dataset>.yaml)") -> None:
    parser.add_argument("--config", required=required, help=help)


def add_checkpoint(parser: argparse.ArgumentParser, required: bool = True,
                   help: str = "a .pth checkpoint, or an exported .onnx model") -> None:
    parser.add_argument("--checkpoint", required=required, help=help)


def add_output_dir(parser: argparse.ArgumentParser, help: str, old: Sequence[str] = ()) -> None:
    """``--output-dir``, always a folder; ``old`` spellings still work, with a note."""
    parser.add_argument("--output-dir", help=help)
    for spelling in old:
        add_old_spelling(parser, spelling, "--output-dir", "output_dir")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what an earlier run left in --output-dir (refused otherwise)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the config's device, auto)")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. model.test_flip=true (the keys: detect train --help)")


def overrides_with_device(args: argparse.Namespace) -> list:
    """The command's ``key=value`` overrides, with ``--device`` as ``device=...`` last."""
    return list(getattr(args, "overrides", []) or []) + ([f"device={args.device}"] if getattr(args, "device", None) else [])


def keys_epilog(test_time_only: bool) -> str:
    """The config keys a ``key=value`` override may set, from the one table in detect.config."""
    from detect.config import format_keys

    title = ("test-time config keys (any checkpoint takes them as key=value)" if test_time_only
             else "config keys (key=value on the command line, or in a config file)")
    return f"{title}:\n{format_keys(test_time_only)}"


def progress_enabled(args: argparse.Namespace) -> bool:
    """A progress bar unless ``--no-progress`` or the CI environment asks for none."""
    import os

    return not getattr(args, "no_progress", False) and os.environ.get("CI") != "true"
