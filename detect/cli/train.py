"""Train a detector, then evaluate it on the config's test split.

  detect train --config configs/faster_rcnn/custom.yaml --output-dir runs/mine data.train.ann_file=...
  detect train --config configs/faster_rcnn/bccd.yaml --output-dir runs/bccd --resume   # after an interruption
  torchrun --nproc_per_node 2 -m detect train --config ... --output-dir ...           # distributed data parallel

The run folder (default: the next free runs/train, runs/train2, ...) gets config.yaml, log.jsonl,
periodic model_<iter>.pth, model_final.pth, loss_curve.png and, after evaluating on data.test,
metrics.json and pr_curves.png. A folder that already holds a run is refused: --resume continues it,
--overwrite replaces it.
"""
from __future__ import annotations

import argparse

from detect.cli.common import (add_config, add_device, add_output_dir, add_overrides, add_overwrite, keys_epilog,
                               overrides_with_device, progress_enabled)

HELP = "train a detector and evaluate it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser, required=True)
    add_output_dir(parser, "run folder (default: the next free runs/train, runs/train2, ...)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    add_overwrite(parser)
    add_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    add_overrides(parser)
    parser.epilog = keys_epilog(test_time_only=False)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from detect.cli.common import note
    from detect.config import load_config
    from detect.errors import ConfigError
    from detect.training.trainer import TrainingDiverged, train
    from detect.utils.output_dirs import next_free

    cfg = load_config(args.config, overrides_with_device(args))
    output = args.output_dir
    if output is None:
        if args.resume or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--output-dir is needed with --resume (the run to continue) and under torchrun "
                              "(one folder for every process)")
        output = next_free("runs", "train")
        note(f"run folder: {output}")
    try:
        train(cfg, output, resume=args.resume, progress=progress_enabled(args), overwrite=args.overwrite)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    return 0
