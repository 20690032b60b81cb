#!/usr/bin/env python
"""Selective-search proposals for a dataset split, and proposal-recall evaluation.

  python tools/proposals.py compute --config configs/datasets/bccd.yaml --split test [--output FILE]
         [--mode fast] [--seed 0] [--max-side N] [--workers N] [--overwrite] [key=value ...]
  python tools/proposals.py recall --config configs/datasets/bccd.yaml --split test --proposals FILE [--json F]

`compute` runs in parallel processes with a progress bar and writes one .npz per split that records its
settings (see detect/proposals/cache.py for the format). Interrupted, it resumes where it stopped; a file
made with other settings is refused (use another --output or --overwrite). The default output is
data.<split>.proposals of the config, else proposals/<dataset>_<split>_<mode>.npz.
`recall` prints recall at IoU 0.5 / 0.7, AR and MABO at 100, 300, 1000 and 2000 proposals, per class.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detect.config import load_config
from detect.data.build import build_dataset
from detect.proposals.cache import compute_proposals, default_proposals_path
from detect.proposals.files import load_proposals, proposals_for_records
from detect.proposals.recall import evaluate_proposal_recall, format_recall
from detect.cli.common import run_cli, setup_logging


def cmd_compute(args) -> int:
    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, args.split)
    p = cfg.model.proposals  # the settings the model uses on the fly, unless given here
    mode = args.mode or p.mode
    seed = p.seed if args.seed is None else args.seed
    max_side = (p.max_side or None) if args.max_side is None else args.max_side
    output = args.output or default_proposals_path(cfg, args.split, mode)
    summary = compute_proposals(dataset.records, output, mode=mode, seed=seed, max_side=max_side,
                                workers=args.workers, overwrite=args.overwrite, dataset=dataset.description)
    print(f"{summary['output']}: {summary['images']} images, {summary['computed']} computed, "
          f"{summary['reused']} already done, {len(summary['failed'])} unreadable "
          f"({summary['seconds']:.1f} s)")
    for f in summary["failed"]:
        print(f"  skipped {f['file']}: {f['error']}")
    return 1 if summary["failed"] else 0


def cmd_recall(args) -> int:
    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, args.split)
    proposals = load_proposals(args.proposals)
    boxes = proposals_for_records(proposals, dataset.records)
    counts = [int(c) for c in args.counts.split(",")]
    result = evaluate_proposal_recall(boxes, [r.boxes for r in dataset.records], [r.labels for r in dataset.records],
                                      dataset.class_names, counts, [r.ignore for r in dataset.records])
    print(format_recall(result, title=f"{args.proposals} on {dataset.description}"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compute", help="selective search over a split into a proposals file")
    p.add_argument("--config", required=True)
    p.add_argument("--split", default="train", choices=["train", "test"], help="which data.<split> to use")
    p.add_argument("--output", help="proposals file (.npz)")
    p.add_argument("--mode", default=None, choices=["single", "fast", "quality"], help="default: model.proposals.mode")
    p.add_argument("--seed", type=int, default=None, help="default: model.proposals.seed")
    p.add_argument("--max-side", type=int, default=None,
                   help="search a copy downscaled to this longer side (default: model.proposals.max_side)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the file or a partial run exists")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_compute)
    p = sub.add_parser("recall", help="recall / AR / MABO of a proposals file on a split's ground truth")
    p.add_argument("--config", required=True)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--proposals", required=True)
    p.add_argument("--counts", default="100,300,1000,2000")
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_recall)
    args = parser.parse_args(argv)
    setup_logging()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
