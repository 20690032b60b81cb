"""``tools/infer.py`` and ``tools/proposals.py compute`` killed with SIGKILL part way, started again,
end with exactly what an uninterrupted run writes."""
import json
import signal
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

from detect.config import load_config
from detect.training.trainer import train
from detect.proposals.files import load_proposals
from tests.faults.test_training_kills import launch


@pytest.fixture(scope="module")
def folder_and_checkpoint(tmp_path_factory):
    """A shapes dataset, its twelve training images copied into two sub-folders, and a detector
    trained on them for a few steps."""
    from detect.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path_factory.mktemp("infer_faults"), num_train=12, num_test=2, seed=9,
                            long_side=128, max_objects=3)
    cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images", "data.test.ann_file=null",
        "input.min_size=128", "input.min_size_test=128", "input.max_size=160", "model.backbone.fpn=false",
        "model.rpn.anchor_sizes=[[16,32,64]]", "model.rpn.aspect_ratios=[0.5,1.0,2.0]",
        "model.roi_head.fc_dim=64", "model.roi_head.score_thresh=0.0", "train.max_iter=30", "train.batch_size=2",
        "train.lr=0.02", "train.warmup_iters=5", "train.checkpoint_period=0", "data.num_workers=0", "device=cpu"])
    run = tmp_path_factory.mktemp("infer_run")
    train(cfg, run, progress=False)
    images = sorted((data / "images" / "train").glob("*.jpg"))
    folder = tmp_path_factory.mktemp("folder")
    for i, path in enumerate(images[:12]):
        target = folder / ("a" if i % 2 else "b") / path.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
    return data, folder, run / "model_final.pth"


def processes_mentioning(text: str) -> List[int]:
    """Pids of the live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(int(entry.name))
    return found


def no_survivors(text: str, seconds: float = 10.0) -> List[int]:
    """Wait up to ``seconds`` for every process mentioning ``text`` to end; the ones left."""
    deadline = time.monotonic() + seconds
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_mentioning(text)


def infer_args(checkpoint, folder, out, skip):
    return ["tools/infer.py", "--checkpoint", checkpoint, "--input", folder, "--output-dir", out, "--workers", "2",
            "--batch-size", "2", *(["--skip-existing"] if skip else [])]


def test_infer_killed_twice_then_finished_writes_the_same_detections(folder_and_checkpoint, tmp_path):
    _, folder, checkpoint = folder_and_checkpoint
    code, out = launch("none", infer_args(checkpoint, folder, tmp_path / "full", False), tmp_path / "full.log")
    assert code == 0, out[-3000:]
    cut = tmp_path / "cut"
    # killed on entering the 4th finished image (3 written), then the 3rd of the rest; then from outside
    for i, kill in enumerate(["call:detect.inference.folders._finish_image:4",
                              "call:detect.inference.folders._finish_image:3"]):
        code, out = launch(kill, infer_args(checkpoint, folder, cut, i > 0), tmp_path / f"cut{i}.log")
        assert code == -signal.SIGKILL, out[-3000:]
        assert not (cut / "detections.json").exists()
        # its two DataLoader workers end with it (they used to sleep for good on a full pipe)
        assert no_survivors(str(cut)) == []
    assert len(list((cut / ".results").rglob("*.json"))) == 5
    code, out = launch("none", infer_args(checkpoint, folder, cut, True), tmp_path / "last.log")
    assert code == 0, out[-3000:]
    assert "12 images with results (7 processed now, 5 already done)" in out, out[-2000:]

    full = json.loads((tmp_path / "full" / "detections.json").read_text())
    got = json.loads((cut / "detections.json").read_text())
    assert len(full) > 12 and got == full  # every box, score and class, to the last digit
    assert json.loads((cut / "images.json").read_text()) == json.loads((tmp_path / "full" / "images.json").read_text())
    drawn = sorted(p.relative_to(cut / "images").as_posix() for p in (cut / "images").rglob("*.*"))
    assert drawn == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*"))


def proposals_args(data, folder):
    """The proposals file goes to folder/shapes_train_fast.npz (the name data.train.proposals gives it)."""
    return ["tools/proposals.py", "compute", "--config", "configs/fast_rcnn/shapes.yaml", "--subset", "train",
            "--output-dir", folder, "--mode", "fast", "--workers", "2", f"data.train.ann_file={data}/train.json",
            f"data.train.img_dir={data}/images"]


def test_proposals_killed_mid_shard_and_between_shards_give_the_same_file(folder_and_checkpoint, tmp_path):
    data = folder_and_checkpoint[0]
    code, out = launch("none", proposals_args(data, tmp_path / "full"), tmp_path / "full.log")
    assert code == 0, out[-3000:]
    small = "set:detect.proposals.cache.FLUSH_EVERY=2"  # shards of 2 images, so that kills land between them
    cut = tmp_path / "cut" / "shapes_train_fast.npz"
    for i, kill in enumerate([f"{small},call:detect.proposals.cache._flush:3",  # two shards (4 images) kept
                              f"{small},save:1:0.5"]):                          # half a shard file on disk
        code, out = launch(kill, proposals_args(data, cut.parent), tmp_path / f"cut{i}.log")
        assert code == -signal.SIGKILL, out[-3000:]
        assert not cut.exists()
    partial = tmp_path / "cut" / "shapes_train_fast.npz.partial"
    assert sorted(p.name for p in partial.iterdir() if p.name.startswith("shard")) == [
        "shard_000000.npz", "shard_000001.npz", "shard_000002.npz.tmp.npz"]
    code, out = launch(small, proposals_args(data, cut.parent), tmp_path / "last.log")
    assert code == 0, out[-3000:]
    assert not partial.exists()
    a, b = load_proposals(tmp_path / "full" / "shapes_train_fast.npz"), load_proposals(cut)
    assert list(a.keys) == list(b.keys) and len(a.keys) == 12
    assert np.array_equal(a.image_ids, b.image_ids) and np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.boxes, b.boxes) and a.meta == b.meta
