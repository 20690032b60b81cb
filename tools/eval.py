#!/usr/bin/env python
"""Evaluate a checkpoint on its config's test set (or another, by override), or any detector's COCO
results file, with the COCO and VOC metrics; optionally an HTML report of why it misses.

  python tools/eval.py --checkpoint runs/frcnn_bccd/model_final.pth [--output DIR] [--report DIR] [key=value ...]
  python tools/eval.py --checkpoint ckpt.pth --config configs/faster_rcnn/bccd.yaml data.test.split=val
  python tools/eval.py --checkpoint model.onnx                                  # an exported model
  python tools/eval.py --detections dets.json --ann-file gt.json [--img-dir images/] [--report DIR]

Prints the table and writes metrics.json and pr_curves.png into --output (default: the checkpoint's
folder, or the results file's). --report DIR also writes DIR/report.html (per-class AP, PR curves,
TIDE-style errors by type, class and size, a confusion matrix, and galleries of the images with the
most errors of each type) and adds the error table to metrics.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detect.inference.loading import load_model
from detect.utils.device import resolve_device
from detect.evaluation.metrics import evaluate, evaluate_detections, format_metrics
from detect.evaluation.report import write_report
from detect.evaluation.results_files import load_ground_truth, load_results, results_to_detections
from detect.cli.common import run_cli, setup_logging


def _report(folder, image_dir, title):
    def run(gt, results, metrics):
        paths = {im["id"]: (Path(image_dir) / im["file_name"] if image_dir else Path(im["file_name"]))
                 for im in gt["images"]}
        return write_report(folder, gt, results, metrics, image_paths=paths, title=title)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a .pth checkpoint or an exported .onnx model")
    parser.add_argument("--config", help="use this config instead of the one stored in the checkpoint")
    parser.add_argument("--detections", help="a COCO results file to evaluate instead of a checkpoint")
    parser.add_argument("--ann-file", help="with --detections: the COCO ground-truth file")
    parser.add_argument("--img-dir", help="with --detections: the images' folder (for the report's galleries)")
    parser.add_argument("--output", help="folder for metrics.json and pr_curves.png (default: the input's)")
    parser.add_argument("--report", metavar="DIR", help="also write DIR/report.html and the error table")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    setup_logging()
    if bool(args.checkpoint) == bool(args.detections):
        parser.error("give --checkpoint, or --detections with --ann-file")
    if args.detections:
        if not args.ann_file:
            parser.error("--detections needs --ann-file (the ground truth)")
        gt = load_ground_truth(args.ann_file)
        results = load_results(args.detections, gt)
        output = Path(args.output) if args.output else Path(args.detections).parent
        report = _report(args.report, args.img_dir, f"{args.detections}") if args.report else None
        metrics = evaluate_detections(gt, results_to_detections(results, gt), output_dir=output, report=report)
        print(format_metrics(metrics))
    else:
        overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
        model, cfg = load_model(args.checkpoint, args.config, overrides)
        device = resolve_device(cfg.device)
        model.to(device)
        output = Path(args.output) if args.output else Path(args.checkpoint).parent
        report = _report(args.report, None, f"{args.checkpoint}") if args.report else None
        metrics = evaluate(model, cfg, device, output_dir=output, report=report)
        print(format_metrics(metrics))
        t = metrics["timing"]
        print(f"\n{t['images']} images, {t['seconds_per_image'] * 1000:.1f} ms per image "
              f"({t['model_seconds_per_image'] * 1000:.1f} ms in the model)")
    if args.report:
        e = metrics["errors"]
        print("errors (AP50 points gained if fixed): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in e["dAP"].items()))
        print(f"wrote {Path(args.report) / 'report.html'}")
    print(f"wrote {output / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
