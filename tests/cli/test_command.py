"""The ``detect`` command: one set of flags, three ways in, old spellings kept, nothing overwritten."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detect.checkpoint.storage import load_checkpoint
from detect.cli import COMMANDS, build_parser
from detect.config import KEYS

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "faster_rcnn" / "shapes.yaml"


def run(args, cwd=REPO):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "CI": "true"})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from detect.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("tiny"), num_train=4, num_test=2, seed=2, long_side=96,
                            max_objects=3)


def tiny_overrides(data, iterations=3):
    return [f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images",
            f"data.test.ann_file={data}/test.json", f"data.test.img_dir={data}/images", "input.min_size=96",
            "input.min_size_test=96", "input.max_size=128", "data.num_workers=0", "model.roi_head.fc_dim=32",
            f"train.max_iter={iterations}", "train.checkpoint_period=0", "device=cpu"]


def digest(folder: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_help_lists_every_command_flag_and_key_without_importing_torch():
    code = ("import sys, io, contextlib\nfrom detect.cli import main\nout = io.StringIO()\n"
            "for argv in (['--help'], ['train', '--help'], ['infer', '--help']):\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print(out.getvalue())\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("NO TORCH")
    for name in COMMANDS:
        assert f"    {name}" in r.stdout, name
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    train_help = commands["train"].format_help()
    for action in commands["train"]._actions:
        assert all(option in train_help for option in action.option_strings)
    for key in KEYS:  # train --help lists every config key; infer --help the test-time ones
        assert f"{key.name}=" in train_help, key.name
    infer_help = commands["infer"].format_help()
    assert "model.test_flip=" in infer_help and "train.lr=" not in infer_help


def test_the_scripts_run_the_checkouts_package_wherever_they_are_called_from(tmp_path):
    # another "detect" first on the path (an older install, another checkout) must not be the one run
    decoy = tmp_path / "decoy" / "detect"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package was imported')\n")
    for tool in sorted((REPO / "tools").glob("*.py")):
        r = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(decoy.parent)})
        assert r.returncode == 0, (tool.name, r.stderr[-500:])
        assert r.stdout.startswith("usage: detect "), tool.name


def test_the_same_training_through_the_command_the_module_and_the_script(tiny_data, tmp_path):
    doors = {"command": [shutil.which("detect") or pytest.skip("the detect command is not installed (pip install -e .)"),
                         "train"],
             "module": [sys.executable, "-m", "detect", "train"],
             "script": [sys.executable, "tools/train.py"]}
    weights = {}
    for name, door in doors.items():
        r = run([*door, "--config", CONFIG, "--output-dir", tmp_path / name, *tiny_overrides(tiny_data)])
        assert r.returncode == 0, (name, r.stderr[-2000:])
        weights[name] = load_checkpoint(tmp_path / name / "model_final.pth")["model"]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["coco"] == json.loads((tmp_path / "command" / "metrics.json").read_text())["coco"]
    for name in ("module", "script"):
        assert all((weights[name][k] == weights["command"][k]).all() for k in weights["command"]), name


def test_a_second_training_into_a_finished_run_is_refused_and_nothing_there_changes(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    r = run([sys.executable, "-m", "detect", "train", "--config", CONFIG, "--output-dir", run_dir,
             *tiny_overrides(tiny_data)])
    assert r.returncode == 0, r.stderr[-2000:]
    before = digest(run_dir)
    assert {"model_final.pth", "log.jsonl", "config.yaml", "metrics.json"} <= set(before)
    r = run([sys.executable, "-m", "detect", "train", "--config", CONFIG, "--output-dir", run_dir,
             *tiny_overrides(tiny_data, iterations=2)])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir} already holds a training run (config.yaml, "), lines
    assert lines[0].endswith("continue it with --resume, choose another --output-dir or replace it with --overwrite")
    assert digest(run_dir) == before

    # an evaluation of the run writes into a folder of its own, inside the run, and changes nothing there
    r = run([sys.executable, "-m", "detect", "eval", "--checkpoint", run_dir / "model_final.pth"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert digest(run_dir) == before
    assert json.loads((run_dir / "eval_model_final" / "metrics.json").read_text())["checkpoint"] == \
        str(run_dir / "model_final.pth")
    r = run([sys.executable, "-m", "detect", "eval", "--checkpoint", run_dir / "model_final.pth"])
    assert r.returncode == 0 and (run_dir / "eval_model_final2" / "metrics.json").is_file()
    r = run([sys.executable, "-m", "detect", "eval", "--checkpoint", run_dir / "model_final.pth", "--output-dir", run_dir])
    assert r.returncode == 2 and "holds a training run" in r.stderr and digest(run_dir) == before

    # --overwrite replaces the run: a 2-iteration log
    r = run([sys.executable, "-m", "detect", "train", "--config", CONFIG, "--output-dir", run_dir, "--overwrite",
             *tiny_overrides(tiny_data, iterations=2)])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert rows[-1]["iteration"] == 2 and load_checkpoint(run_dir / "model_final.pth")["iteration"] == 2


def test_without_an_output_dir_runs_take_the_next_free_name(tiny_data, tmp_path):
    for expected in ("train", "train2"):
        r = run([sys.executable, "-m", "detect", "train", "--config", CONFIG, *tiny_overrides(tiny_data, 1),
                 "data.test.ann_file=null"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"note: run folder: runs/{expected}" in r.stderr
        assert (tmp_path / "runs" / expected / "model_final.pth").is_file()


def test_infer_takes_test_time_overrides_and_the_old_spellings_with_a_note(tiny_data, tmp_path):
    r = run([sys.executable, "-m", "detect", "train", "--config", CONFIG, "--output-dir", tmp_path / "run",
             *tiny_overrides(tiny_data, 2), "data.test.ann_file=null", "model.roi_head.score_thresh=0.0"])
    assert r.returncode == 0, r.stderr[-2000:]
    checkpoint, images = tmp_path / "run" / "model_final.pth", tiny_data / "images" / "test"
    counts = {}
    # shapes.yaml tests with flip and a second scale: the overrides turn both off
    for name, extra in (("views", []), ("one_view", ["model.test_flip=false", "model.test_scales=[]"])):
        r = run([sys.executable, "-m", "detect", "infer", "--checkpoint", checkpoint, "--input", images,
                 "--output-dir", tmp_path / name, "--workers", "0", *extra])
        assert r.returncode == 0, r.stderr[-2000:]
        counts[name] = json.loads((tmp_path / name / "detections.json").read_text())
    assert counts["one_view"] != counts["views"]  # the other views changed the scores
    r = run([sys.executable, "-m", "detect", "infer", "--checkpoint", checkpoint, "--input", images,
             "--output-dir", tmp_path / "x", "model.test_flips=true"])
    assert r.returncode == 2 and "unknown key 'model.test_flips'" in r.stderr and "model.test_flip" in r.stderr

    r = run([sys.executable, "tools/infer.py", "--checkpoint", checkpoint, "--input", images, "--output", tmp_path / "old",
             "--workers", "0", "--classes", "ellipse,triangle"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: --output is now --output-dir; the old spelling works until detect 0.3" in r.stderr
    assert "note: lists are space-separated: --classes ellipse triangle (commas work until detect 0.3)" in r.stderr
    kept = json.loads((tmp_path / "old" / "detections.json").read_text())
    assert {d["category_id"] for d in kept} <= {2, 3}

    # a folder holding an earlier run's detections is refused; --skip-existing finishes it instead
    r = run([sys.executable, "-m", "detect", "infer", "--checkpoint", checkpoint, "--input", images,
             "--output-dir", tmp_path / "old", "--workers", "0"])
    assert r.returncode == 2 and "--skip-existing" in r.stderr and "--overwrite" in r.stderr
