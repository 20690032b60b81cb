#!/usr/bin/env python
"""`detect import-weights`, for a checkout without the installed command: the same code, flags and
output (detect/cli/import_weights.py). `python tools/import_weights.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["import-weights", *sys.argv[1:]]))
