#!/usr/bin/env python
"""`detect train`, for a checkout without the installed command: the same code, flags and output
(detect/cli/train.py). `python tools/train.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not
from detect.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
