"""Look at a detection dataset before training on it.

  detect dataset stats   --config configs/datasets/bccd.yaml [--subset test] [key=value ...]
  detect dataset stats   --format yolo --root data.yaml --split val [--json stats.json]
  detect dataset convert --format voc --root datasets/BCCD --split test --to yolo --output-dir bccd_yolo/
  detect dataset split   --format coco --ann-file all.json --img-dir images --fractions 0.8 0.2 --output-dir split/
  detect dataset show    --format coco --ann-file a.json --img-dir images --num 16 [--augmented] --output-dir show/
  detect dataset anchors --config configs/faster_rcnn/custom.yaml [--json anchors.json] [key=value ...]

The dataset comes from a config's ``data.<subset>`` section (--subset train, val or test), or
directly from --format and its paths: COCO (--ann-file, --img-dir), VOC (--root, --split: its
ImageSets name), YOLO (--root: a data.yaml or the dataset folder, --split: train, val or test); a
Roboflow export's folder works as it is unpacked (--root and --split for its COCO folders too).
"""
from __future__ import annotations

import argparse

from detect.cli.common import add_config, add_old_spelling, add_output_dir, add_overrides, add_overwrite, note

HELP = "statistics, conversion, pictures and anchors of a dataset"
SUBSETS = ("train", "val", "test")
FORMATS = ("coco", "voc", "yolo")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser, help="config file whose data.<subset> section names the dataset")
    parser.add_argument("--subset", choices=SUBSETS, default="train", help="which data section (default train)")
    parser.add_argument("--format", choices=FORMATS, help="dataset format, instead of --config")
    parser.add_argument("--root", help="voc: folder with Annotations/, JPEGImages/, ImageSets/Main/; yolo: data.yaml "
                                       "or the dataset folder; coco: a Roboflow export's folder")
    parser.add_argument("--split", help="voc: ImageSets/Main/<split>.txt; yolo: train, val or test; coco: the split's "
                                        "folder of a Roboflow export")
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
    p = sub.add_parser("convert", help="write the dataset in another format: COCO, VOC or YOLO, any direction")
    add_source_arguments(p)
    p.add_argument("--to", choices=FORMATS, default="coco", help="the format to write (default coco)")
    p.add_argument("--as-split", help="the split's name in the output (default: --split, else --subset)")
    add_output_dir(p, "folder the converted dataset is written into (default: the next free runs/convert)")
    add_old_spelling(p, "--out", "--output-dir (a folder)", "output_file")
    add_overwrite(p)
    p.set_defaults(dataset_run=_convert)
    p = sub.add_parser("split", help="cut a dataset delivered in one piece into train / val (/ test), class-stratified")
    add_source_arguments(p)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.8, 0.2], metavar="SHARE",
                   help="shares of the images for train, val (and test); they sum to 1 (default 0.8 0.2)")
    p.add_argument("--seed", type=int, default=0)
    add_output_dir(p, "folder the splits are written into, in the dataset's format (default: runs/split)")
    add_overwrite(p)
    p.set_defaults(dataset_run=_split)
    p = sub.add_parser("show", help="draw ground-truth boxes on the first N images")
    add_source_arguments(p)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--augmented", action="store_true",
                   help="draw what training sees: the training transform (resize, flip, crops, jitter) applied")
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
    if args.config:  # the training scale is the config's: say when sliced training and inference would help
        from detect.config import load_config
        from detect.data.stats import tiling_advice
        from detect.data.transforms import build_transforms

        advice = tiling_advice(dataset, build_transforms(load_config(args.config, list(args.overrides)), train=True))
        if advice:
            print(f"\nsmall objects: {advice}")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from detect.data.coco import to_coco_dict
    from detect.data.convert import write_dataset

    dataset = load_dataset(args)
    if getattr(args, "output_file", None):  # the spelling before 0.2: one COCO json, the images where they are
        out = Path(args.output_file)
        image_root = Path(args.root) / "JPEGImages" if args.root else None
        coco = to_coco_dict(dataset, image_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(coco))
        print(f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
              f"{len(coco['categories'])} categories (images relative to {image_root or 'absolute paths'})")
        return 0
    split = args.as_split or args.split or args.subset
    folder = _folder(args, "convert", ["data.yaml", "annotations", "Annotations", "labels", "images"])
    result = write_dataset(dataset, args.to, folder, split)
    keys = " ".join(f"data.train.{k}={v}" for k, v in result["data_keys"].items())
    print(f"wrote {folder}: {args.to}, split {split!r}, {result['images']} images ({result['negatives']} without "
          f"boxes), {result['boxes']} boxes, classes {result['classes']}\nread it with: {keys}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from detect.config import load_config
    from detect.data.convert import split_counts, stratified_split, subset, write_dataset
    from detect.errors import ConfigError

    if len(args.fractions) not in (2, 3) or abs(sum(args.fractions) - 1) > 1e-6 or min(args.fractions) < 0:
        raise ConfigError(f"--fractions {' '.join(map(str, args.fractions))}: two or three shares summing to 1 "
                          f"(train val [test])")
    dataset = load_dataset(args)
    fmt = args.format or load_config(args.config, list(args.overrides)).data[args.subset].format
    folder = _folder(args, "split", ["data.yaml", "annotations", "Annotations", "labels", "images"])
    parts = stratified_split(dataset, args.fractions, args.seed)
    for name, indices in zip(("train", "val", "test"), parts):
        write_dataset(subset(dataset, indices), fmt, folder, name)
        images, boxes = split_counts(dataset, indices)
        print(f"{name}: {images} images, boxes per class {boxes}")
    print(f"wrote {folder} ({fmt})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from detect.config import load_config
    from detect.data.transforms import build_transforms
    from detect.utils.visualize import draw_boxes, write_image

    dataset = load_dataset(args)
    if args.augmented:  # what training sees: the config's training transform, seeded per image
        dataset.transforms = build_transforms(load_config(args.config, list(args.overrides)), train=True)
    out = _folder(args, "show", ["*.jpg"])
    out.mkdir(parents=True, exist_ok=True)
    count = min(args.num, len(dataset))
    for index in range(count):
        if args.augmented:
            dataset.transforms.set_seed(index)
        image, target = dataset[index]
        record = dataset.records[index]
        drawn = draw_boxes(image, target["boxes"], target["labels"], dataset.class_names)
        write_image(out / f"{record.image_id:06d}_{record.path.stem}.jpg", drawn)
    print(f"wrote {count} images with their ground-truth boxes{' after augmentation' if args.augmented else ''} "
          f"to {out}")
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
    from detect.data.stats import tiling_advice

    advice = tiling_advice(dataset, build_transforms(cfg, train=True))
    if advice:
        print(f"\nsmall objects: {advice}")
    print(f"\nfitted anchors as overrides (model.rpn.anchor_sizes=auto does the same when training starts):\n"
          f"  model.rpn.anchor_sizes={json.dumps(fit['sizes'])} model.rpn.aspect_ratios={json.dumps(fit['ratios'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(fit, indent=2))
        print(f"\nwrote {args.json}")
    return 0
