import math

import numpy as np
import pytest

from detect.models.anchor_fit import (MISSED_IOU, anchor_report, best_anchor_iou, fit_anchors, grid_iou_limit,
                                      lost_boxes_advice)


def square(cx, cy, side):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_best_iou_is_that_of_the_nearest_grid_centre():
    # stride 16: centres at 8, 24, 40, ...; a 64-px anchor, ratio 1
    boxes = np.array([square(40, 40, 64),      # on a centre: IoU 1
                      square(48, 40, 64),      # 8 px off in x: 56*64 / (2*64*64 - 56*64) = 7/9
                      square(48, 48, 64),      # 8 px off in x and y: 56*56 / (2*64*64 - 56*56)
                      square(40, 40, 32)])     # centred, a quarter of the anchor's area
    iou = best_anchor_iou(boxes, [[64.0]], [1.0], [16])
    assert iou == pytest.approx([1.0, 7 / 9, 3136 / 5056, 0.25])
    # a second level, stride 32, has a centre at (48, 48): the third box reaches IoU 1 there, the
    # second (at (48, 40)) is 8 px off in y on that grid as it is 8 px off in x on the first
    assert best_anchor_iou(boxes, [[64.0], [64.0]], [1.0], [16, 32])[1:3] == pytest.approx([7 / 9, 1.0])
    # the ceiling the grid alone sets: an anchor shaped like the box, 8 px off
    assert grid_iou_limit(boxes, [16]) == pytest.approx([1.0, 7 / 9, 3136 / 5056, 1.0])


def test_ratio_anchors_keep_their_area():
    # a 32x128 box (h/w = 4) against an anchor of size 64 and ratio 4: the same box, IoU 1
    box = np.array([[24.0, -24.0, 56.0, 104.0]])  # centre (40, 40)
    assert best_anchor_iou(box, [[64.0]], [4.0], [16]) == pytest.approx([1.0])
    assert best_anchor_iou(box, [[64.0]], [1.0], [16]) == pytest.approx([32 * 64 / (64 * 64 + 32 * 128 - 32 * 64)])


def test_best_possible_recall_by_hand():
    boxes = np.array([square(40, 40, 64), square(56, 40, 64), square(48, 40, 64), square(48, 48, 64)])
    labels = np.array([1, 1, 2, 2])
    report = anchor_report(boxes, labels, ["a", "b"], [[64.0]], [1.0], [16], fg_iou=0.7)
    # IoUs: 1, 1 (56 is a centre), 7/9 = 0.78, 0.62 -> three of four reach 0.7
    assert report["bpr"] == pytest.approx(0.75)
    assert report["per_class"]["a"]["bpr"] == 1.0 and report["per_class"]["b"]["bpr"] == 0.5
    bucket = next(b for b in report["per_size"] if b["from"] == 64)
    assert bucket["boxes"] == 4 and bucket["bpr"] == pytest.approx(0.75)
    # the missed box is missed because of the grid (its own shape 8 px off in x and y reaches only 0.62)
    assert report["lost"] == {"total": 1, "grid": 1, "ratio": 0, "size": 0, "grid_max_side": 64.0,
                              "ratio_range": None}


def random_boxes(rng, n, w, h, extent=400):
    cx, cy = rng.uniform(w, extent - w, n), rng.uniform(h, extent - h, n)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


# On grids fine for the boxes (a few pixels of offset at most) every box is matched whatever its
# position, and the fit returns the boxes' own sizes and ratios.

def test_fit_one_size_gives_that_size():
    boxes = random_boxes(np.random.default_rng(0), 200, 64, 64)
    fit = fit_anchors(boxes, [4], sizes_per_level=1, num_ratios=1)
    assert fit.sizes == [[64.0]] and fit.ratios == [1.0]
    report = anchor_report(boxes, np.ones(200, int), ["x"], fit.sizes, fit.ratios, [4])
    assert report["bpr"] == 1.0


def test_fit_two_clusters_puts_one_on_each_level():
    rng = np.random.default_rng(1)
    boxes = np.concatenate([random_boxes(rng, 150, 32, 32), random_boxes(rng, 150, 128, 128)])
    fit = fit_anchors(boxes, [4, 8], sizes_per_level=1, num_ratios=1)
    assert fit.sizes == [[32.0], [128.0]] and fit.ratios == [1.0]
    assert anchor_report(boxes, np.ones(300, int), ["x"], fit.sizes, fit.ratios, [4, 8])["bpr"] == 1.0
    # the conventional 8 x stride anchors (32 and 64) leave the large boxes out: 64 / 128 is IoU 0.25
    assert anchor_report(boxes, np.ones(300, int), ["x"], [[32.0], [64.0]], [1.0], [4, 8])["bpr"] == 0.5


def test_fit_elongated_boxes_gives_their_ratio():
    boxes = random_boxes(np.random.default_rng(2), 200, 20, 80)  # h / w = 4, sqrt(area) = 40
    fit = fit_anchors(boxes, [2], sizes_per_level=1, num_ratios=1)
    assert fit.ratios == [4.0]
    assert fit.sizes == [[41.5]]  # 40 px, rounded up to the candidates' 2^(k/8) steps: 2^(43/8)
    # three ratios for boxes of one ratio: that ratio in the middle, the others spread sqrt(2) apart
    fit = fit_anchors(boxes, [2], sizes_per_level=1, num_ratios=3)
    assert fit.ratios[1] == 4.0 and fit.ratios == pytest.approx([4 / math.sqrt(2), 4.0, 4 * math.sqrt(2)], rel=1e-3)


@pytest.mark.parametrize("boxes", [np.array([[10.0, 10.0, 30.0, 50.0]]),
                                   np.tile(np.array([[0.0, 0.0, 24.0, 24.0]]), (50, 1)),
                                   np.zeros((0, 4))], ids=["one box", "one size", "no box"])
def test_fit_degenerate_sets_give_valid_anchors(boxes):
    fit = fit_anchors(boxes, [8, 16, 32, 64], sizes_per_level=3, num_ratios=3)
    sizes = np.array(fit.sizes)
    assert sizes.shape == (4, 3) and np.isfinite(sizes).all() and (sizes > 0).all()
    assert (np.diff(sizes.ravel()) > 0).all()  # distinct, increasing from the finest level on
    assert len(fit.ratios) == 3 and (np.diff(fit.ratios) > 0).all() and min(fit.ratios) > 0
    if len(boxes) == 0:
        assert sizes[:, 1].tolist() == [64.0, 128.0, 256.0, 512.0]  # 8 x stride


def test_advice_names_the_share_lost_and_the_fix():
    tiny = np.array([square(10 + 40 * i, 13, 6) for i in range(10)])  # 6-px boxes, 5 px off a 16-px grid
    advice = lost_boxes_advice(anchor_report(tiny, np.ones(10, int), ["dot"], [[8.0]], [1.0], [16]))
    assert advice.startswith("100% of the training boxes (10 of 10) have no anchor at IoU >= 0.7")
    assert "too small for the finest anchor grid (stride 16 px" in advice and "input.min_size" in advice
    long = np.array([[40.0 * i, 0.0, 40.0 * i + 8.0, 80.0] for i in range(10)])  # h / w = 10
    report = anchor_report(long, np.ones(10, int), ["pole"], [[16.0, 32.0]], [0.5, 1.0, 2.0], [2])
    assert "aspect ratios (h/w 10-10)" in lost_boxes_advice(report)
    assert lost_boxes_advice(anchor_report(long, np.ones(10, int), ["pole"], [[25.3]], [10.0], [2])) is None


def test_training_warns_about_the_boxes_under_half_an_anchor_not_those_under_the_rpns_threshold():
    # 20-px squares 2 px off the centres of a stride-8 grid of 20-px anchors: overlap 18 x 18 = 324,
    # union 2 x 400 - 324 = 476, IoU 0.68: under the RPN's 0.7 (its low-quality match still learns
    # them), over the 0.5 at which training warns
    near = np.array([square(4 + 2 + 8 * k, 4 + 2, 20) for k in range(10)])
    assert anchor_report(near, np.ones(10, int), ["s"], [[20.0]], [1.0], [8])["lost"]["total"] == 10
    assert anchor_report(near, np.ones(10, int), ["s"], [[20.0]], [1.0], [8], MISSED_IOU)["lost"]["total"] == 0
    assert lost_boxes_advice(anchor_report(near, np.ones(10, int), ["s"], [[20.0]], [1.0], [8], MISSED_IOU)) is None
    # 4 px off (the worst place on the grid): overlap 16 x 16 = 256, union 544, IoU 0.47 -> warned
    far = np.array([square(4 + 4 + 8 * k, 4 + 4, 20) for k in range(10)])
    advice = lost_boxes_advice(anchor_report(far, np.ones(10, int), ["s"], [[20.0]], [1.0], [8], MISSED_IOU))
    assert advice.startswith("100% of the training boxes (10 of 10) have no anchor at IoU >= 0.5")
