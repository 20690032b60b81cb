"""Training runs you can watch and keep: validation during training, the best checkpoint, patience,
results.csv and TensorBoard read back with TensorBoard's own reader, the bar, and the settings that
cannot work refused before anything is written."""
import csv
import io
import json
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

from detect.checkpoint.storage import load_checkpoint
from detect.config import load_config
from detect.errors import ConfigError
from detect.evaluation.metrics import evaluate
from detect.inference.loading import load_model
from detect.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from detect.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("runs"), num_train=6, num_test=3, seed=4, long_side=96,
                            max_objects=3)


def config(data, *extra):
    return load_config("configs/faster_rcnn/shapes.yaml", [
        f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images",
        f"data.val.ann_file={data}/test.json", f"data.val.img_dir={data}/images",
        f"data.test.ann_file={data}/test.json", f"data.test.img_dir={data}/images",
        "input.min_size=96", "input.min_size_test=96", "input.max_size=128", "model.roi_head.fc_dim=32",
        "data.num_workers=0", "train.checkpoint_period=0", "train.log_period=2", "device=cpu",
        "model.test_flip=false", "model.test_scales=[]", *extra])


def scalars(folder: Path, tag: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def test_validations_the_best_checkpoint_and_the_records(data, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = config(data, "train.max_iter=6", "train.eval_period=3", "train.loggers=[tensorboard]", "train.lr=0.01")
    final = train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval" in r and "final" not in r]
    assert [r["iteration"] for r in evals] == [3, 6]
    best = max(evals, key=lambda r: r["eval"]["AP"])  # the first of equals: only a better one replaces it
    assert evals[-1]["best"] == {"metric": "AP", "value": best["eval"]["AP"], "iteration": best["iteration"]}

    # model_best.pth is the checkpoint of that evaluation and evaluates to the logged metric
    state = load_checkpoint(tmp_path / "model_best.pth")
    assert state["iteration"] == best["iteration"] and state["metrics"]["AP"] == best["eval"]["AP"]
    model, best_cfg = load_model(tmp_path / "model_best.pth")
    again = evaluate(model, best_cfg, torch.device("cpu"), progress=False, subset="val")
    assert again["coco"]["AP"] == best["eval"]["AP"] and again["coco"]["AP50"] == best["eval"]["AP50"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(tmp_path / "model_final.pth")
    assert metrics["best"] == {"metric": "AP", "value": best["eval"]["AP"], "iteration": best["iteration"],
                               "checkpoint": "model_best.pth"} == final["best"]

    # results.csv: one row per logged step and per evaluation, under one header
    table = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [(r["iteration"], bool(r["loss"]), bool(r["val_AP"])) for r in table] == [
        ("2", True, False), ("3", False, True), ("4", True, False), ("6", True, False), ("6", False, True)]
    logged = [r for r in rows if "loss" in r]
    assert [float(r["loss"]) for r in table if r["loss"]] == pytest.approx([r["loss"] for r in logged], rel=1e-5)
    assert float(table[1]["val_AP"]) == pytest.approx(evals[0]["eval"]["AP"], rel=1e-5)

    # TensorBoard, read with its own reader: the scalars at the steps they belong to
    assert [s for s, _ in scalars(tmp_path, "train/loss")] == [2, 4, 6]
    assert [v for _, v in scalars(tmp_path, "train/loss")] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [s for s, _ in scalars(tmp_path, "lr")] == [2, 4, 6]
    assert scalars(tmp_path, "val/AP") == pytest.approx([(3, evals[0]["eval"]["AP"]), (6, evals[1]["eval"]["AP"])])
    for name in cfg.data.classes:
        assert [s for s, _ in scalars(tmp_path, f"val_AP_per_class/{name}")] == [3, 6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert {"val/pr_curves", "val_images/0"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("val_images/0")] == [3, 6]


def test_patience_stops_at_the_right_evaluation(data, tmp_path):
    # lr 0: nothing is learnt, every evaluation scores what the first did; the first is the best, and
    # two more without a better one end the run after the third, at iteration 3
    cfg = config(data, "train.max_iter=20", "train.eval_period=1", "train.patience=2", "train.lr=0",
                 "data.test.ann_file=null")
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    assert trainer.iteration == 3
    state = load_checkpoint(tmp_path / "model_final.pth")
    assert state["validation"] == {"done": 3, "best": state["validation"]["best"], "best_iteration": 1,
                                   "since_best": 2, "reserve_s": 0.0}  # counted ahead only under a time budget
    assert load_checkpoint(tmp_path / "model_best.pth")["iteration"] == 1


def test_the_schedule_and_the_budget_count_the_evaluations(data, tmp_path):
    # the budget is seconds of steps and evaluations together: a run whose evaluations take most of
    # it makes fewer steps, and still ends with its schedule done (the last lr is the decayed one)
    cfg = config(data, "train.max_minutes=0.1", "train.max_iter=100000", "train.eval_period=0.02",
                 "train.log_period=1", "data.test.ann_file=null", "train.warmup_iters=0")
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    # the run ends at the budget, or once the evaluation due at its end has run: that one starts up to
    # the time counted ahead for it early (the last evaluation's, under a second here), and may end a
    # little before 6 s; at most one step or evaluation past the budget
    assert 6.0 - 1.0 <= trainer.elapsed < 6.0 + 5.0
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum("eval" in r for r in rows) >= 2
    assert [r for r in rows if "lr" in r][-1]["lr"] == pytest.approx(0.04 * 0.1 ** 2)


def test_the_evaluation_due_at_the_end_of_a_budget_fits_inside_it(data, tmp_path, monkeypatch):
    # evaluations made slow and due at 0.05, 0.1 and 0.15 minutes of a 0.15-minute run: the last one is
    # counted ahead (as long as the one before it), so the run stops early enough for it and ends within
    # one step of 9 s (counting none ahead, it ended one evaluation late: 9.8 s and more). That last one
    # is made 0.3 s quicker than counted: the run still ends with it, on the weights it scored (the clock
    # alone would leave 0.3 s of steps after it)
    import detect.training.trainer as trainer_module

    real, sleeps = trainer_module.evaluate, iter([0.9, 0.9, 0.6])

    def slow(*args, **kwargs):
        time.sleep(next(sleeps))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", slow)
    cfg = config(data, "train.max_minutes=0.15", "train.max_iter=100000", "train.eval_period=0.05",
                 "train.log_period=1", "data.test.ann_file=null", "train.warmup_iters=0")
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "lr" in r]
    assert sum("eval" in r for r in rows) == 3
    assert [r["iteration"] for r in rows if "eval" in r][-1] == steps[-1]["iteration"]  # the final weights
    evaluated = {r["iteration"] for r in rows if "eval" in r}
    step = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])
               if b["iteration"] == a["iteration"] + 1 and a["iteration"] not in evaluated)  # steps alone
    assert 9.0 - 0.3 - 0.3 <= trainer.elapsed <= 9.0 + step + 0.3, (trainer.elapsed, step)  # 0.9 s late without


def test_the_bar_under_a_time_budget_shows_the_time_left(data, tmp_path):
    cfg = config(data, "train.max_minutes=0.05", "train.max_iter=100000", "data.test.ann_file=null")
    err = io.StringIO()
    with redirect_stderr(err):
        Trainer(cfg, tmp_path, progress=True).train()
    text = err.getvalue()
    assert "train:" in text and " left" in text and "elapsed" in text and "it/s=" in text and "loss=" in text


@pytest.mark.parametrize("extra, message", [
    (["train.eval_period=50", "train.max_iter=20"], "train.eval_period=50 iterations is longer than the run "
                                                    "(train.max_iter=20): it would never evaluate"),
    (["train.eval_period=5", "train.max_minutes=2"], "train.eval_period=5 minutes is longer than the run"),
    (["train.best_metric=mAP"], "'train.best_metric' must be one of ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl']"),
    (["train.patience=3"], "train.patience=3 needs train.eval_period"),
    (["train.eval_period=2", "data.val.ann_file=null", "data.test.ann_file=null"],
     "train.eval_period is set but there is no split to validate on: set data.val (or data.test)"),
    (["train.loggers=[wandb]"], "train.loggers: 'wandb' is not a logger; one of ['tensorboard']"),
])
def test_settings_that_cannot_work_are_one_line_before_anything_is_written(data, tmp_path, extra, message):
    with pytest.raises(ConfigError) as e:
        Trainer(config(data, "train.max_iter=20", *extra), tmp_path / "run", progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_logger_that_is_not_installed_names_its_pip_install(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r'tensorboard is not installed: pip install tensorboard \(or pip install '
                                          r'-e "\.\[tensorboard\]"\)'):
        Trainer(config(data, "train.loggers=[tensorboard]"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
