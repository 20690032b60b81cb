import pytest
import torch

from detect.ops import Matcher


def rpn_matcher(low_quality=True):
    return Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=low_quality)


def test_rpn_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                        [0.2, 0.6, 0.25, 0.0]])
    matches, labels = rpn_matcher(low_quality=False)(iou)
    assert matches.tolist() == [0, 1, 1, 0]
    assert labels.tolist() == [1, -1, 0, 0]
    # gt 1's best anchor (0.6 < 0.7) becomes foreground with low-quality matches on.
    matches, labels = rpn_matcher()(iou)
    assert matches.tolist() == [0, 1, 1, 0]
    assert labels.tolist() == [1, 1, 0, 0]


def test_no_ground_truth_is_all_background():
    matches, labels = rpn_matcher()(torch.zeros(0, 5))
    assert matches.tolist() == [0] * 5 and labels.tolist() == [0] * 5
    m, lab = Matcher([0.1, 0.5], [-1, 0, 1])(torch.zeros(0, 3))
    assert lab.tolist() == [-1, -1, -1]  # Fast R-CNN: IoU 0 is below the background range


def test_all_below_threshold():
    iou = torch.tensor([[0.1, 0.2, 0.05]])
    _, labels = rpn_matcher(low_quality=False)(iou)
    assert labels.tolist() == [0, 0, 0]
    _, labels = rpn_matcher()(iou)
    assert labels.tolist() == [0, 1, 0]


def test_ties_all_become_foreground():
    iou = torch.tensor([[0.4, 0.4, 0.1],
                        [0.0, 0.0, 0.0]])  # second gt overlaps nothing: gets no match
    matches, labels = rpn_matcher()(iou)
    assert labels.tolist() == [1, 1, 0]
    assert matches.tolist()[:2] == [0, 0]


def test_threshold_boundaries_fast_rcnn():
    m = Matcher([0.1, 0.5], [-1, 0, 1])
    _, labels = m(torch.tensor([[0.05, 0.1, 0.3, 0.4999, 0.5, 1.0]]))
    assert labels.tolist() == [-1, 0, 0, 0, 1, 1]


def test_best_gt_wins_for_overlapping_gts():
    iou = torch.tensor([[0.75, 0.1], [0.8, 0.2]])
    matches, labels = Matcher([0.5], [0, 1])(iou)
    assert matches.tolist() == [1, 1] and labels.tolist() == [1, 0]


@pytest.mark.parametrize("thresholds,labels", [([0.7, 0.3], [0, -1, 1]), ([0.5], [0, 1, 1]), ([0.5], [0, 2])])
def test_bad_configuration(thresholds, labels):
    with pytest.raises(ValueError):
        Matcher(thresholds, labels)
