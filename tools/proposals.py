#!/usr/bin/env python
"""`detect proposals`, for a checkout without the installed command: the same code, flags and output
(detect/cli/proposals.py). `python tools/proposals.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["proposals", *sys.argv[1:]]))
