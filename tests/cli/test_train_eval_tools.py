import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detect.data import synthetic
from detect.checkpoint.storage import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def run(args, timeout=600, env=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "CI": "true", **(env or {})})


@pytest.fixture(scope="module")
def square_data(tmp_path_factory):
    """Square images only, so batches of 2 group the same way in one process or split over two."""
    out = tmp_path_factory.mktemp("square")
    aspects = synthetic.ASPECTS
    synthetic.ASPECTS = (1.0,)
    try:
        return synthetic.generate_dataset(out, num_train=4, num_test=2, seed=5, long_side=96, max_objects=3)
    finally:
        synthetic.ASPECTS = aspects


def data_overrides(data):
    return [f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images",
            f"data.test.ann_file={data}/test.json", f"data.test.img_dir={data}/images",
            "input.min_size=96", "input.min_size_test=96", "input.max_size=96", "data.num_workers=0",
            "model.roi_head.fc_dim=64", "device=cpu", "train.log_period=1"]


def test_train_then_eval_cli(square_data, tmp_path):
    r = run(["tools/train.py", "--config", "configs/faster_rcnn/shapes.yaml", "--output-dir", tmp_path / "run",
             *data_overrides(square_data), "train.max_iter=4", "train.checkpoint_period=2"])
    assert r.returncode == 0, r.stderr[-2000:]
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "log.jsonl", "model_0000002.pth", "model_0000004.pth", "model_final.pth",
            "last_checkpoint", "metrics.json", "loss_curve.png", "pr_curves.png"} <= files
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in rows if "loss" in r)
    state = load_checkpoint(tmp_path / "run" / "model_final.pth")
    assert state["class_names"] == ["rectangle", "ellipse", "triangle"] and state["config"]["train"]["max_iter"] == 4

    r = run(["tools/eval.py", "--checkpoint", tmp_path / "run" / "model_final.pth", "--output-dir", tmp_path / "eval"])
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # the same checkpoint on the same test split: the evaluation at the end of training, to the last digit
    at_training = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["coco"] == at_training["coco"] and metrics["voc"] == at_training["voc"]
    assert metrics["num_images"] == 2
    assert "AP50" in r.stdout and "triangle" in r.stdout and (tmp_path / "eval" / "pr_curves.png").is_file()

    r = run(["tools/eval.py", "--checkpoint", tmp_path / "run" / "model_final.pth", "model.backbone.name=resnet18"])
    assert r.returncode == 2 and "does not match the config" in r.stderr and "Traceback" not in r.stderr


def test_missing_dataset_fails_at_start_with_the_path(tmp_path):
    r = run(["tools/train.py", "--config", "configs/faster_rcnn/shapes.yaml", "--output-dir", tmp_path,
             f"data.train.ann_file={tmp_path}/nope/train.json", f"data.train.img_dir={tmp_path}"])
    assert r.returncode == 2
    assert f"{tmp_path}/nope/train.json" in r.stderr and "Traceback" not in r.stderr


def test_two_process_torchrun_matches_one_process(square_data, tmp_path):
    # Every anchor and every proposal is used (no random sampling), no augmentation: the two runs see
    # the same batches and differ only in how the RoI loss is normalised across the two halves.
    common = [*data_overrides(square_data), "train.max_iter=3", "train.batch_size=2", "train.checkpoint_period=0",
              "data.test.ann_file=null", "input.flip_prob=0.0", "model.backbone.norm=frozen_bn",
              "model.rpn.batch_size_per_image=100000", "model.roi_head.batch_size_per_image=100000",
              "model.roi_head.positive_fraction=1.0", "train.warmup_iters=0", "train.lr=0.01"]
    r1 = run(["tools/train.py", "--config", "configs/faster_rcnn/shapes.yaml", "--output-dir", tmp_path / "one", *common])
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
              "tools/train.py", "--config", "configs/faster_rcnn/shapes.yaml", "--output-dir", tmp_path / "two", *common],
             env={"OMP_NUM_THREADS": "1"})
    assert r2.returncode == 0, r2.stderr[-3000:]
    one = load_checkpoint(tmp_path / "one" / "model_final.pth")["model"]
    two = load_checkpoint(tmp_path / "two" / "model_final.pth")["model"]
    # Both runs start from the same seeded initialisation; rebuild it here to measure the update.
    from detect.config import load_config
    from detect.training.trainer import Trainer

    init = Trainer(load_config("configs/faster_rcnn/shapes.yaml", common), tmp_path / "init", progress=False).model.state_dict()
    keys = [k for k in one if one[k].is_floating_point()]
    update = max((one[k] - init[k]).abs().max().item() for k in keys)
    diff = max((one[k] - two[k]).abs().max().item() for k in keys)
    assert update > 1e-4
    assert diff < 0.05 * update, (diff, update)


def test_nan_on_one_rank_stops_every_rank(square_data, tmp_path):
    # Without the check on the all-reduced loss, rank 0 would wait in DDP's gradient all-reduce for
    # rank 1, which had stopped: only torchrun tearing the job down (or gloo's 30-minute timeout) ends it.
    common = [*data_overrides(square_data), "train.max_iter=5", "train.batch_size=2", "train.checkpoint_period=1",
              "data.test.ann_file=null"]
    r = run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
             "tests/cli/nan_on_one_rank.py", tmp_path, *common], env={"OMP_NUM_THREADS": "1"}, timeout=180)
    messages = [tmp_path / f"diverged_rank{rank}.txt" for rank in (0, 1)]
    assert all(m.is_file() for m in messages), r.stdout[-2000:] + r.stderr[-3000:]
    for m in messages:
        text = m.read_text()
        assert text.startswith("iteration 1: loss is not finite (mean over 2 processes)"), text
        assert "'loss_box': nan" in text and text.endswith(f"last good checkpoint: {tmp_path / 'model_0000001.pth'}")
    assert load_checkpoint(tmp_path / "model_0000001.pth")["iteration"] == 1
