#!/usr/bin/env python
"""Truncated SVD of a checkpoint's fully connected head (Fast R-CNN, section 3.1) for faster testing.

  python tools/compress.py --checkpoint runs/fast_bccd/model_final.pth --ranks 256 64 \
         --output runs/fast_bccd/model_svd.pth [--eval] [key=value ...]

Prints the head's time on 2000 RoIs before and after, and with --eval the test AP of both.
"""
from __future__ import annotations

import argparse
import sys

from detect.engine.compress import compress_checkpoint, parameter_count, time_box_head
from detect.engine.device import resolve_device
from detect.utils.cli import run_cli, setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ranks", type=int, nargs=2, required=True, metavar=("FC6", "FC7"),
                        help="singular values kept for fc6 and fc7 (0 leaves a layer as it is)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--eval", action="store_true", help="evaluate both on the config's test set")
    parser.add_argument("--num-rois", type=int, default=2000)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    setup_logging()
    out = compress_checkpoint(args.checkpoint, args.ranks, args.output, args.overrides)
    before, after = out["original"], out["compressed"]
    t0, t1 = time_box_head(before, args.num_rois), time_box_head(after, args.num_rois)
    p0, p1 = parameter_count(before.roi_head.box_head), parameter_count(after.roi_head.box_head)
    print(f"wrote {args.output}")
    print(f"box head + predictor on {args.num_rois} RoIs: {t0 * 1000:.1f} ms -> {t1 * 1000:.1f} ms "
          f"({t0 / t1:.2f}x faster); head parameters {p0 / 1e6:.2f} M -> {p1 / 1e6:.2f} M")
    if args.eval:
        from detect.engine.trainer import evaluate

        cfg = out["config"]
        device = resolve_device(cfg.device)
        rows = []
        for name, model in (("original", before), ("compressed", after)):
            m = evaluate(model.to(device), cfg, device, output_dir=None, progress=False)
            rows.append((name, m["coco"]["AP"], m["coco"]["AP50"], m["timing"]["network_seconds_per_image"]))
        for name, ap, ap50, sec in rows:
            print(f"{name:<11} AP {ap:.4f}  AP50 {ap50:.4f}  network {sec * 1000:.1f} ms/image")
        print(f"change: AP {rows[1][1] - rows[0][1]:+.4f}, AP50 {rows[1][2] - rows[0][2]:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
