"""Export a trained Faster R-CNN or Fast R-CNN to ONNX, optionally quantized to int8.

  detect export --checkpoint runs/mine/model_final.pth [--output-dir runs/mine/export]
  detect export --checkpoint ckpt.pth --int8 [--calibration DIR_OR_CONFIG] [key=value ...]

Writes OUTPUT_DIR/model.onnx and, with --int8, OUTPUT_DIR/model_int8.onnx (default OUTPUT_DIR: the
next free export, export2, ... beside the checkpoint). The graph takes one RGB image (1, 3, H, W) in
[0, 1] of any size, resized as the config's test transform does, and returns boxes, scores and
labels; normalisation, NMS and RoI pooling are inside. Class names, the config and the input
contract are in the file's metadata, so the .onnx runs in every command: ``detect infer --checkpoint
model.onnx``, ``detect eval --checkpoint model.onnx``. Calibration images come from a folder, a
config's training split, or by default the checkpoint's training split. The export ends with a
parity check of ONNX Runtime against PyTorch on test images. Needs the deploy extra:
pip install -e ".[deploy]".
"""
from __future__ import annotations

import argparse

from detect.cli.common import (add_checkpoint, add_old_spelling, add_output_dir, add_overrides, add_overwrite,
                               keys_epilog, note)

HELP = "ONNX (and int8) export that runs in ONNX Runtime"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint(parser, help="a .pth checkpoint of Faster R-CNN or Fast R-CNN")
    add_output_dir(parser, "folder for model.onnx (and model_int8.onnx); default: export beside the checkpoint")
    add_old_spelling(parser, "--output", "--output-dir (a folder)", "output_file")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18)")
    parser.add_argument("--int8", action="store_true", help="also quantize (static, calibrated) to int8")
    parser.add_argument("--calibration", help="folder of images or a config (its training split); "
                                              "default: the checkpoint's training split")
    parser.add_argument("--calibration-images", type=int, default=64, help="how many calibration images")
    parser.add_argument("--check-images", type=int, default=4, help="test images for the parity check (0: none)")
    add_overwrite(parser)
    add_overrides(parser)
    parser.epilog = keys_epilog(test_time_only=True)


def output_files(args: argparse.Namespace):
    """``(float file, int8 file or None)``: in ``--output-dir``, or the old ``--output FILE`` spelling
    (the int8 model there, the float one beside it as NAME.fp32.onnx)."""
    from pathlib import Path

    from detect.errors import ConfigError
    from detect.utils.output_dirs import claim_output_dir, next_free

    if getattr(args, "output_file", None):
        output = Path(args.output_file)
        if output.suffix.lower() != ".onnx":
            raise ConfigError("--output must end in .onnx")
        return (output.with_name(output.stem + ".fp32.onnx"), output) if args.int8 else (output, None)
    if args.output_dir is None:
        folder = next_free(Path(args.checkpoint).parent, "export")
        note(f"output folder: {folder}")
    else:
        folder = claim_output_dir(args.output_dir, ("model.onnx", "model_int8.onnx"), "an export",
                                  overwrite=args.overwrite)
    return folder / "model.onnx", (folder / "model_int8.onnx" if args.int8 else None)


def calibration_paths(source, cfg):
    """Image paths for int8 calibration: a folder, a config (its training split), or ``cfg``'s."""
    from pathlib import Path

    from detect.config import load_config
    from detect.data.build import build_dataset
    from detect.data.folder import list_images
    from detect.errors import DatasetError

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


def run(args: argparse.Namespace) -> int:
    from detect.errors import CheckpointError, ConfigError
    from detect.export.int8 import calibration_images, from_first_readable, quantize_onnx
    from detect.export.onnx_export import DEFAULT_OPSET, export_onnx, parity_report
    from detect.inference.loading import load_model
    from detect.inference.predictor import Predictor

    if str(args.checkpoint).lower().endswith(".onnx"):
        raise CheckpointError(f"--checkpoint {args.checkpoint}: already ONNX; export from the .pth checkpoint")
    if args.calibration_images < 1 or args.check_images < 0:
        raise ConfigError("--calibration-images must be at least 1, --check-images at least 0")
    model, cfg = load_model(args.checkpoint, overrides=list(args.overrides) + ["device=cpu"])
    if args.int8:  # a calibration set that cannot serve stops the command before the export, not after it
        paths, source = calibration_paths(args.calibration, cfg)
        paths = from_first_readable(paths, source)
    fp32, int8 = output_files(args)
    summary = export_onnx(model, cfg, fp32, opset=args.opset or DEFAULT_OPSET)
    print(f"wrote {fp32} ({summary['bytes'] / 1e6:.1f} MB, opset {summary['opset']}, images of at least "
          f"{summary['min_side']} px per side)")
    if int8 is not None:
        onnx_predictor = Predictor.from_checkpoint(fp32, device="cpu")
        q = quantize_onnx(fp32, int8, calibration_images(onnx_predictor, paths, args.calibration_images),
                          source=source)
        print(f"wrote {int8} (int8, {q['bytes'] / 1e6:.1f} MB; {q['calibration_images']} calibration images from "
              f"{source}; quantized {', '.join(q['quantized_ops'])} except "
              f"{q['float_depthwise_convs']} depthwise convolutions; the rest in float"
              f"{'; 7-bit weights: no VNNI on this CPU' if q['reduce_range'] else ''})")
    if args.check_images:
        print(parity_report(model, cfg, fp32, args.check_images))
    return 0
