import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detect.data.coco import load_coco, to_coco_dict
from detect.evaluation.metrics import (COCO_STATS, evaluate_coco, evaluate_detections, evaluate_voc, to_coco_results,
                                      voc_ap)


def noisy_detections(gt, seed=0):
    """Detections near the ground truth (some good, some shifted, some false), random scores."""
    rng = np.random.default_rng(seed)
    dets = {}
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img in gt["images"]:
        boxes, scores, labels = [], [], []
        for a in by_image.get(img["id"], []):
            x, y, w, h = a["bbox"]
            for _ in range(2):
                jitter = rng.normal(0, 0.15 * max(w, h), 4)
                boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                scores.append(rng.random())
                labels.append(a["category_id"] if rng.random() > 0.2 else rng.integers(1, 4))
        for _ in range(2):
            x, y = rng.uniform(0, 60, 2)
            boxes.append([x, y, x + 20, y + 20])
            scores.append(rng.random() * 0.5)
            labels.append(rng.integers(1, 4))
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        dets[img["id"]] = {"boxes": boxes, "scores": np.array(scores, np.float32), "labels": np.array(labels)}
    return dets


@pytest.fixture
def gt_and_dets(shapes_dir):
    ds = load_coco(shapes_dir / "train.json", shapes_dir / "images")
    gt = to_coco_dict(ds)
    return gt, noisy_detections(gt)


def pycocotools_reference(gt, results, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_metrics_equal_pycocotools_exactly(gt_and_dets):
    gt, dets = gt_and_dets
    results = to_coco_results(dets)
    ours = evaluate_coco(gt, results, backend="pycocotools")
    ref = pycocotools_reference(gt, results)
    assert [ours[k] for k in COCO_STATS] == [float(v) for v in ref]
    assert 0.05 < ours["AP50"] < 0.95  # a real, non-trivial case
    # Per-class AP from the precision array equals pycocotools run on that class alone.
    for cat in gt["categories"]:
        alone = pycocotools_reference(gt, results, cat_ids=[cat["id"]])
        assert ours["per_class"][cat["name"]]["AP"] == pytest.approx(alone[0], abs=1e-12)
        assert ours["per_class"][cat["name"]]["AP50"] == pytest.approx(alone[1], abs=1e-12)


def test_faster_coco_eval_gives_identical_numbers(gt_and_dets):
    pytest.importorskip("faster_coco_eval")
    gt, dets = gt_and_dets
    results = to_coco_results(dets)
    fast = evaluate_coco(gt, results, backend="faster")
    ref = evaluate_coco(gt, results, backend="pycocotools")
    assert fast["backend"] == "faster_coco_eval" and ref["backend"] == "pycocotools"
    for k in COCO_STATS:
        assert fast[k] == pytest.approx(ref[k], abs=1e-12), k
    for name in ref["per_class"]:
        assert fast["per_class"][name]["AP"] == pytest.approx(ref["per_class"][name]["AP"], abs=1e-12)


def test_perfect_and_empty_detections(gt_and_dets):
    gt, _ = gt_and_dets
    perfect = {}
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32).reshape(-1, 4)
        perfect[img["id"]] = {"boxes": boxes, "scores": np.ones(len(anns)), "labels": np.array([a["category_id"] for a in anns])}
    m = evaluate_detections(gt, perfect)
    assert m["coco"]["AP"] == pytest.approx(1.0) and m["voc"]["mAP"] == pytest.approx(1.0)
    m = evaluate_detections(gt, {img["id"]: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}
                                 for img in gt["images"]})
    assert m["coco"]["AP"] == 0.0 and m["voc"]["mAP"] == 0.0


def test_voc_ap_by_hand():
    # Two ground truths; detections by score: TP, FP, TP -> recall .5 .5 1, precision 1 .5 .667.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_voc_matching_difficult_and_duplicates():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "iscrowd": 0},
                          {"id": 3, "image_id": 1, "category_id": 1, "bbox": [80, 0, 10, 10], "iscrowd": 1}]}
    dets = {1: {"boxes": np.array([[0, 0, 10, 10], [80, 0, 90, 10], [1, 0, 10, 10], [50, 50, 60, 60]], np.float32),
                "scores": np.array([0.9, 0.85, 0.8, 0.7]), "labels": np.array([1, 1, 1, 1])}}
    # TP, (difficult: skipped), duplicate of the first -> FP, TP: recall .5 .5 1, precision 1 .5 .667.
    m = evaluate_voc(gt, dets)
    assert m["per_class"]["a"]["AP"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m["mAP_07"] == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_outputs_written(gt_and_dets, tmp_path):
    gt, dets = gt_and_dets
    evaluate_detections(gt, dets, output_dir=tmp_path)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data["coco"]) >= set(COCO_STATS) and "per_class" in data["voc"]
    assert (tmp_path / "pr_curves.png").stat().st_size > 1000


def test_no_detections_still_draw_the_curves_coco_would(gt_and_dets, tmp_path):
    # a detector that finds nothing (an early checkpoint) gets what COCO gives a class without
    # detections, precision 0 at every recall, and the run folder still holds its pr_curves.png
    gt, dets = gt_and_dets
    m = evaluate_detections(gt, {k: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}
                                 for k in dets}, output_dir=tmp_path)
    with_one = evaluate_detections(gt, dets)
    assert set(m["coco"]["pr_curves"]) == set(with_one["coco"]["pr_curves"])
    for curve in m["coco"]["pr_curves"].values():
        assert len(curve["recall"]) == 101 and set(curve["precision"]) == {0.0}
    assert (tmp_path / "pr_curves.png").stat().st_size > 1000
