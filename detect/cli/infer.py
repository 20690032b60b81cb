"""Run a trained detector over images: a file, a folder (recursive), a glob, or a video.

  detect infer --checkpoint runs/mine/model_final.pth --input photos/ [--output-dir out/]
  detect infer --checkpoint ckpt.pth --input "data/**/*.png" --classes RBC WBC --score-thresh 0.5
  detect infer --checkpoint ckpt.pth --input photos/ model.test_flip=true model.test_scales=[0.75]
  detect infer --checkpoint ckpt.pth --input clip.mp4 --every 5
  detect infer --checkpoint ckpt.pth --input photos/ --output-dir out/ --skip-existing   # finish an interrupted run

Writes annotated images under OUTPUT_DIR/images/ (mirroring the input's folders), detections.json
(COCO results), images.json (ids, paths, sizes), skipped.json (unreadable files and why), and
prints a per-class count. OUTPUT_DIR defaults to the next free runs/infer, runs/infer2, ...
"""
from __future__ import annotations

import argparse

from detect.cli.common import (ListOf, add_checkpoint, add_device, add_output_dir, add_overrides, add_overwrite,
                               keys_epilog, note, overrides_with_device, progress_enabled)

HELP = "run a detector over images, folders or a video"
INFER_OUTPUTS = ("detections.json", "images.json", "skipped.json", "images", ".results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint(parser)
    parser.add_argument("--input", required=True, help="image, folder, glob pattern or video")
    add_output_dir(parser, "output folder (default: the next free runs/infer, runs/infer2, ...)", old=("--output",))
    parser.add_argument("--score-thresh", type=float, default=None, help="default: the checkpoint's config")
    parser.add_argument("--classes", action=ListOf, default=None, metavar="NAME", help="class names to keep")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes")
    parser.add_argument("--save-images", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-existing", action="store_true", help="finish an interrupted run in --output-dir")
    add_overwrite(parser)
    parser.add_argument("--every", type=int, default=1, help="videos: process every k-th frame")
    add_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides(parser)
    parser.epilog = keys_epilog(test_time_only=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detect.errors import ConfigError
    from detect.inference.folders import VIDEO_EXTENSIONS, format_summary, run_folder, run_video
    from detect.inference.predictor import Predictor
    from detect.utils.output_dirs import claim_output_dir, next_free

    if args.batch_size < 1 or args.workers < 0 or args.every < 1:
        raise ConfigError("--batch-size and --every must be at least 1, --workers at least 0")
    if args.output_dir is None:
        output = next_free("runs", "infer")
        note(f"output folder: {output}")
    else:
        output = claim_output_dir(args.output_dir, INFER_OUTPUTS[:3], "detections of an earlier run", "--skip-existing",
                                  resume=args.skip_existing, overwrite=args.overwrite)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, score_thresh=args.score_thresh,
                                          overrides=list(args.overrides))
    progress = progress_enabled(args)
    if Path(args.input).suffix.lower() in VIDEO_EXTENSIONS and Path(args.input).is_file():
        summary = run_video(predictor, Path(args.input), output, every=args.every, batch_size=args.batch_size,
                            classes=args.classes, progress=progress)
    else:
        summary = run_folder(predictor, args.input, output, batch_size=args.batch_size, num_workers=args.workers,
                             save_images=args.save_images, skip_existing=args.skip_existing, classes=args.classes,
                             progress=progress)
    print(format_summary(summary))
    print(f"outputs in {output}: detections.json, images.json, skipped.json" + (", images/" if args.save_images else ""))
    return 0
