#!/usr/bin/env python
"""`detect export`, for a checkout without the installed command: the same code, flags and output
(detect/cli/export.py). `python tools/export.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
