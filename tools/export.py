#!/usr/bin/env python
"""Export a trained Faster R-CNN or Fast R-CNN to ONNX, optionally quantized to int8.

  python tools/export.py --checkpoint runs/frcnn_bccd/model_final.pth --output model.onnx
  python tools/export.py --checkpoint ckpt.pth --output model.onnx --int8 [--calibration DIR_OR_CONFIG]

The graph takes one RGB image (1, 3, H, W) in [0, 1] of any size, resized as the config's test
transform does, and returns boxes, scores and labels; normalisation, NMS and RoI pooling are inside.
Class names, the config and the input contract are in the file's metadata, so the .onnx runs in
every tool: ``tools/infer.py --checkpoint model.onnx``, ``tools/eval.py --checkpoint model.onnx``.

With --int8 the int8 model is written to --output and the float one beside it (NAME.fp32.onnx);
calibration images come from a folder, a config's training split, or by default the checkpoint's
training split. The export ends with a parity check of ONNX Runtime against PyTorch on test images.
Needs the deploy extra: pip install -e ".[deploy]".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detect.config import load_config
from detect.data.build import build_dataset
from detect.data.folder import list_images
from detect.inference.loading import load_model
from detect.export.onnx_export import DEFAULT_OPSET, export_onnx, parity_report
from detect.inference.predictor import Predictor
from detect.export.int8 import calibration_images, quantize_onnx
from detect.errors import CheckpointError, DatasetError
from detect.cli.common import run_cli, setup_logging


def calibration_paths(source, cfg):
    """Image paths for int8 calibration: a folder, a config (its training split), or ``cfg``'s."""
    if source is not None and Path(source).is_dir():
        return list_images(source), str(source)
    if source is not None and not Path(source).is_file():
        raise DatasetError(f"--calibration {source}: neither a folder of images nor a config file")
    calib_cfg = load_config(source) if source is not None else cfg
    name = source or "the checkpoint's training split"
    try:
        dataset = build_dataset(calib_cfg, "train")
    except (DatasetError, FileNotFoundError) as e:
        raise DatasetError(f"calibration images from {name}: {e}") from None
    return [r.path for r in dataset.records], str(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth checkpoint of Faster R-CNN or Fast R-CNN")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--int8", action="store_true", help="quantize (static, calibrated) to int8")
    parser.add_argument("--calibration", help="folder of images or a config (its training split); "
                                              "default: the checkpoint's training split")
    parser.add_argument("--calibration-images", type=int, default=64, help="how many calibration images")
    parser.add_argument("--check-images", type=int, default=4, help="test images for the parity check (0: none)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value (e.g. the score threshold)")
    args = parser.parse_args(argv)
    setup_logging()
    if str(args.checkpoint).lower().endswith(".onnx"):
        raise CheckpointError(f"--checkpoint {args.checkpoint}: already ONNX; export from the .pth checkpoint")
    if not args.output.lower().endswith(".onnx"):
        parser.error("--output must end in .onnx")
    if args.calibration_images < 1 or args.check_images < 0:
        parser.error("--calibration-images must be at least 1, --check-images at least 0")
    model, cfg = load_model(args.checkpoint, overrides=list(args.overrides) + ["device=cpu"])
    output = Path(args.output)
    fp32 = output.with_name(output.stem + ".fp32.onnx") if args.int8 else output
    summary = export_onnx(model, cfg, fp32, opset=args.opset)
    print(f"wrote {fp32} ({summary['bytes'] / 1e6:.1f} MB, opset {summary['opset']}, images of at least "
          f"{summary['min_side']} px per side)")
    if args.int8:
        paths, source = calibration_paths(args.calibration, cfg)
        onnx_predictor = Predictor.from_checkpoint(fp32, device="cpu")
        q = quantize_onnx(fp32, output, calibration_images(onnx_predictor, paths, args.calibration_images),
                          source=source)
        print(f"wrote {output} (int8, {q['bytes'] / 1e6:.1f} MB; {q['calibration_images']} calibration images from "
              f"{source}; quantized {', '.join(q['quantized_ops'])} except "
              f"{q['float_depthwise_convs']} depthwise convolutions; the rest in float"
              f"{'; 7-bit weights: no VNNI on this CPU' if q['reduce_range'] else ''})")
    if args.check_images:
        print(parity_report(model, cfg, fp32, args.check_images))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
