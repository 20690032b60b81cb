#!/usr/bin/env python
"""`detect quickstart`, for a checkout without the installed command: the same code, flags and output
(detect/cli/quickstart.py). `python tools/quickstart.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))
