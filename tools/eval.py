#!/usr/bin/env python
"""`detect eval`, for a checkout without the installed command: the same code, flags and output
(detect/cli/eval.py). `python tools/eval.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
