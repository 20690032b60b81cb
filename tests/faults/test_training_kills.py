"""Training killed with SIGKILL at reproducible moments, resumed each time with ``tools/train.py
--resume``, ends bit for bit where an uninterrupted run ends.

The kills land between checkpoints, inside checkpoint writes (half and nine tenths of the bytes on
disk), after the final checkpoint before the evaluation, and at a seeded random moment from outside;
DataLoader workers (``num_workers=2``), augmentation and weight EMA are on, so every source of state
(model, optimizer, EMA, RNG, data order, log) has to come back.
"""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from detect.data.synthetic import generate_dataset
from detect.checkpoint.storage import load_checkpoint
from tests.conftest import REPO

# Each run counts its own steps and saves from its own start; checkpoints every 4 iterations, 20 in all.
KILLS = [
    "step:6",           # iteration 6: two steps past model_0000004, log rows 5-6 must not stay twice
    "save:2:0.5",       # from 4: model_0000008 written, killed half way through model_0000012
    "step:3",           # from 8: iteration 11, between checkpoints
    "save:1:0.9",       # from 8: nine tenths of model_0000012 on disk, then killed
    "call:detect.training.trainer.loss_curve:1",  # from 8: after model_final.pth, before the evaluation
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("faults"), num_train=8, num_test=2, seed=5, long_side=128,
                            max_objects=3)


def overrides(data):
    return [f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images",
            f"data.test.ann_file={data}/test.json", f"data.test.img_dir={data}/images",
            "input.min_size=[112,128]", "input.min_size_test=128", "input.max_size=160", "input.flip_prob=0.5",
            "input.color_jitter=0.2", "model.backbone.fpn=false", "model.rpn.anchor_sizes=[[16,32,64]]",
            "model.rpn.aspect_ratios=[0.5,1.0,2.0]", "model.rpn.post_nms_topk_train=200",
            "model.roi_head.fc_dim=64", "model.roi_head.batch_size_per_image=32", "model.roi_head.score_thresh=0.0",
            "train.max_iter=20", "train.checkpoint_period=4", "train.log_period=2", "train.batch_size=2",
            "train.lr=0.02", "train.warmup_iters=5", "train.ema=0.9", "data.num_workers=2", "device=cpu"]


def launch(kill, tool_args, log, timeout=240, torchrun=False):
    """Run ``tools/<tool>`` under the kill launcher; its output goes to ``log`` (not a pipe: DataLoader
    workers orphaned by a kill hold a pipe open for seconds). Returns ``(returncode, output)``."""
    prefix = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"] if torchrun else []
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, *prefix, "tests/faults/killpoint.py", kill, *map(str, tool_args)],
                              cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"} if torchrun else None).returncode
    return code, open(log).read()


def train_args(out, data, resume=False, config="configs/faster_rcnn/shapes.yaml", extra=None):
    return ["tools/train.py", "--config", config, "--output-dir", out, "--no-progress",
            *(extra if extra is not None else overrides(data)), *(["--resume"] if resume else [])]


def killed_from_outside(out, data, delay):
    """Start a resumed run and SIGKILL its whole process group (workers too) after ``delay`` seconds."""
    proc = subprocess.Popen([sys.executable, *map(str, train_args(out, data, resume=True))], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def assert_same_state(a, b, where=""):
    """Tensors equal bit for bit, other values equal, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def log_rows(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_killed_at_every_kind_of_moment_resumes_to_the_uninterrupted_result(data, tmp_path):
    code, out = launch("none", train_args(tmp_path / "full", data), tmp_path / "full.log")
    assert code == 0, out[-3000:]

    cut = tmp_path / "cut"
    for i, kill in enumerate(KILLS):
        code, out = launch(kill, train_args(cut, data, resume=i > 0), tmp_path / f"cut{i}.log")
        assert code == -signal.SIGKILL, (kill, code, out[-3000:])
        assert not (cut / "metrics.json").exists()
    # a moment nobody chose: seeded, somewhere in the start-up or the last steps
    assert killed_from_outside(cut, data, random.Random(0).uniform(1.0, 6.0)) in (-signal.SIGKILL, 0)
    (cut / "metrics.json").unlink(missing_ok=True)  # had it finished, the last run must still write it again
    code, out = launch("none", train_args(cut, data, resume=True), tmp_path / "last.log")
    assert code == 0, out[-3000:]

    a = load_checkpoint(tmp_path / "full" / "model_final.pth")
    b = load_checkpoint(cut / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 20
    for key in ("model", "optimizer", "rng", "config", "class_names", "iteration"):
        assert_same_state(a[key], b[key], key)
    assert "ema" not in b  # the final weights are the average
    for name in ("model_0000012.pth", "model_0000016.pth"):  # the half-written one was written again, whole
        a, b = load_checkpoint(tmp_path / "full" / name), load_checkpoint(cut / name)
        assert_same_state({k: v for k, v in a.items() if k != "elapsed"},  # wall-clock seconds: never equal
                          {k: v for k, v in b.items() if k != "elapsed"}, name)
    assert json.loads((cut / "metrics.json").read_text())["coco"] == json.loads(
        (tmp_path / "full" / "metrics.json").read_text())["coco"]

    ref, got = log_rows(tmp_path / "full"), log_rows(cut)
    assert [r["iteration"] for r in got] == [r["iteration"] for r in ref] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 20]
    for r, g in zip(ref, got):
        assert {k: v for k, v in g.items() if k.startswith("loss") or k in ("lr", "eval")} == \
               {k: v for k, v in r.items() if k.startswith("loss") or k in ("lr", "eval")}


def test_a_run_with_validations_and_both_loggers_killed_resumes_to_the_same_records(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tests.training.test_runs import scalars

    extra = [*overrides(data), f"data.val.ann_file={data}/test.json", f"data.val.img_dir={data}/images",
             "train.max_iter=12", "train.eval_period=4", "train.loggers=[tensorboard]"]
    code, out = launch("none", train_args(tmp_path / "full", data, extra=extra), tmp_path / "full.log")
    assert code == 0, out[-3000:]
    cut = tmp_path / "cut"
    # inside the validation of iteration 8 (its metrics computed, nothing recorded, no checkpoint 8 yet),
    # then two steps past checkpoint 4 again; then to the end
    for i, kill in enumerate(["call:detect.training.trainer.validation_images:2", "step:2"]):
        code, out = launch(kill, train_args(cut, data, resume=i > 0, extra=extra), tmp_path / f"cut{i}.log")
        assert code == -signal.SIGKILL, (kill, code, out[-3000:])
    code, out = launch("none", train_args(cut, data, resume=True, extra=extra), tmp_path / "last.log")
    assert code == 0, out[-3000:]

    a, b = load_checkpoint(tmp_path / "full" / "model_best.pth"), load_checkpoint(cut / "model_best.pth")
    assert_same_state({k: v for k, v in a.items() if k != "elapsed"}, {k: v for k, v in b.items() if k != "elapsed"})
    clock = ("elapsed_s", "images_per_s")  # wall-clock columns: never equal

    def rows(folder):
        lines = list(csv.DictReader((folder / "results.csv").read_text().splitlines()))
        return [{k: v for k, v in row.items() if k not in clock} for row in lines]

    ref = rows(tmp_path / "full")
    assert [r["iteration"] for r in ref if r["val_AP"]] == ["4", "8", "12"]
    # a resumed run that lost the best so far would take iteration 8's equal AP as new and rewrite the file
    assert a["iteration"] == 4 and [r["best_iteration"] for r in ref if r["val_AP"]] == ["4", "4", "4"]
    assert rows(cut) == ref  # each row once, none lost, none twice
    for tag in ("val/AP", "val/AP50", "train/loss", "lr"):
        assert scalars(cut, tag) == scalars(tmp_path / "full", tag) != [], tag


def rcnn_overrides(data):
    return [f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images",
            f"data.test.ann_file={data}/train.json", f"data.test.img_dir={data}/images",
            f"data.train.proposals={data}/props.npz", f"data.test.proposals={data}/props.npz",
            "data.classes=[rectangle,ellipse,triangle]", "input.min_size=128", "input.min_size_test=128",
            "input.max_size=256", "input.flip_prob=0.5", "model.rcnn.crop_size=48", "model.rcnn.context=4",
            "model.rcnn.fc_dim=64", "model.rcnn.svm_proposals=100", "model.rcnn.feature_dtype=float32",
            "model.proposals.topk_test=100", "train.batch_size=2", "train.max_iter=8", "train.warmup_iters=2",
            "train.log_period=2", "train.checkpoint_period=2", "data.num_workers=2", "device=cpu"]


def test_rcnn_killed_in_each_of_its_three_phases_resumes_to_the_same_model(shapes_with_proposals, tmp_path):
    data = shapes_with_proposals
    args = lambda out, resume: train_args(out, data, resume, "configs/rcnn/shapes.yaml", rcnn_overrides(data))
    code, out = launch("none", args(tmp_path / "full", False), tmp_path / "full.log")
    assert code == 0, out[-3000:]
    cut = tmp_path / "cut"
    kills = ["step:5",                                         # phase 1: fine-tuning, iteration 5
             "call:detect.training.rcnn_phases.box_iou:3",              # phase 2: two images' features in the cache
             "call:detect.training.rcnn_phases.ridge_regression:2"]     # phase 3: one class's SVM and regressor done
    for i, kill in enumerate(kills):
        code, out = launch(kill, args(cut, i > 0), tmp_path / f"cut{i}.log")
        assert code == -signal.SIGKILL, (kill, code, out[-3000:])
    assert json.loads((cut / "rcnn_features" / "index.json").read_text())["done"]  # phase 2 was resumed, not redone
    code, out = launch("none", args(cut, True), tmp_path / "last.log")
    assert code == 0, out[-3000:]
    a, b = load_checkpoint(tmp_path / "full" / "model_final.pth"), load_checkpoint(cut / "model_final.pth")
    for key in ("model", "optimizer", "rng", "iteration"):
        assert_same_state(a[key], b[key], key)
    assert bool(b["model"]["svm_fitted"]) and bool(b["model"]["bbox_fitted"])
    assert (cut / "rcnn_fit.json").read_text() == (tmp_path / "full" / "rcnn_fit.json").read_text()
    assert json.loads((cut / "metrics.json").read_text())["coco"] == json.loads(
        (tmp_path / "full" / "metrics.json").read_text())["coco"]


def test_two_process_run_killed_resumes_to_the_uninterrupted_result(data, tmp_path):
    extra = [*overrides(data), "train.max_iter=10", "data.num_workers=1", "train.ema=0", "data.test.ann_file=null"]
    args = lambda out, resume: train_args(out, data, resume, extra=extra)
    code, out = launch("none", args(tmp_path / "full", False), tmp_path / "full.log", torchrun=True)
    assert code == 0, out[-3000:]
    cut = tmp_path / "cut"
    # both ranks die after their 5th step; then rank 0 alone dies half way through model_0000008.pth
    # (rank 1 is left waiting in an all-reduce until torchrun tears it down)
    for i, kill in enumerate(["step:5", "save:1:0.5"]):
        code, out = launch(kill, args(cut, i > 0), tmp_path / f"cut{i}.log", torchrun=True)
        assert code != 0, out[-3000:]
        assert not (cut / "model_final.pth").exists()
    assert (cut / ".model_0000008.pth.tmp").is_file()
    code, out = launch("none", args(cut, True), tmp_path / "last.log", torchrun=True)
    assert code == 0, out[-3000:]
    a, b = load_checkpoint(tmp_path / "full" / "model_final.pth"), load_checkpoint(cut / "model_final.pth")
    for key in ("model", "optimizer", "iteration"):
        assert_same_state(a[key], b[key], key)
    assert [r["iteration"] for r in log_rows(cut)] == [r["iteration"] for r in log_rows(tmp_path / "full")]
