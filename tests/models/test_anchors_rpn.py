import math

import pytest
import torch

from detect.models.anchors import AnchorGenerator, cell_anchors
from detect.models.rpn import RPN, RPNHead
from detect.ops import BalancedSampler, Matcher


def test_cell_anchors_keep_area_across_ratios():
    a = cell_anchors([32.0], [0.5, 1.0, 2.0])
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert torch.allclose(w * h, torch.full((3,), 1024.0))
    assert torch.allclose(h / w, torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(a[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))


def test_anchor_grid_by_hand():
    gen = AnchorGenerator([[16.0]], [1.0], strides=[8])
    (anchors,) = gen([(2, 3)], torch.device("cpu"))
    # Centres at (x + 0.5) * 8, (y + 0.5) * 8, row-major over (y, x).
    expected = [[4 - 8 + 8 * x, 4 - 8 + 8 * y, 4 + 8 + 8 * x, 4 + 8 + 8 * y] for y in range(2) for x in range(3)]
    assert anchors.tolist() == expected
    # Order of several anchors per cell: (y, x, anchor).
    gen = AnchorGenerator([[8.0, 16.0]], [1.0], strides=[4])
    (anchors,) = gen([(1, 2)], torch.device("cpu"))
    assert anchors[:, 2].sub(anchors[:, 0]).tolist() == [8.0, 16.0, 8.0, 16.0]
    assert anchors[2].tolist() == [2.0, -2.0, 10.0, 6.0]


def test_anchor_levels_must_match():
    with pytest.raises(ValueError, match="anchor_sizes"):
        AnchorGenerator([[32.0]], [1.0], strides=[8, 16])


def make_rpn(**kw):
    gen = AnchorGenerator([[16.0]], [1.0], strides=[16])
    return RPN(gen, RPNHead(4, 1), Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
               BalancedSampler(kw.pop("batch", 256), 0.5), pre_nms_topk=(100, 100), post_nms_topk=(50, 50), **kw)


def test_rpn_anchor_labels_by_hand():
    rpn = make_rpn()
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 0.0, 32.0, 16.0], [0.0, 16.0, 16.0, 32.0],
                            [100.0, 100.0, 116.0, 116.0]])
    gt = torch.tensor([[0.0, 0.0, 16.0, 18.0],    # IoU 256/288 = 0.89 with anchor 0
                       [14.0, 10.0, 30.0, 26.0]])  # best IoU 0.2 with anchor 1 -> low-quality positive
    labels, matched = rpn.label_anchors(anchors, {"boxes": gt})
    # anchor 1: IoU with gt1 = 12*6 / (256+256-72) = 0.164 and with anchor 2 = 2*10/(492)... -> best is anchor 1
    assert labels.tolist() == [1, 1, 0, 0]
    assert matched[0].tolist() == gt[0].tolist() and matched[1].tolist() == gt[1].tolist()
    labels, _ = rpn.label_anchors(anchors, {"boxes": gt, "ignore": torch.tensor([True, False])})
    assert labels.tolist() == [-1, 1, 0, 0]
    labels, _ = rpn.label_anchors(anchors, {"boxes": torch.zeros(0, 4)})
    assert labels.tolist() == [0, 0, 0, 0]


def test_rpn_loss_by_hand():
    rpn = make_rpn()
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [100.0, 100.0, 116.0, 116.0]])
    logits = torch.tensor([[2.0, -1.0]])
    deltas = torch.zeros(1, 2, 4)
    gt = torch.tensor([[0.0, 0.0, 16.0, 32.0]])  # IoU 0.5 with anchor 0: low-quality positive
    losses = rpn.losses(anchors, logits, deltas, [{"boxes": gt}])
    # BCE: positive logit 2 -> log(1 + e^-2); negative logit -1 -> log(1 + e^-1); mean over 2 sampled.
    bce = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert losses["loss_rpn_cls"].item() == pytest.approx(bce, rel=1e-5)
    # Target for anchor 0: (0, 0.5 * 1 / 16 * 16 ... ) -> ty = (16 - 8) / 16 = 0.5, th = log 2; beta 1/9.
    ty, th = 0.5, math.log(2)
    sl1 = lambda x: x - 0.5 / 9 if x >= 1 / 9 else 0.5 * x * x * 9
    assert losses["loss_rpn_box"].item() == pytest.approx((sl1(ty) + sl1(th)) / 2, rel=1e-5)


def test_rpn_proposals_are_clipped_sorted_and_capped():
    torch.manual_seed(0)
    rpn = make_rpn().eval()
    feats = [torch.randn(2, 4, 5, 6)]
    proposals, losses = rpn(feats, [(80, 96), (60, 50)])
    assert losses == {} and len(proposals) == 2
    for p, (h, w) in zip(proposals, [(80, 96), (60, 50)]):
        assert 0 < p.shape[0] <= 50
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= w).all() and (p[:, 3] <= h).all()
