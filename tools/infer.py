#!/usr/bin/env python
"""`detect infer`, for a checkout without the installed command: the same code, flags and output
(detect/cli/infer.py). `python tools/infer.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
