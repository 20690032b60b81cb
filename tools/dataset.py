#!/usr/bin/env python
"""`detect dataset`, for a checkout without the installed command: the same code, flags and output
(detect/cli/dataset.py). `python tools/dataset.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["dataset", *sys.argv[1:]]))
