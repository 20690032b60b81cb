#!/usr/bin/env python
"""The main job on the embedded default: generate the synthetic shapes dataset and look at it.

    python tools/quickstart.py [--data datasets/shapes] [--num-train 200] [--num-test 50]

Writes the dataset where ``configs/datasets/shapes.yaml`` reads it (``datasets/shapes``), then prints
the statistics of both splits as loaded through that config, the same path training will take.
"""
from __future__ import annotations

import argparse
import sys
import time

from detect.config import load_config
from detect.data.build import build_dataset
from detect.data.stats import dataset_stats, format_stats
from detect.data.synthetic import generate_dataset
from detect.utils.cli import run_cli, setup_logging

CONFIG = "configs/datasets/shapes.yaml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="datasets/shapes", help="where to write the synthetic dataset")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()

    start = time.perf_counter()
    generate_dataset(args.data, args.num_train, args.num_test, args.seed)
    print(f"generated {args.num_train} + {args.num_test} synthetic images in {args.data} "
          f"({time.perf_counter() - start:.1f} s)\n")
    cfg = load_config(CONFIG, [f"data.train.ann_file={args.data}/train.json", f"data.train.img_dir={args.data}/images",
                               f"data.test.ann_file={args.data}/test.json", f"data.test.img_dir={args.data}/images"])
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test", class_names=train.class_names)
    for name, ds in (("train", train), ("test", test)):
        print(format_stats(dataset_stats(ds), title=f"shapes {name} ({CONFIG})"))
        print()
    print("Next: python tools/dataset.py show --config configs/datasets/shapes.yaml --num 8 --out output/show")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
