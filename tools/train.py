#!/usr/bin/env python
"""`detect train`, for a checkout without the installed command: the same code, flags and output
(detect/cli/train.py). `python tools/train.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
