#!/usr/bin/env python
"""`detect dataset`, for a checkout without the installed command: the same code, flags and output
(detect/cli/dataset.py). `python tools/dataset.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not
from detect.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["dataset", *sys.argv[1:]]))
