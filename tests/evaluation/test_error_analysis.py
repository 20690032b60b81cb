"""TIDE-style error decomposition on hand-made ground truth with one error of each type planted."""
import pytest

from detect.evaluation.error_analysis import ERROR_TYPES, _fixed, analyse_errors
from detect.evaluation.metrics import evaluate_coco


def _ann(i, image, cat, box, crowd=0):
    return {"id": i, "image_id": image, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}


def _det(image, cat, box, score):
    return {"image_id": image, "category_id": cat, "bbox": box, "score": score}


GT = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"},
               {"id": 2, "width": 200, "height": 200, "file_name": "b.jpg"}],
    "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
    "annotations": [
        _ann(1, 1, 1, [10, 10, 40, 40]),   # A: found (d1), duplicated (d2), half-covered by class 2 (d6)
        _ann(2, 1, 2, [60, 10, 30, 30]),   # B: found with the wrong class (d3)
        _ann(3, 1, 1, [10, 60, 30, 30]),   # C: found with a poor box (d4)
        _ann(4, 1, 2, [60, 60, 30, 30]),   # D: nothing near it: missed
        _ann(5, 2, 2, [20, 20, 40, 40]),   # E: found (d7)
        _ann(6, 2, 1, [100, 100, 50, 50], crowd=1),  # a crowd region: d8 inside it is no error
    ],
}
RESULTS = [
    _det(1, 1, [0, 0, 5, 5], 0.95),        # 0 d5 bkg
    _det(1, 1, [10, 10, 40, 40], 0.9),     # 1 d1 true positive on A
    _det(1, 1, [12, 10, 40, 40], 0.8),     # 2 d2 dupe of A (IoU 0.9)
    _det(1, 1, [60, 10, 30, 30], 0.7),     # 3 d3 cls: B's box, class 1
    _det(1, 1, [25, 60, 30, 30], 0.6),     # 4 d4 loc: IoU 1/3 with C
    _det(1, 2, [20, 20, 40, 40], 0.4),     # 5 d6 both: IoU 0.39 with A, another class; none with B
    _det(2, 2, [20, 20, 40, 40], 0.85),    # 6 d7 true positive on E
    _det(2, 1, [110, 110, 20, 20], 0.3),   # 7 d8 inside the crowd region: ignored
]


def test_each_planted_error_gets_its_type():
    r = analyse_errors(GT, RESULTS)
    assert r["per_detection"] == {0: "bkg", 2: "dupe", 3: "cls", 4: "loc", 5: "both"}
    assert r["missed"] == [4]
    assert r["counts"] == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "missed": 1}
    # sizes of the boxes the errors point at (background: the detection's own): A 40x40 is medium
    assert r["counts_by_size"]["small"] == {"cls": 1, "loc": 1, "both": 0, "dupe": 0, "bkg": 1, "missed": 1}
    assert r["counts_by_size"]["medium"] == {"cls": 0, "loc": 0, "both": 1, "dupe": 1, "bkg": 0, "missed": 0}


def test_dap_of_each_fix_equals_the_hand_computation():
    # COCO's 101-point AP50. Class one: bkg FP, TP, then FPs: precision 0.5 up to recall 0.5 ->
    # 51 * 0.5 / 101. Class two: one TP of three boxes, first -> 34 / 101.
    one, two = 25.5 / 101, 34 / 101
    r = analyse_errors(GT, RESULTS)
    assert r["AP50"] == pytest.approx((one + two) / 2, abs=1e-6)
    expected = {
        "cls": ((one + 67 / 101) / 2),              # d3 becomes a second TP of class two, before its FP
        "loc": ((51 * 0.5 + 50 * 0.4) / 101 + two) / 2,  # d4 a TP at 2 / 5 precision, recall 1
        "both": (one + two) / 2,                    # d6 came after class two's only TP
        "dupe": (one + two) / 2,                    # d2 came after class one's TP
        "bkg": (51 / 101 + two) / 2,                # without d5 class one's TP comes first
        "missed": (one + 51 / 101) / 2,             # without D class two has two boxes, one found
    }
    for kind in ERROR_TYPES:
        assert r["dAP"][kind] == pytest.approx(expected[kind] - r["AP50"], abs=1e-6), kind
    assert r["dAP_by_class"]["two"]["cls"] == pytest.approx(67 / 101 - two, abs=1e-6)
    assert r["dAP_by_class"]["one"]["bkg"] == pytest.approx(51 / 101 - one, abs=1e-6)


def test_fixed_results_are_scored_by_the_evaluator_itself():
    r = analyse_errors(GT, RESULTS)
    gt, fixed = _fixed(GT, RESULTS, r["per_detection"], {3: GT["annotations"][1], 4: GT["annotations"][2]},
                       {1, 5}, r["missed"], "loc")
    moved = [d for d in fixed if d["score"] == 0.6]
    assert moved[0]["bbox"] == [10, 60, 30, 30]  # d4 took C's box
    assert r["AP50"] + r["dAP"]["loc"] == pytest.approx(evaluate_coco(gt, fixed, backend="pycocotools")["AP50"])


def test_a_fix_that_would_duplicate_a_found_box_removes_the_detection():
    gt = {**GT, "annotations": GT["annotations"][:1]}
    results = [_det(1, 1, [10, 10, 40, 40], 0.9), _det(1, 2, [10, 10, 40, 40], 0.8)]  # TP, then cls on A
    r = analyse_errors(gt, results)
    assert r["per_detection"] == {1: "cls"}
    assert r["dAP"]["cls"] == pytest.approx(0.0)  # fixed, it would be A's duplicate: removed, AP unchanged


def test_no_detections_means_everything_is_missed():
    r = analyse_errors(GT, [])
    assert r["counts"]["missed"] == 5 and sum(r["counts"].values()) == 5
    assert r["AP50"] == 0.0


def test_confusion_matrix_counts_each_box_once():
    from detect.evaluation.error_analysis import confusion_matrix

    c = confusion_matrix(GT, RESULTS, iou=0.5, score_thresh=0.5)
    assert c["classes"] == ["one", "two", "background"]
    # one: A found as one (d1); two: B found as one (d3), D missed, E found as two (d7); background:
    # d5 (one) and d2 (one; A is taken by d1). C's detection d4 (IoU 1/3) is background, C missed;
    # d6 (0.4) and d8 (0.3) are under the score threshold.
    assert c["matrix"] == [[1, 0, 1],
                           [1, 1, 1],
                           [3, 0, 0]]


def test_an_ignore_flag_is_a_crowd_region_for_the_errors_and_the_confusion_matrix(tmp_path):
    """A ground-truth file read for --detections marks ``ignore`` boxes crowd, as the dataset reader
    does: a detection on one is neither a background error nor a background row of the matrix."""
    import json

    from detect.evaluation.error_analysis import confusion_matrix
    from detect.evaluation.results_files import load_ground_truth

    raw = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "ignore": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps(raw))
    gt = load_ground_truth(tmp_path / "gt.json")
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [61, 61, 28, 28], "score": 0.8}]
    assert analyse_errors(gt, dets)["counts"]["bkg"] == 0
    assert confusion_matrix(gt, dets)["matrix"] == [[1, 0], [0, 0]]
