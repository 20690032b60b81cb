#!/usr/bin/env python
"""`detect benchmark`, for a checkout without the installed command: the same code, flags and output
(detect/cli/benchmark.py). `python tools/benchmark.py --help` lists the flags."""
import sys

from detect.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
