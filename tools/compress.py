#!/usr/bin/env python
"""Compress a trained checkpoint: truncated SVD of the fully connected head (Fast R-CNN, section 3.1),
pruning (weights, units, Fisher), and a report comparing them.

  python tools/compress.py svd --checkpoint CKPT --ranks 256 64 --output OUT.pth [--eval] [key=value ...]
  python tools/compress.py prune --checkpoint CKPT --method weight|unit|fisher --sparsity 0.75 \\
         [--layers fc6 fc7] [--finetune-minutes 3] --output OUT.pth [--eval] [key=value ...]
  python tools/compress.py report --checkpoint CKPT --output DIR [--sparsities 0.5 0.75 0.9] \\
         [--finetune-minutes 1] [key=value ...]

``svd`` is also what runs without a command (``tools/compress.py --checkpoint ... --ranks ...``).
Pruning and evaluation read the checkpoint's own training and test data unless overridden
(``data.train.ann_file=...``). A pruned or factorised checkpoint loads in every tool as it is.
"""
from __future__ import annotations

import argparse
import sys

from detect.compression.svd_checkpoint import compress_checkpoint, parameter_count, time_box_head
from detect.utils.device import resolve_device
from detect.evaluation.metrics import evaluate
from detect.cli.common import run_cli, setup_logging

COMMANDS = ("svd", "prune", "report")


def _evaluate_both(before, after, cfg) -> None:
    device = resolve_device(cfg.device)
    rows = []
    for name, model in (("original", before), ("compressed", after)):
        m = evaluate(model.to(device), cfg, device, output_dir=None, progress=False)
        rows.append((name, m["coco"]["AP"], m["coco"]["AP50"], m["timing"]["network_seconds_per_image"]))
    for name, ap, ap50, sec in rows:
        print(f"{name:<11} AP {ap:.4f}  AP50 {ap50:.4f}  network {sec * 1000:.1f} ms/image")
    print(f"change: AP {rows[1][1] - rows[0][1]:+.4f}, AP50 {rows[1][2] - rows[0][2]:+.4f}")


def _print_head(before, after, num_rois: int) -> None:
    t0, t1 = time_box_head(before, num_rois), time_box_head(after, num_rois)
    p0, p1 = parameter_count(before), parameter_count(after)
    print(f"box head + predictor on {num_rois} RoIs: {t0 * 1000:.1f} ms -> {t1 * 1000:.1f} ms ({t1 / t0:.2f}x); "
          f"model parameters {p0 / 1e6:.2f} M -> {p1 / 1e6:.2f} M")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True)
    parser.add_argument("--eval", action="store_true", help="evaluate both on the config's test set")
    parser.add_argument("--num-rois", type=int, default=2000, help="RoIs the box head is timed on")
    parser.add_argument("overrides", nargs="*")


def svd(argv) -> int:
    parser = argparse.ArgumentParser(prog="compress.py svd", description="truncated SVD of fc6 / fc7")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ranks", type=int, nargs=2, required=True, metavar=("FC6", "FC7"),
                        help="singular values kept for fc6 and fc7 (0 leaves a layer as it is)")
    _output_arguments(parser)
    args = parser.parse_args(argv)
    out = compress_checkpoint(args.checkpoint, args.ranks, args.output, args.overrides)
    print(f"wrote {args.output}")
    _print_head(out["original"], out["compressed"], args.num_rois)
    if args.eval:
        _evaluate_both(out["original"], out["compressed"], out["config"])
    return 0


def prune(argv) -> int:
    from detect.compression.pruning_runs import PRUNE_METHODS, UNIT_CRITERIA, PruneSpec, prune_checkpoint

    parser = argparse.ArgumentParser(prog="compress.py prune", description="weight, unit or Fisher pruning")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--method", required=True, choices=PRUNE_METHODS)
    parser.add_argument("--sparsity", type=float, required=True,
                        help="share removed: of the layers' weights (weight), of each layer's units (unit, fisher)")
    parser.add_argument("--layers", nargs="+", default=[],
                        help="fc6 fc7 (R-CNN: fc) by default; weight pruning also takes Linear / Conv2d module paths")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer",
                        help="weight pruning: the sparsity in each layer, or over all of them together")
    parser.add_argument("--criterion", choices=UNIT_CRITERIA, default="l2",
                        help="unit pruning's ranking: norm of the unit's weights, or its mean activation")
    parser.add_argument("--finetune-minutes", type=float, default=0.0,
                        help="fine-tune this long while the sparsity rises on the cubic schedule (0: one shot)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning's first learning rate (train.lr x gamma)")
    parser.add_argument("--score-batches", type=int, default=20,
                        help="one shot: training batches that score units by activation or Fisher information")
    _output_arguments(parser)
    args = parser.parse_args(argv)
    spec = PruneSpec(args.method, args.sparsity, args.layers, args.scope, args.criterion, args.finetune_minutes,
                     args.lr, args.score_batches)
    out = prune_checkpoint(args.checkpoint, spec, args.output, args.overrides, progress=True)
    print(f"wrote {args.output}")
    for layer, done in out["info"]["layers"].items():
        if "units" in done:
            print(f"  {layer}: {done['kept']} of {done['units']} units kept")
        else:
            print(f"  {layer}: {done['zero']} of {done['weights']} weights zero ({done['zero'] / done['weights']:.1%})")
    if "finetune" in out["info"]:
        ft = out["info"]["finetune"]
        print(f"  fine-tuned {ft['iterations']} iterations in {ft['seconds']:.0f} s from lr {ft['lr']:g}")
    if hasattr(out["pruned"], "roi_head"):
        _print_head(out["original"], out["pruned"], args.num_rois)
    if args.eval:
        _evaluate_both(out["original"], out["pruned"], out["config"])
    return 0


def report(argv) -> int:
    from detect.compression.sparsity_report import compression_report

    parser = argparse.ArgumentParser(prog="compress.py report",
                                     description="SVD, weight, unit and Fisher pruning against sparsity")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", required=True, help="folder for report.md, report.json and the plots")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--methods", nargs="+", default=["svd", "weight", "unit", "fisher"],
                        choices=["svd", "weight", "unit", "fisher"])
    parser.add_argument("--finetune-minutes", type=float, default=0.0,
                        help="also each pruning fine-tuned this long (0: one shot only)")
    parser.add_argument("--num-rois", type=int, default=2000)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    result = compression_report(args.checkpoint, args.output, args.sparsities, args.methods,
                                args.finetune_minutes, args.overrides, args.num_rois)
    print(result["markdown"])
    print(f"\nwrote {args.output}/report.md, report.json, ap_vs_sparsity.png, latency_vs_sparsity.png")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    elif argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    else:
        command = "svd"  # the tool's first form, before pruning joined it
    return {"svd": svd, "prune": prune, "report": report}[command](argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
