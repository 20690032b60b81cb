"""Look at a detection dataset before training on it.

  detect dataset stats   --config configs/datasets/bccd.yaml [--subset test] [key=value ...]
  detect dataset stats   --format voc --root datasets/BCCD --split trainval [--json stats.json]
  detect dataset convert --format voc --root datasets/BCCD --split test --output-dir bccd_coco/
  detect dataset show    --format coco --ann-file a.json --img-dir images --num 16 --output-dir show/
  detect dataset anchors --config configs/faster_rcnn/custom.yaml [--json anchors.json] [key=value ...]

The dataset comes from a config's ``data.<subset>`` section (--subset train, val or test), or
directly from --format and its paths (--split is the dataset's own split name: VOC's ImageSets).
"""
from __future__ import annotations

import argparse

from detect.cli.common import add_config, add_old_spelling, add_output_dir, add_overrides, add_overwrite, note

HELP = "statistics, conversion, pictures and anchors of a dataset"
SUBSETS = ("train", "test")
FORMATS = ("coco", "voc")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser, help="config file whose data.<subset> section names the dataset")
    parser.add_argument("--subset", choices=SUBSETS, default="train", help="which data section (default train)")
    parser.add_argument("--format", choices=FORMATS, help="dataset format, instead of --config")
    parser.add_argument("--root", help="voc: folder with Annotations/, JPEGImages/, ImageSets/Main/")
    parser.add_argument("--split", help="voc: split name (ImageSets/Main/<split>.txt)")
    parser.add_argument("--ann-file", help="coco: annotation json")
    parser.add_argument("--img-dir", help="coco: image folder")
    add_overrides(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)
    p = sub.add_parser("stats", help="images, boxes per class, box sizes, problems found")
    add_source_arguments(p)
    p.add_argument("--json", help="also write the statistics as json")
    p.add_argument("--images", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image to find unreadable or truncated files (--no-images: annotations only)")
    p.set_defaults(dataset_run=_stats)
    p = sub.add_parser("convert", help="write the dataset's annotations as COCO json (e.g. VOC -> COCO)")
    add_source_arguments(p)
    add_output_dir(p, "folder for annotations.json (default: the next free runs/convert)")
    add_old_spelling(p, "--out", "--output-dir (a folder)", "output_file")
    add_overwrite(p)
    p.set_defaults(dataset_run=_convert)
    p = sub.add_parser("show", help="draw ground-truth boxes on the first N images")
    add_source_arguments(p)
    p.add_argument("--num", type=int, default=16)
    add_output_dir(p, "folder for the pictures (default: the next free runs/show)", old=("--out",))
    add_overwrite(p)
    p.set_defaults(dataset_run=_show)
    p = sub.add_parser("anchors", help="fit anchors to the training boxes; best possible recall of current and fitted")
    add_source_arguments(p)
    p.add_argument("--json", help="also write the fit and both reports as json")
    p.set_defaults(dataset_run=_anchors)


def run(args: argparse.Namespace) -> int:
    return args.dataset_run(args)


def load_dataset(args: argparse.Namespace):
    from detect.config import load_config
    from detect.data.build import build_dataset
    from detect.errors import ConfigError

    overrides = list(args.overrides)
    direct = {"format": args.format, "root": args.root, "split": args.split,
              "ann_file": args.ann_file, "img_dir": args.img_dir}
    overrides += [f"data.{args.subset}.{k}={v}" for k, v in direct.items() if v is not None]
    if args.config is None and args.format is None:
        raise ConfigError("give --config or --format with its paths")
    cfg = load_config(args.config, overrides)
    return build_dataset(cfg, args.subset)


def _folder(args: argparse.Namespace, name: str, outputs):
    from detect.utils.output_dirs import claim_output_dir, next_free

    if args.output_dir is None:
        folder = next_free("runs", name)
        note(f"output folder: {folder}")
        return folder
    return claim_output_dir(args.output_dir, outputs, f"a dataset {name}", overwrite=args.overwrite)


def _stats(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from detect.data.stats import dataset_stats, format_stats, unreadable_images

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


def _convert(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from detect.data.coco import to_coco_dict

    dataset = load_dataset(args)
    out = Path(args.output_file) if getattr(args, "output_file", None) else \
        _folder(args, "convert", ["annotations.json"]) / "annotations.json"
    image_root = Path(args.root) / "JPEGImages" if args.root else None
    coco = to_coco_dict(dataset, image_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    print(f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
          f"{len(coco['categories'])} categories (images relative to {image_root or 'absolute paths'})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from detect.utils.visualize import draw_boxes, write_image

    dataset = load_dataset(args)
    out = _folder(args, "show", ["*.jpg"])
    out.mkdir(parents=True, exist_ok=True)
    count = min(args.num, len(dataset))
    for index in range(count):
        image, target = dataset[index]
        record = dataset.records[index]
        drawn = draw_boxes(image, target["boxes"], target["labels"], dataset.class_names)
        write_image(out / f"{record.image_id:06d}_{record.path.stem}.jpg", drawn)
    print(f"wrote {count} images with their ground-truth boxes to {out}")
    return 0


def _anchors(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from detect.config import load_config
    from detect.data.stats import boxes_at_training_scale
    from detect.data.transforms import build_transforms
    from detect.errors import ConfigError
    from detect.models.anchor_fit import MISSED_IOU, anchor_report, fit_config_anchors, format_anchor_report

    if args.config is None:
        raise ConfigError("anchors needs --config (the backbone's strides and the training resize come from it)")
    logging.getLogger("detect").setLevel(logging.ERROR)
    cfg = load_config(args.config, list(args.overrides))
    if cfg.model.type != "faster_rcnn":
        raise ConfigError(f"{args.config} is a {cfg.model.type} config; only Faster R-CNN has anchors")
    dataset = load_dataset(args)
    boxes, labels = boxes_at_training_scale(dataset, build_transforms(cfg, train=True))
    fit = fit_config_anchors(cfg, boxes, labels, dataset.class_names)
    b = cfg.model.backbone
    print(f"== anchors for {dataset.description}: {b.name}{' + FPN' if b.fpn else ''}, training resize "
          f"min_size={cfg.input.min_size} max_size={cfg.input.max_size}\n")
    print(format_anchor_report(fit["reports"]))
    missed = anchor_report(boxes, labels, dataset.class_names, fit["sizes"], fit["ratios"], fit["strides"], MISSED_IOU)
    share = missed["lost"]["total"] / max(missed["boxes"], 1)
    print(f"\nlikely missed with the fitted anchors (no anchor at IoU >= {MISSED_IOU:g}, what training warns "
          f"about from 5%): {missed['lost']['total']} of {missed['boxes']} boxes ({share:.1%})")
    print(f"\nfitted anchors as overrides (model.rpn.anchor_sizes=auto does the same when training starts):\n"
          f"  model.rpn.anchor_sizes={json.dumps(fit['sizes'])} model.rpn.aspect_ratios={json.dumps(fit['ratios'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(fit, indent=2))
        print(f"\nwrote {args.json}")
    return 0
