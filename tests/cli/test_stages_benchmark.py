import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from detect.inference.loading import load_model
from detect.training.trainer import evaluate

REPO = Path(__file__).resolve().parents[2]


def test_stages_end_to_end_on_synthetic_images(tmp_path):
    from detect.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "shapes", num_train=4, num_test=2, seed=5, long_side=96, max_objects=3)
    overrides = [f"data.train.ann_file={data / 'train.json'}", f"data.train.img_dir={data / 'images'}",
                 f"data.test.ann_file={data / 'test.json'}", f"data.test.img_dir={data / 'images'}",
                 "data.train.proposals=null", "data.test.proposals=null",
                 "train.max_iter=4", "train.checkpoint_period=0", "train.warmup_iters=2", "data.num_workers=0",
                 "input.min_size=96", "input.min_size_test=96", "input.max_size=128",
                 "model.rcnn.crop_size=32", "model.rcnn.context=2", "model.rcnn.svm_proposals=100",
                 "model.proposals.topk_test=300", "model.proposals.mode=single"]
    out = tmp_path / "stages"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "stages", "--data",
                        str(REPO / "configs/datasets/shapes.yaml"), "--budget", "0.2", "--output-dir", str(out),
                        "--grid-images", "2", *overrides], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "stages.json").read_text())
    assert list(result["stages"]) == ["rcnn", "fast_rcnn", "faster_rcnn"]
    for stage in result["stages"].values():
        assert stage["test_images"] == 2 and stage["AP50"] >= stage["AP"] >= 0
        # the benchmark's timed test path scores what the package's evaluation (tools/eval.py) scores
        test = [f"data.test.ann_file={data / 'test.json'}", f"data.test.img_dir={data / 'images'}", "device=cpu",
                f"data.test.proposals={out / 'proposals' / 'test_single.npz'}"]
        model, cfg = load_model(stage["checkpoint"], overrides=test)
        evaluated = evaluate(model, cfg, torch.device("cpu"), progress=False)["coco"]
        assert (stage["AP"], stage["AP50"]) == pytest.approx((evaluated["AP"], evaluated["AP50"]), abs=1e-9), stage["name"]
        errors = stage["errors"]  # the error breakdown of the same detections
        assert errors["AP50"] == pytest.approx(stage["AP50"], abs=1e-9)
        assert set(errors["dAP"]) == {"cls", "loc", "both", "dupe", "bkg", "missed"}
        assert all(v >= -1e-9 for v in errors["dAP"].values())  # fixing errors never loses AP50
        t = stage["test_seconds_per_image"]
        assert t["proposals"] > 0 and t["network"] > 0 and t["postprocess"] >= 0
        assert abs(t["total"] - (t["proposals"] + t["network"] + t["postprocess"])) < 1e-9
        assert stage["train_seconds"] > 0 and Path(stage["checkpoint"]).is_file()
    assert result["stages"]["rcnn"]["backbone"] == "tiny"
    ratios = result["speed_ratios"]
    expected = result["stages"]["rcnn"]["test_seconds_per_image"]["total"] / \
        result["stages"]["fast_rcnn"]["test_seconds_per_image"]["total"]
    assert abs(ratios["rcnn_over_fast_rcnn_total"] - expected) < 1e-9
    for method in ("selective_search", "rpn"):
        table = result["proposals"][method]["table"]
        assert table["num_images"] == 2 and set(table["overall"]) == {"100", "300", "1000", "2000", "all"}
        curve = result["proposals"][method]["curve"]
        assert all(a <= b + 1e-12 for a, b in zip(curve["recall@0.5"], curve["recall@0.5"][1:]))  # more never hurts
    # the proposals were computed into the output folder (none configured)
    assert (out / "proposals" / "train_single.npz").is_file() and (out / "proposals" / "test_single.npz").is_file()
    md = (out / "stages.md").read_text()
    assert "| R-CNN |" in md and "| Fast R-CNN |" in md and "| Faster R-CNN |" in md and "selective search" in md
    assert "Where each stage loses AP50" in md and md.count(" | dominant |") == 1
    for name in ("stages_pr.png", "stages_recall.png", "stages_grid.jpg"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 50, name
    grid = cv2.imread(str(out / "stages_grid.jpg"))
    assert grid.shape[1] >= 4 * 200  # four columns: ground truth and the three stages
    assert "R-CNN / Fast R-CNN" in r.stdout
