#!/usr/bin/env python
"""Benchmarks: tables printed, ratios against the reference measured in the same run.

  python tools/benchmark.py frcnn --config configs/faster_rcnn/bccd.yaml [--train-minutes 15] [--json out.json] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detect.config import load_config
from detect.utils.cli import run_cli, setup_logging


def cmd_frcnn(args) -> int:
    from detect.benchmark.frcnn import format_frcnn, run_frcnn_benchmark

    cfg = load_config(args.config, args.overrides)
    rows = run_frcnn_benchmark(cfg, num_images=args.num_images, train_steps=args.train_steps)
    print(format_frcnn(rows), flush=True)
    if args.train_minutes > 0:
        from detect.benchmark.frcnn import accuracy_same_budget, format_accuracy

        rows["accuracy"] = accuracy_same_budget(cfg, args.train_minutes, args.output_dir)
        print(format_accuracy(rows["accuracy"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("frcnn", help="Faster R-CNN against torchvision's, same backbone and input size")
    p.add_argument("--config", required=True)
    p.add_argument("--num-images", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--train-minutes", type=float, default=0.0,
                   help="also train both from scratch for this many minutes each and compare AP")
    p.add_argument("--output-dir", default="runs/benchmark_frcnn", help="run folders of the accuracy comparison")
    p.add_argument("--json", help="also write the figures as json")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_frcnn)
    args = parser.parse_args(argv)
    setup_logging()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
