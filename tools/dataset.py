#!/usr/bin/env python
"""Look at a detection dataset before training on it.

  python tools/dataset.py stats   --config configs/datasets/bccd.yaml [--subset test] [key=value ...]
  python tools/dataset.py stats   --format voc --root datasets/BCCD --split trainval [--json stats.json]
  python tools/dataset.py convert --format voc --root datasets/BCCD --split test --out bccd_test.json
  python tools/dataset.py show    --format coco --ann-file a.json --img-dir images --num 16 --out show/
  python tools/dataset.py anchors --config configs/faster_rcnn/custom.yaml [--json anchors.json] [key=value ...]

The dataset comes from a config's ``data.<subset>`` section, or directly from --format and its paths.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from detect.config import load_config
from detect.data.build import build_dataset
from detect.data.coco import to_coco_dict
from detect.data.stats import dataset_stats, format_stats, unreadable_images
from detect.cli.common import run_cli, setup_logging
from detect.utils.visualize import draw_boxes, write_image


def add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file whose data.<subset> section names the dataset")
    p.add_argument("--subset", choices=("train", "test"), default="train", help="which data section (default train)")
    p.add_argument("--format", choices=("coco", "voc"), help="dataset format, instead of --config")
    p.add_argument("--root", help="voc: folder with Annotations/, JPEGImages/, ImageSets/Main/")
    p.add_argument("--split", help="voc: split name (ImageSets/Main/<split>.txt)")
    p.add_argument("--ann-file", help="coco: annotation json")
    p.add_argument("--img-dir", help="coco: image folder")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")


def load_dataset(args):
    overrides = list(args.overrides)
    direct = {"format": args.format, "root": args.root, "split": args.split,
              "ann_file": args.ann_file, "img_dir": args.img_dir}
    overrides += [f"data.{args.subset}.{k}={v}" for k, v in direct.items() if v is not None]
    if args.config is None and args.format is None:
        raise SystemExit("error: give --config or --format with its paths")
    cfg = load_config(args.config, overrides)
    return build_dataset(cfg, args.subset)


def cmd_stats(args) -> int:
    logging.getLogger("detect").setLevel(logging.ERROR)  # problems are listed in the report itself
    dataset = load_dataset(args)
    stats = dataset_stats(dataset)
    if args.images:  # decoding every file finds what the annotations cannot show (truncated files)
        stats["problems"] += unreadable_images(dataset)
    print(format_stats(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def cmd_convert(args) -> int:
    dataset = load_dataset(args)
    image_root = Path(args.root) / "JPEGImages" if args.root else None
    coco = to_coco_dict(dataset, image_root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(coco))
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
          f"{len(coco['categories'])} categories (images relative to {image_root or 'absolute paths'})")
    return 0


def cmd_show(args) -> int:
    dataset = load_dataset(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = min(args.num, len(dataset))
    for index in range(count):
        image, target = dataset[index]
        record = dataset.records[index]
        drawn = draw_boxes(image, target["boxes"], target["labels"], dataset.class_names)
        write_image(out / f"{record.image_id:06d}_{record.path.stem}.jpg", drawn)
    print(f"wrote {count} images with their ground-truth boxes to {out}")
    return 0


def cmd_anchors(args) -> int:
    from detect.data.stats import boxes_at_training_scale
    from detect.data.transforms import build_transforms
    from detect.models.anchor_fit import fit_config_anchors, format_anchor_report

    if args.config is None:
        raise SystemExit("error: anchors needs --config (the backbone's strides and the training resize come from it)")
    logging.getLogger("detect").setLevel(logging.ERROR)
    cfg = load_config(args.config, list(args.overrides))
    if cfg.model.type != "faster_rcnn":
        raise SystemExit(f"error: {args.config} is a {cfg.model.type} config; only Faster R-CNN has anchors")
    dataset = load_dataset(args)
    boxes, labels = boxes_at_training_scale(dataset, build_transforms(cfg, train=True))
    fit = fit_config_anchors(cfg, boxes, labels, dataset.class_names)
    b = cfg.model.backbone
    print(f"== anchors for {dataset.description}: {b.name}{' + FPN' if b.fpn else ''}, training resize "
          f"min_size={cfg.input.min_size} max_size={cfg.input.max_size}\n")
    print(format_anchor_report(fit["reports"]))
    print(f"\nfitted anchors as overrides (model.rpn.anchor_sizes=auto does the same when training starts):\n"
          f"  model.rpn.anchor_sizes={json.dumps(fit['sizes'])} model.rpn.aspect_ratios={json.dumps(fit['ratios'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(fit, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stats", help="images, boxes per class, box sizes, problems found")
    add_source_args(p)
    p.add_argument("--json", help="also write the statistics as json")
    p.add_argument("--images", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image to find unreadable or truncated files (--no-images: annotations only)")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("convert", help="write the dataset's annotations as COCO json (e.g. VOC -> COCO)")
    add_source_args(p)
    p.add_argument("--out", required=True, help="output json")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("show", help="draw ground-truth boxes on the first N images")
    add_source_args(p)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("anchors", help="fit anchors to the training boxes; best possible recall of current and fitted")
    add_source_args(p)
    p.add_argument("--json", help="also write the fit and both reports as json")
    p.set_defaults(func=cmd_anchors)
    args = parser.parse_args(argv)
    setup_logging()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
