#!/usr/bin/env python
"""Benchmarks: tables printed, ratios against the reference measured in the same run.

  python tools/benchmark.py frcnn --config configs/faster_rcnn/bccd.yaml [--train-minutes 15] [--json out.json] [key=value ...]
  python tools/benchmark.py frcnn --no-speed --train-minutes 15 --data-root ../shared/data \
      --config configs/faster_rcnn/bccd.yaml --config configs/faster_rcnn/facemask.yaml
  python tools/benchmark.py proposals --config configs/datasets/bccd.yaml --opencv-python /path/to/contrib/venv/bin/python
  python tools/benchmark.py stages --data configs/datasets/bccd.yaml --budget 15 --output-dir runs/stages_bccd
  python tools/benchmark.py deploy --checkpoint runs/frcnn_bccd/model_final.pth --output-dir runs/deploy_bccd
  python tools/benchmark.py infer --checkpoint runs/frcnn_bccd/model_final.pth --input datasets/BCCD/JPEGImages --limit 72
  python tools/benchmark.py ops
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detect.config import load_config
from detect.cli.common import run_cli, setup_logging


def load_with_data_root(path: str, overrides, data_root: str):
    """``load_config`` with the dataset paths that start at ``datasets/`` moved under ``data_root``."""
    cfg = load_config(path, overrides)
    if data_root:
        for split in ("train", "test"):
            for key in ("root", "ann_file", "img_dir"):
                value = cfg.data[split][key]
                if isinstance(value, str) and value.startswith("datasets/"):
                    cfg.data[split][key] = str(Path(data_root) / value[len("datasets/"):])
    return cfg


def cmd_frcnn(args) -> int:
    from detect.benchmark.frcnn import format_frcnn, run_frcnn_benchmark

    configs = {Path(c).stem: load_with_data_root(c, args.overrides, args.data_root) for c in args.config}
    rows = {}
    if not args.no_speed:
        rows = run_frcnn_benchmark(next(iter(configs.values())), num_images=args.num_images,
                                   train_steps=args.train_steps, rounds=args.rounds)
        print(format_frcnn(rows), flush=True)
    if args.train_minutes > 0:
        from detect.benchmark.frcnn import accuracy_same_budget, format_accuracy

        rows["accuracy"] = {}
        for name, cfg in configs.items():
            rows["accuracy"][name] = accuracy_same_budget(cfg, args.train_minutes, Path(args.output_dir) / name)
            print(f"{name}: trained and evaluated both", flush=True)
        print(format_accuracy(rows["accuracy"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_infer(args) -> int:
    from detect.benchmark.folder_throughput import format_infer, run_infer_benchmark

    rows = run_infer_benchmark(args.checkpoint, args.input, args.batch_size, args.workers, not args.no_save_images,
                               args.limit)
    print(format_infer(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_proposals(args) -> int:
    from detect.benchmark.selective_search import format_proposal_benchmark, run_proposal_benchmark
    from detect.data.build import build_dataset

    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, args.split)
    records = dataset.records[:args.num_images] if args.num_images else dataset.records
    rows = run_proposal_benchmark(records, dataset.class_names, args.modes.split(","), args.opencv_python)
    print(format_proposal_benchmark(rows))
    if args.json:
        for row in rows["rows"]:
            row["recall"] = {k: row["recall"][k] for k in ("counts", "overall", "per_class", "mean_proposals")}
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_deploy(args) -> int:
    from detect.benchmark.deploy import format_deploy, run_deploy_benchmark

    result = run_deploy_benchmark(args.checkpoint, args.output_dir, args.num_images, args.rounds,
                                  args.calibration_images, args.overrides)
    print(format_deploy(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_ops(args) -> int:
    from detect.benchmark.ops import format_ops, run_ops_benchmark

    result = run_ops_benchmark(args.rounds, args.repeats)
    print(format_ops(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_stages(args) -> int:
    from detect.benchmark.stages import STAGES, format_table, run_stages
    from detect.errors import ConfigError

    checkpoints = {}
    for item in args.checkpoint or []:
        stage, _, path = item.partition("=")
        if stage not in STAGES or not path:
            raise ConfigError(f"--checkpoint {item!r}: expected STAGE=PATH with STAGE one of {list(STAGES)}")
        checkpoints[stage] = path
    result = run_stages(args.data, args.budget, args.output_dir, checkpoints, args.overrides,
                        max_test_images=args.max_test_images or None, grid_images=args.grid_images)
    print(format_table(result))
    print(f"wrote {Path(args.output_dir) / 'stages.md'}, stages.json and the pictures")
    if args.json:
        Path(args.json).write_text((Path(args.output_dir) / "stages.json").read_text())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("frcnn", help="Faster R-CNN against torchvision's, same backbone and input size")
    p.add_argument("--config", required=True, action="append",
                   help="a config; give several to compare accuracy on several datasets (speed: the first)")
    p.add_argument("--data-root", default="", help="where the configs' datasets/... paths are (e.g. ../shared/data)")
    p.add_argument("--no-speed", action="store_true", help="only the accuracy comparison (--train-minutes)")
    p.add_argument("--num-images", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="latency: interleaved rounds over the images (median)")
    p.add_argument("--train-minutes", type=float, default=0.0,
                   help="also train both from scratch for this many minutes each and compare AP")
    p.add_argument("--output-dir", default="runs/benchmark_frcnn",
                   help="run folders of the accuracy comparison (one sub-folder per config)")
    p.add_argument("--json", help="also write the figures as json")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_frcnn)
    p = sub.add_parser("proposals", help="selective search against OpenCV contrib's: time, recall, MABO")
    p.add_argument("--config", default="configs/datasets/bccd.yaml", help="dataset config")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which data.<split> to use")
    p.add_argument("--num-images", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--modes", default="fast", help="comma-separated: single, fast, quality")
    p.add_argument("--opencv-python", help="a Python with opencv-contrib (cv2.ximgproc) to measure OpenCV's")
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_proposals)
    p = sub.add_parser("stages", help="R-CNN, Fast R-CNN and Faster R-CNN trained and tested side by side")
    p.add_argument("--data", required=True, help="dataset config; configs/<stage>/<its name>.yaml are used")
    p.add_argument("--budget", type=float, required=True, help="training minutes per stage")
    p.add_argument("--output-dir", default="runs/stages")
    p.add_argument("--checkpoint", action="append", help="STAGE=PATH: test this checkpoint instead of training")
    p.add_argument("--max-test-images", type=int, default=0, help="test on the first N images only (0: all)")
    p.add_argument("--grid-images", type=int, default=4)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*", help="key=value for every stage's config")
    p.set_defaults(func=cmd_stages)
    p = sub.add_parser("ops", help="the package's CPU kernels (RoI align / max pool, GroupNorm) against the libraries'")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="calls per round")
    p.add_argument("--json")
    p.set_defaults(func=cmd_ops)
    p = sub.add_parser("deploy", help="PyTorch eager, ONNX Runtime fp32 and int8, torchvision: ms, AP, size")
    p.add_argument("--checkpoint", required=True, help="a Faster R-CNN checkpoint (.pth)")
    p.add_argument("--output-dir", default="runs/deploy", help="where the exported models go")
    p.add_argument("--num-images", type=int, default=20, help="test images timed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("infer", help="tools/infer.py throughput against the model's forward-only throughput")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="image folder (e.g. BCCD's JPEGImages)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.add_argument("--no-save-images", action="store_true")
    p.add_argument("--json")
    p.set_defaults(func=cmd_infer)
    args = parser.parse_args(argv)
    setup_logging()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
