#!/usr/bin/env python
"""Evaluate a checkpoint on its config's test set (or another, by override) with the COCO and VOC metrics.

  python tools/eval.py --checkpoint runs/frcnn_bccd/model_final.pth [--output DIR] [key=value ...]
  python tools/eval.py --checkpoint ckpt.pth --config configs/faster_rcnn/bccd.yaml data.test.split=val

Prints the table and writes metrics.json and pr_curves.png into --output (default: the checkpoint's folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detect.engine.checkpoint import load_model
from detect.engine.evaluation import format_metrics
from detect.engine.device import resolve_device
from detect.engine.trainer import evaluate
from detect.utils.cli import run_cli, setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", help="use this config instead of the one stored in the checkpoint")
    parser.add_argument("--output", help="folder for metrics.json and pr_curves.png (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    setup_logging()
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    model, cfg = load_model(args.checkpoint, args.config, overrides)
    device = resolve_device(cfg.device)
    model.to(device)
    output = Path(args.output) if args.output else Path(args.checkpoint).parent
    metrics = evaluate(model, cfg, device, output_dir=output)
    print(format_metrics(metrics))
    t = metrics["timing"]
    print(f"\n{t['images']} images, {t['seconds_per_image'] * 1000:.1f} ms per image "
          f"({t['model_seconds_per_image'] * 1000:.1f} ms in the model); wrote {output / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
