"""Benchmarks: tables printed, ratios against the reference measured in the same run.

  detect benchmark frcnn --config configs/faster_rcnn/bccd.yaml [--train-minutes 15] [--json out.json] [key=value ...]
  detect benchmark frcnn --no-speed --train-minutes 15 --data-root ../shared/data \\
      --config configs/faster_rcnn/bccd.yaml --config configs/faster_rcnn/facemask.yaml
  detect benchmark proposals --config configs/datasets/bccd.yaml --opencv-python /path/to/contrib/venv/bin/python
  detect benchmark stages --data configs/datasets/bccd.yaml --budget 15
  detect benchmark deploy --checkpoint runs/bccd/model_final.pth
  detect benchmark infer --checkpoint runs/bccd/model_final.pth --input datasets/BCCD/JPEGImages --limit 72
  detect benchmark ops
  detect benchmark yolo --num-images 10000

Folders written (run folders of the accuracy comparison, exported models, the stage comparison's
pictures) default to the next free runs/benchmark_<name>.
"""
from __future__ import annotations

import argparse

from detect.benchmark import ACCURACY_RUNS
from detect.cli.common import (ListOf, add_device, add_old_spelling, add_output_dir, add_overrides, note,
                               overrides_with_device)

HELP = "speed and accuracy against the references, measured in the same run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark_command", metavar="COMMAND", required=True)
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
    p.add_argument("--finetune", default="configs/faster_rcnn/finetune.yaml",
                   help="with --train-minutes, the fine-tuning recipe of the detect_finetuned run")
    p.add_argument("--runs", action=ListOf, default=list(ACCURACY_RUNS), choices=ACCURACY_RUNS, metavar="RUN",
                   help=f"with --train-minutes, which runs train on each dataset (default: all of "
                        f"{' '.join(ACCURACY_RUNS)})")
    add_output_dir(p, "run folders of the accuracy comparison, one per config (default: runs/benchmark_frcnn)")
    _common(p, _frcnn)
    p = sub.add_parser("proposals", help="selective search against OpenCV contrib's: time, recall, MABO")
    p.add_argument("--config", default="configs/datasets/bccd.yaml", help="dataset config")
    p.add_argument("--subset", default="test", choices=["train", "test"], help="which data.<subset> to use")
    add_old_spelling(p, "--split", "--subset", "subset", choices=["train", "test"])
    p.add_argument("--num-images", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--modes", action=ListOf, default=["fast"], metavar="MODE", help="single, fast, quality")
    p.add_argument("--opencv-python", help="a Python with opencv-contrib (cv2.ximgproc) to measure OpenCV's")
    _common(p, _proposals)
    p = sub.add_parser("stages", help="R-CNN, Fast R-CNN and Faster R-CNN trained and tested side by side")
    p.add_argument("--data", required=True, help="dataset config; configs/<stage>/<its name>.yaml are used")
    p.add_argument("--budget", type=float, required=True, help="training minutes per stage")
    add_output_dir(p, "run folders, stages.md / stages.json and the pictures (default: runs/benchmark_stages)")
    p.add_argument("--checkpoint", action="append", help="STAGE=PATH: test this checkpoint instead of training")
    p.add_argument("--max-test-images", type=int, default=0, help="test on the first N images only (0: all)")
    p.add_argument("--grid-images", type=int, default=4)
    _common(p, _stages)
    p = sub.add_parser("ops", help="the package's CPU kernels (RoI align / max pool, GroupNorm) against the libraries'")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="calls per round")
    p.add_argument("--json", help="also write the figures as json")
    p.set_defaults(benchmark_run=_ops)
    p = sub.add_parser("deploy", help="PyTorch eager, ONNX Runtime fp32 and int8, torchvision: ms, AP, size")
    p.add_argument("--checkpoint", required=True, help="a Faster R-CNN checkpoint (.pth)")
    add_output_dir(p, "where the exported models go (default: runs/benchmark_deploy)")
    p.add_argument("--num-images", type=int, default=20, help="test images timed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calibration-images", type=int, default=64)
    _common(p, _deploy)
    p = sub.add_parser("infer", help="detect infer's throughput against the model's forward-only throughput")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="image folder (e.g. BCCD's JPEGImages)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.add_argument("--no-save-images", action="store_true")
    p.add_argument("--json", help="also write the figures as json")
    p.set_defaults(benchmark_run=_infer)
    p = sub.add_parser("yolo", help="reading a generated YOLO dataset's labels: first read, cached read, after changes")
    p.add_argument("--num-images", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=3, help="cached reads timed (the best)")
    add_output_dir(p, "where the generated set goes, a new folder (default: runs/benchmark_yolo)")
    p.add_argument("--json", help="also write the figures as json")
    p.set_defaults(benchmark_run=_yolo)


def _common(parser: argparse.ArgumentParser, run_function) -> None:
    parser.add_argument("--json", help="also write the figures as json")
    add_device(parser)
    add_overrides(parser)
    parser.set_defaults(benchmark_run=run_function)


def run(args: argparse.Namespace) -> int:
    return args.benchmark_run(args)


def _folder(args: argparse.Namespace, name: str):
    from detect.utils.output_dirs import next_free

    if args.output_dir is not None:
        return args.output_dir
    folder = next_free("runs", f"benchmark_{name}")
    note(f"output folder: {folder}")
    return folder


def _write_json(path, rows) -> None:
    import json
    from pathlib import Path

    if path:
        Path(path).write_text(json.dumps(rows, indent=2))


def load_with_data_root(path: str, overrides, data_root: str):
    """``load_config`` with the dataset paths that start at ``datasets/`` moved under ``data_root``."""
    from pathlib import Path

    from detect.config import load_config

    cfg = load_config(path, overrides)
    if data_root:
        for split in ("train", "test"):
            for key in ("root", "ann_file", "img_dir"):
                value = cfg.data[split][key]
                if isinstance(value, str) and value.startswith("datasets/"):
                    cfg.data[split][key] = str(Path(data_root) / value[len("datasets/"):])
    return cfg


def _frcnn(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detect.benchmark.frcnn import format_frcnn, run_frcnn_benchmark
    from detect.config import load_config

    configs = {Path(c).stem: load_with_data_root(c, overrides_with_device(args), args.data_root) for c in args.config}
    rows = {}
    if not args.no_speed:
        rows = run_frcnn_benchmark(next(iter(configs.values())), num_images=args.num_images,
                                   train_steps=args.train_steps, rounds=args.rounds)
        print(format_frcnn(rows), flush=True)
    if args.train_minutes > 0:
        from detect.benchmark.frcnn import accuracy_same_budget, format_accuracy

        folder = Path(_folder(args, "frcnn"))
        finetune = load_config(args.finetune, overrides_with_device(args)) if "detect_finetuned" in args.runs else None
        rows["accuracy"] = {}
        for name, cfg in configs.items():
            rows["accuracy"][name] = accuracy_same_budget(cfg, args.train_minutes, folder / name, finetune,
                                                          runs=args.runs)
            print(f"{name}: trained and evaluated {', '.join(args.runs)}", flush=True)
        print(format_accuracy(rows["accuracy"]))
    _write_json(args.json, rows)
    return 0


def _infer(args: argparse.Namespace) -> int:
    from detect.benchmark.folder_throughput import format_infer, run_infer_benchmark

    rows = run_infer_benchmark(args.checkpoint, args.input, args.batch_size, args.workers, not args.no_save_images,
                               args.limit)
    print(format_infer(rows))
    _write_json(args.json, rows)
    return 0


def _proposals(args: argparse.Namespace) -> int:
    from detect.benchmark.selective_search import format_proposal_benchmark, run_proposal_benchmark
    from detect.config import load_config
    from detect.data.build import build_dataset

    cfg = load_config(args.config, overrides_with_device(args))
    dataset = build_dataset(cfg, args.subset)
    records = dataset.records[:args.num_images] if args.num_images else dataset.records
    rows = run_proposal_benchmark(records, dataset.class_names, args.modes, args.opencv_python)
    print(format_proposal_benchmark(rows))
    if args.json:
        for row in rows["rows"]:
            row["recall"] = {k: row["recall"][k] for k in ("counts", "overall", "per_class", "mean_proposals")}
        _write_json(args.json, rows)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from detect.benchmark.deploy import format_deploy, run_deploy_benchmark

    result = run_deploy_benchmark(args.checkpoint, _folder(args, "deploy"), args.num_images, args.rounds,
                                  args.calibration_images, overrides_with_device(args))
    print(format_deploy(result))
    _write_json(args.json, result)
    return 0


def _ops(args: argparse.Namespace) -> int:
    from detect.benchmark.ops import format_ops, run_ops_benchmark

    result = run_ops_benchmark(args.rounds, args.repeats)
    print(format_ops(result))
    _write_json(args.json, result)
    return 0


def _stages(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detect.benchmark.stages import STAGES, format_table, run_stages
    from detect.errors import ConfigError

    checkpoints = {}
    for item in args.checkpoint or []:
        stage, _, path = item.partition("=")
        if stage not in STAGES or not path:
            raise ConfigError(f"--checkpoint {item!r}: expected STAGE=PATH with STAGE one of {list(STAGES)}")
        checkpoints[stage] = path
    folder = _folder(args, "stages")
    result = run_stages(args.data, args.budget, folder, checkpoints, overrides_with_device(args),
                        max_test_images=args.max_test_images or None, grid_images=args.grid_images)
    print(format_table(result))
    print(f"wrote {Path(folder) / 'stages.md'}, stages.json and the pictures")
    if args.json:
        Path(args.json).write_text((Path(folder) / "stages.json").read_text())
    return 0


def _yolo(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from detect.benchmark.yolo_labels import format_yolo_benchmark, run_yolo_benchmark
    from detect.errors import OutputExistsError

    if args.num_images < 1:
        raise SystemExit("detect benchmark yolo: --num-images must be at least 1")
    folder = Path(_folder(args, "yolo"))
    if folder.exists() and any(folder.iterdir()):
        raise OutputExistsError(f"{folder} is not empty: the benchmark generates its set into a new folder")
    logging.getLogger("detect.data").setLevel(logging.WARNING)  # the set's summary, once per read timed
    result = run_yolo_benchmark(folder, args.num_images, args.rounds)
    print(format_yolo_benchmark(result))
    _write_json(args.json, result)
    return 0
