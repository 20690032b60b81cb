"""Turn another library's detector into a detect checkpoint: torchvision's Faster R-CNN models.

  detect import-weights --from torchvision --arch fasterrcnn_mobilenet_v3_large_fpn --weights COCO_V1
  detect import-weights --from torchvision --arch fasterrcnn_resnet50_fpn --weights state_dict.pth \\
         --output-dir runs/r50 [--classes a b c]

--weights is a state-dict file, or torchvision's weights name (DEFAULT, COCO_V1; downloaded where
a network is available, with COCO's class names). Writes OUTPUT_DIR/model.pth (default: the next
free runs/import) with a config that reproduces the architecture and torchvision's test-time
settings; it runs in every command (eval, infer, export, compress) and fine-tunes on other classes
with ``detect train ... model.weights=OUTPUT_DIR/model.pth``.
"""
from __future__ import annotations

import argparse

from detect.cli.common import ListOf, add_old_spelling, add_output_dir, add_overwrite, note

HELP = "torchvision's Faster R-CNN weights as a detect checkpoint"
ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="library", default="torchvision", choices=["torchvision"],
                        help="the library the weights come from")
    parser.add_argument("--arch", required=True, choices=ARCHS, help="torchvision's detector name")
    parser.add_argument("--weights", required=True, help="a state-dict file, or torchvision's weights name")
    parser.add_argument("--classes", action=ListOf, default=None, metavar="NAME",
                        help="class names in label order (default: the weights' own, else class_1 ...)")
    add_output_dir(parser, "folder for model.pth (default: the next free runs/import)")
    add_old_spelling(parser, "--output", "--output-dir (a folder)", "output_file")
    add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detect.checkpoint.torchvision_import import ARCHITECTURES, import_torchvision
    from detect.utils.output_dirs import claim_output_dir, next_free

    assert set(ARCHS) == set(ARCHITECTURES), "the command's --arch choices are the importer's architectures"
    if getattr(args, "output_file", None):
        output = Path(args.output_file)
    elif args.output_dir is None:
        output = next_free("runs", "import") / "model.pth"
        note(f"output folder: {output.parent}")
    else:
        output = claim_output_dir(args.output_dir, ["model.pth"], "an imported model", overwrite=args.overwrite) / \
            "model.pth"
    result = import_torchvision(args.arch, args.weights, output, args.classes)
    cfg = result["config"]
    print(f"wrote {output}: torchvision's {args.arch}, {len(result['classes'])} classes "
          f"({', '.join(result['classes'][:5])}{', ...' if len(result['classes']) > 5 else ''}); tested at "
          f"{cfg.input.min_size_test} px (short side), max {cfg.input.max_size}")
    print(f"evaluate: detect eval --checkpoint {output} data.test.ann_file=... data.test.img_dir=...")
    print(f"fine-tune on your classes: detect train --config configs/faster_rcnn/torchvision_{args.arch}.yaml "
          f"model.weights={output} data.train.ann_file=...")
    return 0
