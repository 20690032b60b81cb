"""The ``detect`` command: one subcommand per job, the same flags everywhere.

    detect train --config configs/faster_rcnn/custom.yaml --output-dir runs/mine [key=value ...]
    detect eval --checkpoint runs/mine/model_final.pth
    detect infer --checkpoint runs/mine/model_final.pth --input photos/ [model.test_flip=true]

``python -m detect`` and the scripts in ``tools/`` run the same code. Each subcommand's module holds
its flags (``add_arguments``) and its work (``run``); the work imports torch, the flags do not, so
``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from detect import __version__
from detect.cli import (benchmark, compress, dataset, eval, export, import_weights, infer, proposals, quickstart,
                        train)
from detect.cli.common import run_cli, setup_logging

# in the order a user meets them
COMMANDS = {"quickstart": quickstart, "train": train, "eval": eval, "infer": infer, "export": export,
            "compress": compress, "dataset": dataset, "proposals": proposals, "import-weights": import_weights,
            "benchmark": benchmark}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detect", description="detect: object detection with the R-CNN family "
                                     "(selective search, R-CNN, Fast R-CNN, Faster R-CNN) from one set of parts",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="detect COMMAND --help: that command's flags")
    parser.add_argument("--version", action="version", version=f"detect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    return run_cli(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
