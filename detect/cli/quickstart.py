"""The main job on the embedded default: generate the synthetic shapes, train a small Faster R-CNN on
them on the CPU for a fixed number of iterations (the same result on every machine; the bar shows the
time it will take), evaluate it, print the COCO / VOC table, then run the trained detector over the
test image folder as ``detect infer`` does, writing annotated images and detections.json.

    detect quickstart [--iterations N] [--data datasets/shapes] [--output-dir runs/quickstart]

The detector is EfficientNet-Lite0-FPN fine-tuned from its ImageNet weights
(``configs/faster_rcnn/quickstart.yaml``). The dataset goes where the shapes configs read it
(``datasets/shapes``); the run
folder (default: the next free runs/quickstart, runs/quickstart2, ...) holds the checkpoint,
log.jsonl, loss_curve.png, metrics.json, pr_curves.png and infer/ (annotated images in
infer/images/, detections.json, images.json).
"""
from __future__ import annotations

import argparse

from detect.cli.common import add_device, add_output_dir, add_overrides, note, overrides_with_device, progress_enabled

HELP = "generate data, train, evaluate and annotate a folder: the main job on the embedded default"
CONFIG = "configs/faster_rcnn/quickstart.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="datasets/shapes", help="where to write the synthetic dataset")
    add_output_dir(parser, "run folder (default: the next free runs/quickstart, runs/quickstart2, ...)",
                   old=("--output",))
    parser.add_argument("--iterations", type=int, default=None, help=f"training iterations (default: {CONFIG}'s)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="train for this wall-clock budget instead (the result then depends on the CPU)")
    # 2000 images: with 200 the detector learnt the training set and not the task (docs/recipe.md);
    # drawing them takes seconds, in parallel processes
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    add_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from detect.config import load_config
    from detect.data.build import build_dataset
    from detect.data.stats import dataset_stats, format_stats
    from detect.data.synthetic import generate_dataset
    from detect.inference.folders import format_summary, run_folder
    from detect.inference.predictor import Predictor
    from detect.training.trainer import Trainer
    from detect.utils.output_dirs import next_free

    start = time.perf_counter()
    generate_dataset(args.data, args.num_train, args.num_test, args.seed)
    print(f"[1/4] generated {args.num_train} + {args.num_test} synthetic images in {args.data} "
          f"({time.perf_counter() - start:.1f} s)\n")
    d = args.data
    budget = [f"train.max_iter={args.iterations}"] if args.iterations else []
    if args.minutes:
        budget = [f"train.max_minutes={args.minutes}", f"train.max_iter={args.iterations or 1000000}"]
    cfg = load_config(CONFIG, [f"data.train.ann_file={d}/train.json", f"data.train.img_dir={d}/images",
                               f"data.test.ann_file={d}/test.json", f"data.test.img_dir={d}/images",
                               *budget, *overrides_with_device(args)])
    print(format_stats(dataset_stats(build_dataset(cfg, "train")), title=f"shapes train ({CONFIG})"), "\n")
    output = Path(args.output_dir) if args.output_dir else next_free("runs", "quickstart")
    length = f"for {args.minutes:g} minutes" if args.minutes else f"for {cfg.train.max_iter:,} iterations"
    print(f"[2/4] training Faster R-CNN ({cfg.model.backbone.name} backbone) {length} into {output}")
    print("[3/4] then evaluating on the test split:\n")
    Trainer(cfg, output, progress=progress_enabled(args)).train()

    infer_out = output / "infer"
    print(f"\n[4/4] inference on the folder {d}/images/test -> {infer_out} (boxes scoring >= 0.5 drawn)")
    predictor = Predictor.from_checkpoint(output / "model_final.pth", device=args.device, score_thresh=0.5)
    print(format_summary(run_folder(predictor, f"{d}/images/test", infer_out, progress=False)))
    print(f"\nrun folder: {output} (model_final.pth, metrics.json, pr_curves.png, loss_curve.png, infer/)")
    print(f"evaluate again: detect eval --checkpoint {output}/model_final.pth")
    print(f"other folders:  detect infer --checkpoint {output}/model_final.pth --input DIR")
    return 0
