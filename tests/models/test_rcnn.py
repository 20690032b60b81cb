"""R-CNN: warped crops with context, SVMs with hard negative mining, ridge box regression, the
resumable feature cache, and a tiny R-CNN trained through all three phases."""
import json

import numpy as np
import torch

from detect.config import load_config
from detect.inference.loading import load_model
from detect.evaluation.metrics import evaluate
from detect.compression.pruning_runs import PruneSpec, prune_checkpoint
from detect.training.rcnn_phases import extract_features
from detect.training.svm import mine_hard_negatives, ridge_regression, train_linear_svm, train_svm_with_hard_negatives
from detect.training.trainer import train
from detect.models import build_model
from detect.ops import BoxCoder


def test_hard_negative_mining_picks_the_highest_scoring_uncached_negatives():
    scores = np.array([-2.0, 0.5, -0.5, 3.0, -1.5, 1.0, -0.99])
    in_cache = np.array([False, False, False, True, False, False, False])
    assert mine_hard_negatives(scores, in_cache).tolist() == [5, 1, 2, 6]  # > -1, not cached, best first
    assert mine_hard_negatives(scores, in_cache, limit=2).tolist() == [5, 1]


def test_svm_separates_a_linearly_separable_set():
    rng = np.random.default_rng(0)
    pos = rng.normal(0, 1, (60, 5)) + [3, 0, 0, 0, 0]
    neg = rng.normal(0, 1, (300, 5)) - [3, 0, 0, 0, 0]
    keep_pos, keep_neg = pos[:, 0] > 1, neg[:, 0] < -1  # a gap of 2 along the first axis
    x = np.concatenate([pos[keep_pos], neg[keep_neg]])
    y = np.r_[np.ones(keep_pos.sum()), -np.ones(keep_neg.sum())]
    w, b = train_linear_svm(x, y, c=10.0)
    margins = y * (x @ w + b)
    assert margins.min() >= 1 - 1e-2  # separable and C large: every point outside the margin
    # a gap of 2 along the first axis admits a margin of width >= 2, so the max-margin |w| <= 1
    assert np.linalg.norm(w) <= 1.0 + 1e-2

    # with mining: start from 10 random negatives, the mined SVM still separates all of them
    out = train_svm_with_hard_negatives(pos[keep_pos], neg[keep_neg], c=10.0, initial_negatives=10, passes=5)
    assert np.all(neg[keep_neg] @ out["weight"] + out["bias"] < 0)
    assert out["passes"][0]["cache"] == 10


def test_ridge_targets_round_trip_through_the_box_coder():
    rng = np.random.default_rng(1)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    proposals = torch.tensor(rng.uniform(0, 50, (200, 2)), dtype=torch.float32)
    proposals = torch.cat([proposals, proposals + torch.tensor(rng.uniform(10, 60, (200, 2)), dtype=torch.float32)], 1)
    feats = rng.normal(0, 1, (200, 6)).astype(np.float32)
    true_w = rng.normal(0, 0.1, (7, 4)).astype(np.float32)
    deltas = np.concatenate([feats, np.ones((200, 1), np.float32)], 1) @ true_w
    gt = coder.decode(torch.from_numpy(deltas), proposals)
    targets = coder.encode(proposals, gt).numpy()
    np.testing.assert_allclose(targets, deltas, atol=1e-4)
    w = ridge_regression(feats, targets, lam=1e-6)
    back = coder.decode(torch.from_numpy(np.concatenate([feats, np.ones((200, 1), np.float32)], 1) @ w), proposals)
    torch.testing.assert_close(back, gt, atol=1e-2, rtol=1e-3)
    shrunk = ridge_regression(feats, targets, lam=1e6)  # the paper's lambda pulls weights to 0
    assert np.abs(shrunk).max() < 0.1 * np.abs(w).max()


def test_crops_warp_the_box_inside_its_context_border():
    cfg = load_config("configs/rcnn/shapes.yaml", ["data.classes=[a]", "model.rcnn.crop_size=30",
                                                     "model.rcnn.context=5"])
    model = build_model(cfg)
    batch = torch.zeros(1, 3, 64, 64)
    batch[:, :, 20:40, 10:50] = 1.0  # a 40x20 white box
    crop = model.crops(batch, [torch.tensor([[10.0, 20.0, 50.0, 40.0]])])[0, 0]
    assert crop.shape == (30, 30)
    # anisotropic warp: the box fills [5, 25) on both axes; the context border is black
    assert crop[6:24, 6:24].min() > 0.99
    assert crop[:4].max() < 0.01 and crop[26:].max() < 0.01 and crop[:, :4].max() < 0.01


def rcnn_config(data, *extra):
    train_json = f"{data}/train.json"
    return load_config("configs/rcnn/shapes.yaml", [
        f"data.train.ann_file={train_json}", f"data.train.img_dir={data}/images",
        f"data.test.ann_file={train_json}", f"data.test.img_dir={data}/images",
        f"data.train.proposals={data}/props.npz", f"data.test.proposals={data}/props.npz",
        "input.min_size=128", "input.min_size_test=128", "input.max_size=256", "input.flip_prob=0.0",
        "model.rcnn.crop_size=48", "model.rcnn.context=4", "model.rcnn.fc_dim=128", "model.rcnn.svm_proposals=300",
        "model.proposals.topk_test=500", "train.batch_size=2", "train.warmup_iters=20", "train.log_period=10",
        "train.checkpoint_period=0", "data.num_workers=0", "device=cpu", *extra])


def test_feature_cache_resume_gives_identical_features(shapes_with_proposals, tmp_path):
    cfg = rcnn_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]", "model.rcnn.feature_dtype=float32")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    full = extract_features(model, cfg, tmp_path / "full", torch.device("cpu"), progress=False)
    part = extract_features(model, cfg, tmp_path / "part", torch.device("cpu"), progress=False, limit=2)
    assert len(part.index["done"]) == 2
    resumed = extract_features(model, cfg, tmp_path / "part", torch.device("cpu"), progress=False)
    assert len(resumed.index["done"]) == 4
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(full.features))
    np.testing.assert_array_equal(np.asarray(resumed.arrays["class_iou"]), np.asarray(full.arrays["class_iou"]))
    # gt rows carry their labels; proposals have label 0
    rows = full.rows()
    from detect.data.build import build_dataset

    records = build_dataset(cfg, "train").records
    expected = np.sort(np.concatenate([r.labels for r in records]))
    written = np.asarray(full.arrays["gt_label"])[rows]
    assert len(expected) > 0 and np.array_equal(np.sort(written[written > 0]), expected)
    assert (written == 0).sum() == len(rows) - len(expected)  # every other row is a proposal
    # other weights: the cache is rebuilt, not reused
    with torch.no_grad():
        model.fc.weight.add_(0.1)
    rebuilt = extract_features(model, cfg, tmp_path / "part", torch.device("cpu"), progress=False, limit=1)
    assert len(rebuilt.index["done"]) == 1


def test_tiny_rcnn_learns_shapes_and_box_regression_is_used(shapes_with_proposals, tmp_path):
    cfg = rcnn_config(shapes_with_proposals, "train.max_iter=250", "train.lr=0.02", "train.steps=[0.8]")
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["coco"]["AP50"] >= 0.7, metrics["coco"]
    fit = json.loads((tmp_path / "rcnn_fit.json").read_text())
    assert set(fit["classes"]) == {"rectangle", "ellipse", "triangle"}
    model, mcfg = load_model(tmp_path / "model_final.pth")
    assert bool(model.svm_fitted) and bool(model.bbox_fitted)
    assert (tmp_path / "rcnn_features" / "index.json").is_file()

    # unit pruning of the crop network's fc while fine-tuning: the SVMs and regressors are fitted
    # again on the new features, and the checkpoint rebuilds with the new width
    out = prune_checkpoint(tmp_path / "model_final.pth", PruneSpec("unit", 0.5, finetune_minutes=0.05),
                           tmp_path / "pruned.pth")
    assert out["info"]["layers"]["fc"] == {"units": 128, "kept": 64} and out["info"]["finetune"]["iterations"] > 0
    pruned, pcfg = load_model(tmp_path / "pruned.pth")
    assert pcfg.model.rcnn.fc_dim == 64 and pruned.svm_weight.shape == (3, 64) and bool(pruned.svm_fitted)
    assert evaluate(pruned, pcfg, torch.device("cpu"), output_dir=None, progress=False)["coco"]["AP50"] >= 0.5
