"""Evaluate a checkpoint on its config's test split (or another, by override), or any detector's COCO
results file: the COCO and VOC metrics, and optionally a report of why it misses.

  detect eval --checkpoint runs/mine/model_final.pth [--report] [key=value ...]
  detect eval --checkpoint runs/mine/model_final.pth data.test.split=val model.test_flip=true
  detect eval --checkpoint model.onnx                                   # an exported model
  detect eval --detections dets.json --ann-file gt.json [--img-dir images/] [--report]

Prints the table and writes metrics.json and pr_curves.png into --output-dir (default: a folder of
its own beside what was evaluated, eval_<name>, never over a training run's files). --report also
writes report.html there (per-class AP, PR curves, TIDE-style errors by type, class and size, a
confusion matrix, galleries of the images with the most errors of each type) and adds the error
table to metrics.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detect.cli.common import (add_checkpoint, add_device, add_old_spelling, add_output_dir, add_overrides,
                               add_overwrite, keys_epilog, note, overrides_with_device, progress_enabled)

HELP = "COCO / VOC metrics of a checkpoint or a results file, and why it misses"
EVAL_OUTPUTS = ("metrics.json", "pr_curves.png", "report.html")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint(parser, required=False)
    parser.add_argument("--config", help="use this config instead of the one stored in the checkpoint")
    parser.add_argument("--detections", help="a COCO results file to evaluate instead of a checkpoint")
    parser.add_argument("--ann-file", help="with --detections: the COCO ground-truth file")
    parser.add_argument("--img-dir", help="with --detections: the images' folder (for the report's galleries)")
    add_output_dir(parser, "folder for metrics.json, pr_curves.png and report.html (default: eval_<name> beside "
                           "the checkpoint or results file)", old=("--output",))
    parser.add_argument("--report", nargs="?", const="", default=None, metavar="",
                        help="also write report.html (errors by type, class and size; galleries) into --output-dir")
    add_overwrite(parser)
    add_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides(parser)
    parser.epilog = keys_epilog(test_time_only=True)


def output_folder(args: argparse.Namespace, evaluated: str) -> Path:
    """Where this evaluation writes: ``--output-dir``, else the next free ``eval_<name>`` beside
    ``evaluated``; never a folder that holds a training run, never over an earlier evaluation."""
    from detect.errors import OutputExistsError
    from detect.utils.output_dirs import TRAINING_OUTPUTS, claim_output_dir, existing_outputs, next_free

    if args.output_dir is None:
        return next_free(Path(evaluated).parent, f"eval_{Path(evaluated).stem}")
    folder = Path(args.output_dir)
    run_files = [f for f in existing_outputs(folder, TRAINING_OUTPUTS) if f not in EVAL_OUTPUTS]
    if run_files:
        raise OutputExistsError(f"{folder} holds a training run ({', '.join(run_files[:3])}): an evaluation writes "
                                f"into a folder of its own (leave out --output-dir for eval_<name> beside the "
                                f"checkpoint)")
    return claim_output_dir(folder, EVAL_OUTPUTS, "an evaluation", overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    from detect.errors import ConfigError
    from detect.evaluation.metrics import evaluate, evaluate_detections, format_metrics
    from detect.evaluation.report import write_report
    from detect.evaluation.results_files import load_ground_truth, load_results, results_to_detections
    from detect.inference.loading import load_model
    from detect.utils.device import resolve_device

    if bool(args.checkpoint) == bool(args.detections):
        raise ConfigError("give --checkpoint, or --detections with --ann-file")
    if args.detections and not args.ann_file:
        raise ConfigError("--detections needs --ann-file (the ground truth)")
    output = output_folder(args, args.checkpoint or args.detections)
    report_dir = None
    if args.report is not None:
        report_dir = Path(args.report) if args.report else output
        if args.report:
            note(f"--report DIR is now --report (report.html goes into --output-dir); the old spelling works until "
                 f"detect 0.3")

    def report(image_dir, title):
        def write(gt, results, metrics):
            paths = {im["id"]: (Path(image_dir) / im["file_name"] if image_dir else Path(im["file_name"]))
                     for im in gt["images"]}
            return write_report(report_dir, gt, results, metrics, image_paths=paths, title=title)
        return write if report_dir is not None else None

    if args.detections:
        gt = load_ground_truth(args.ann_file)
        results = load_results(args.detections, gt)
        metrics = evaluate_detections(gt, results_to_detections(results, gt), output_dir=output,
                                      report=report(args.img_dir, args.detections))
        print(format_metrics(metrics))
    else:
        model, cfg = load_model(args.checkpoint, args.config, overrides_with_device(args))
        device = resolve_device(cfg.device)
        model.to(device)
        metrics = evaluate(model, cfg, device, output_dir=output, progress=progress_enabled(args),
                           report=report(None, args.checkpoint), source=args.checkpoint)
        print(format_metrics(metrics))
        t = metrics["timing"]
        print(f"\n{t['images']} images, {t['seconds_per_image'] * 1000:.1f} ms per image "
              f"({t['model_seconds_per_image'] * 1000:.1f} ms in the model)")
    if report_dir is not None:
        e = metrics["errors"]
        print("errors (AP50 points gained if fixed): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in e["dAP"].items()))
        print(f"wrote {report_dir / 'report.html'}")
    print(f"wrote {output / 'metrics.json'}")
    return 0
