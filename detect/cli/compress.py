"""Compress a trained checkpoint: truncated SVD of the fully connected head (Fast R-CNN, section 3.1),
pruning (weights, units, Fisher), and a report comparing them.

  detect compress svd --checkpoint CKPT --ranks 256 64 [--eval] [key=value ...]
  detect compress prune --checkpoint CKPT --method weight|unit|fisher --sparsity 0.75 \\
         [--layers fc6 fc7] [--finetune-minutes 3] [--eval] [key=value ...]
  detect compress report --checkpoint CKPT [--sparsities 0.5 0.75 0.9] [--finetune-minutes 1]

Each writes into --output-dir (default: the next free compress_<command> beside the checkpoint):
model_svd.pth, model_pruned.pth, or report.md / report.json and the plots. Pruning and evaluation
read the checkpoint's own training and test data unless overridden (``data.train.ann_file=...``).
A pruned or factorised checkpoint loads in every command as it is.
"""
from __future__ import annotations

import argparse

from detect.compression import PRUNE_METHODS, REPORT_METHODS, UNIT_CRITERIA
from detect.cli.common import (add_checkpoint, add_device, add_old_spelling, add_output_dir, add_overrides,
                               add_overwrite, note, overrides_with_device)

HELP = "truncated SVD and pruning of the box head, and their report"


def _common(parser: argparse.ArgumentParser, file_output: bool) -> None:
    add_checkpoint(parser, help="a .pth checkpoint")
    add_output_dir(parser, "output folder (default: compress_<command> beside the checkpoint)")
    add_old_spelling(parser, "--output", "--output-dir (a folder)", "output_file" if file_output else "output_dir")
    add_overwrite(parser)
    add_device(parser)
    parser.add_argument("--num-rois", type=int, default=2000, help="RoIs the box head is timed on")
    add_overrides(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="compress_command", metavar="COMMAND", required=True)
    p = sub.add_parser("svd", help="truncated SVD of fc6 / fc7")
    _common(p, file_output=True)
    p.add_argument("--ranks", type=int, nargs=2, required=True, metavar=("FC6", "FC7"),
                   help="singular values kept for fc6 and fc7 (0 leaves a layer as it is)")
    p.add_argument("--eval", action="store_true", help="evaluate both on the config's test set")
    p.set_defaults(compress_run=_svd)
    p = sub.add_parser("prune", help="weight, unit or Fisher pruning")
    _common(p, file_output=True)
    p.add_argument("--method", required=True, choices=PRUNE_METHODS)
    p.add_argument("--sparsity", type=float, required=True,
                   help="share removed: of the layers' weights (weight), of each layer's units (unit, fisher)")
    p.add_argument("--layers", nargs="+", default=[],
                   help="fc6 fc7 (R-CNN: fc) by default; weight pruning also takes Linear / Conv2d module paths")
    p.add_argument("--scope", choices=("layer", "global"), default="layer",
                   help="weight pruning: the sparsity in each layer, or over all of them together")
    p.add_argument("--criterion", choices=UNIT_CRITERIA, default="l2",
                   help="unit pruning's ranking: norm of the unit's weights, or its mean activation")
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="fine-tune this long while the sparsity rises on the cubic schedule (0: one shot)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning's first learning rate (train.lr x gamma)")
    p.add_argument("--score-batches", type=int, default=20,
                   help="one shot: training batches that score units by activation or Fisher information")
    p.add_argument("--eval", action="store_true", help="evaluate both on the config's test set")
    p.set_defaults(compress_run=_prune)
    p = sub.add_parser("report", help="SVD, weight, unit and Fisher pruning against sparsity")
    _common(p, file_output=False)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    p.add_argument("--methods", nargs="+", default=list(REPORT_METHODS), choices=REPORT_METHODS)
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="also each pruning fine-tuned this long (0: one shot only)")
    p.set_defaults(compress_run=_report)


def run(args: argparse.Namespace) -> int:
    return args.compress_run(args)


def _output(args: argparse.Namespace, name: str):
    """The file (svd, prune) or folder (report) to write: the old ``--output FILE`` spelling, else
    ``name`` in ``--output-dir`` (default: the next free ``compress_<command>`` beside the checkpoint)."""
    from pathlib import Path

    from detect.utils.output_dirs import claim_output_dir, next_free

    if getattr(args, "output_file", None):
        return Path(args.output_file)
    if args.output_dir is None:
        folder = next_free(Path(args.checkpoint).parent, f"compress_{args.compress_command}")
        note(f"output folder: {folder}")
    else:
        folder = claim_output_dir(args.output_dir, [name] if name else ["report.md", "report.json"],
                                  f"a compress {args.compress_command} result", overwrite=args.overwrite)
    return folder / name if name else folder


def _evaluate_both(before, after, cfg) -> None:
    from detect.evaluation.metrics import evaluate
    from detect.utils.device import resolve_device

    device = resolve_device(cfg.device)
    rows = []
    for name, model in (("original", before), ("compressed", after)):
        m = evaluate(model.to(device), cfg, device, output_dir=None, progress=False)
        rows.append((name, m["coco"]["AP"], m["coco"]["AP50"], m["timing"]["network_seconds_per_image"]))
    for name, ap, ap50, sec in rows:
        print(f"{name:<11} AP {ap:.4f}  AP50 {ap50:.4f}  network {sec * 1000:.1f} ms/image")
    print(f"change: AP {rows[1][1] - rows[0][1]:+.4f}, AP50 {rows[1][2] - rows[0][2]:+.4f}")


def _print_head(before, after, num_rois: int) -> None:
    from detect.compression.svd_checkpoint import parameter_count, time_box_head

    t0, t1 = time_box_head(before, num_rois), time_box_head(after, num_rois)
    p0, p1 = parameter_count(before), parameter_count(after)
    print(f"box head + predictor on {num_rois} RoIs: {t0 * 1000:.1f} ms -> {t1 * 1000:.1f} ms ({t1 / t0:.2f}x); "
          f"model parameters {p0 / 1e6:.2f} M -> {p1 / 1e6:.2f} M")


def _svd(args: argparse.Namespace) -> int:
    from detect.compression.svd_checkpoint import compress_checkpoint

    output = _output(args, "model_svd.pth")
    out = compress_checkpoint(args.checkpoint, args.ranks, output, overrides_with_device(args))
    print(f"wrote {output}")
    _print_head(out["original"], out["compressed"], args.num_rois)
    if args.eval:
        _evaluate_both(out["original"], out["compressed"], out["config"])
    return 0


def _prune(args: argparse.Namespace) -> int:
    from detect.compression.pruning_runs import PruneSpec, prune_checkpoint

    output = _output(args, "model_pruned.pth")
    spec = PruneSpec(args.method, args.sparsity, args.layers, args.scope, args.criterion, args.finetune_minutes,
                     args.lr, args.score_batches)
    out = prune_checkpoint(args.checkpoint, spec, output, overrides_with_device(args), progress=True)
    print(f"wrote {output}")
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


def _report(args: argparse.Namespace) -> int:
    from detect.compression.sparsity_report import compression_report

    output = _output(args, "")
    result = compression_report(args.checkpoint, output, args.sparsities, args.methods, args.finetune_minutes,
                                overrides_with_device(args), args.num_rois)
    print(result["markdown"])
    print(f"\nwrote {output}/report.md, report.json, ap_vs_sparsity.png, latency_vs_sparsity.png")
    return 0
