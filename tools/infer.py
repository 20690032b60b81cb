#!/usr/bin/env python
"""Run a trained detector over images: a file, a folder (recursive), a glob, or a video.

  python tools/infer.py --checkpoint runs/quickstart/model_final.pth --input photos/ --output out/
  python tools/infer.py --checkpoint ckpt.pth --input "data/**/*.png" --output out/ --classes RBC,WBC --score-thresh 0.5
  python tools/infer.py --checkpoint ckpt.pth --input clip.mp4 --output out/ --every 5
  python tools/infer.py --checkpoint ckpt.pth --input photos/ --output out/ --skip-existing   # finish an interrupted run

Writes annotated images under OUTPUT/images/ (mirroring the input's folders), detections.json (COCO
results), images.json (ids, paths, sizes), skipped.json (unreadable files and why), and prints a
per-class count.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from detect.data.detection_dataset import DatasetError
from detect.inference.folders import VIDEO_EXTENSIONS, format_summary, run_folder, run_video
from detect.inference.predictor import Predictor
from detect.cli.common import run_cli, setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="image, folder, glob pattern or video")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--score-thresh", type=float, default=None, help="default: the checkpoint's config")
    parser.add_argument("--classes", default=None, help="comma-separated class names to keep")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--save-images", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-existing", action="store_true", help="skip images an earlier run finished")
    parser.add_argument("--every", type=int, default=1, help="videos: process every k-th frame")
    args = parser.parse_args(argv)
    setup_logging()
    if args.batch_size < 1 or args.workers < 0 or args.every < 1:
        parser.error("--batch-size and --every must be at least 1, --workers at least 0")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise DatasetError(f"--output {args.output}: a file of that name exists; the output is a folder")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, score_thresh=args.score_thresh)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    progress = os.environ.get("CI") != "true"
    output = Path(args.output)
    if Path(args.input).suffix.lower() in VIDEO_EXTENSIONS and Path(args.input).is_file():
        summary = run_video(predictor, Path(args.input), output, every=max(args.every, 1), batch_size=args.batch_size,
                            classes=classes, progress=progress)
    else:
        summary = run_folder(predictor, args.input, output, batch_size=args.batch_size, num_workers=args.workers,
                             save_images=args.save_images, skip_existing=args.skip_existing, classes=classes,
                             progress=progress)
    print(format_summary(summary))
    print(f"outputs in {output}: detections.json, images.json, skipped.json" + (", images/" if args.save_images else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
