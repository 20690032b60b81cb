#!/usr/bin/env python
"""Train a detector.

  python tools/train.py --config configs/faster_rcnn/bccd.yaml --output-dir runs/frcnn_bccd [key=value ...]
  python tools/train.py --config configs/faster_rcnn/bccd.yaml --output-dir runs/frcnn_bccd --resume
  torchrun --nproc_per_node 2 tools/train.py --config ... --output-dir ...   # distributed data parallel

Writes config.yaml, log.jsonl, periodic model_<iter>.pth, model_final.pth, loss_curve.png and, after
evaluating on data.test, metrics.json and pr_curves.png into the output folder.
"""
from __future__ import annotations

import argparse
import os
import sys

from detect.config import load_config
from detect.training.trainer import TrainingDiverged, train
from detect.cli.common import run_cli, setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file (configs/<stage>/<dataset>.yaml)")
    parser.add_argument("--output-dir", required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg, args.output_dir, resume=args.resume,
              progress=not args.no_progress and os.environ.get("CI") != "true")
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
