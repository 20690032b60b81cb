#!/usr/bin/env python
"""`detect compress`, for a checkout without the installed command: the same code, flags and output
(detect/cli/compress.py). `python tools/compress.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not
from detect.cli import main  # noqa: E402
from detect.cli.common import note

COMMANDS = ("svd", "prune", "report")

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        # the tool's first form, before pruning joined it: svd without its name
        note("tools/compress.py --checkpoint ... is now detect compress svd --checkpoint ...; the old form works "
             "until detect 0.3")
        argv = ["svd", *argv]
    sys.exit(main(["compress", *argv]))
