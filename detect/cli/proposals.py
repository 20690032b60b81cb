"""Selective-search proposals for a dataset split, and proposal-recall evaluation.

  detect proposals compute --config configs/datasets/bccd.yaml --subset test [--output-dir proposals/]
         [--mode fast] [--seed 0] [--max-side N] [--workers N] [--overwrite] [key=value ...]
  detect proposals recall --config configs/datasets/bccd.yaml --subset test --proposals FILE [--json F]

`compute` runs in parallel processes with a progress bar and writes one .npz per split that records
its settings (detect/proposals/cache.py has the format). Interrupted, it resumes where it stopped; a
file made with other settings is refused (use another --output-dir, or --overwrite). The file is
data.<subset>.proposals of the config when set, else <dataset>_<split>_<mode>.npz in --output-dir
(default proposals/). `recall` prints recall at IoU 0.5 / 0.7, AR and MABO at 100, 300, 1000 and 2000
proposals, per class.
"""
from __future__ import annotations

import argparse

from detect.cli.common import ListOf, add_config, add_old_spelling, add_output_dir, add_overrides

HELP = "selective-search proposals for a split, and their recall"
SUBSETS = ("train", "test")


def _subset(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--subset", default=default, choices=SUBSETS, help=f"which data.<subset> (default {default})")
    add_old_spelling(parser, "--split", "--subset", "subset", choices=SUBSETS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="proposals_command", metavar="COMMAND", required=True)
    p = sub.add_parser("compute", help="selective search over a split into a proposals file")
    add_config(p, required=True)
    _subset(p, "train")
    add_output_dir(p, "folder for the proposals file (default: proposals/, or data.<subset>.proposals)")
    add_old_spelling(p, "--output", "--output-dir (a folder)", "output_file")
    p.add_argument("--mode", default=None, choices=["single", "fast", "quality"], help="default: model.proposals.mode")
    p.add_argument("--seed", type=int, default=None, help="default: model.proposals.seed")
    p.add_argument("--max-side", type=int, default=None,
                   help="search a copy downscaled to this longer side (default: model.proposals.max_side)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the file or a partial run exists")
    add_overrides(p)
    p.set_defaults(proposals_run=_compute)
    p = sub.add_parser("recall", help="recall / AR / MABO of a proposals file on a split's ground truth")
    add_config(p, required=True)
    _subset(p, "test")
    p.add_argument("--proposals", required=True)
    p.add_argument("--counts", action=ListOf, item=int, default=[100, 300, 1000, 2000], metavar="N")
    p.add_argument("--json")
    add_overrides(p)
    p.set_defaults(proposals_run=_recall)


def run(args: argparse.Namespace) -> int:
    return args.proposals_run(args)


def _compute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detect.config import load_config
    from detect.data.build import build_dataset
    from detect.proposals.cache import compute_proposals, default_proposals_path

    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, args.subset)
    p = cfg.model.proposals  # the settings the model uses on the fly, unless given here
    mode = args.mode or p.mode
    seed = p.seed if args.seed is None else args.seed
    max_side = (p.max_side or None) if args.max_side is None else args.max_side
    output = default_proposals_path(cfg, args.subset, mode)
    if getattr(args, "output_file", None):
        output = Path(args.output_file)
    elif args.output_dir is not None:
        output = Path(args.output_dir) / output.name
    summary = compute_proposals(dataset.records, output, mode=mode, seed=seed, max_side=max_side,
                                workers=args.workers, overwrite=args.overwrite, dataset=dataset.description)
    print(f"{summary['output']}: {summary['images']} images, {summary['computed']} computed, "
          f"{summary['reused']} already done, {len(summary['failed'])} unreadable "
          f"({summary['seconds']:.1f} s)")
    for f in summary["failed"]:
        print(f"  skipped {f['file']}: {f['error']}")
    return 1 if summary["failed"] else 0


def _recall(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from detect.config import load_config
    from detect.data.build import build_dataset
    from detect.proposals.files import load_proposals, proposals_for_records
    from detect.proposals.recall import evaluate_proposal_recall, format_recall

    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, args.subset)
    proposals = load_proposals(args.proposals)
    boxes = proposals_for_records(proposals, dataset.records)
    result = evaluate_proposal_recall(boxes, [r.boxes for r in dataset.records], [r.labels for r in dataset.records],
                                      dataset.class_names, args.counts, [r.ignore for r in dataset.records])
    print(format_recall(result, title=f"{args.proposals} on {dataset.description}"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
