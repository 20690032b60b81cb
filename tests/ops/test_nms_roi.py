import math

import pytest
import torch

from detect.ops import RoIPooler, assign_fpn_levels, batched_nms, box_voting, nms, soft_nms
from detect.ops.nms import soft_nms_reference


def test_nms_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0],
                          [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    # box 1 overlaps box 0 at IoU 9/11 > 0.5 (same class) -> dropped; box 2 is another class.
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]


def test_box_voting_by_hand():
    # the kept box, two same-class boxes overlapping it at IoU 0.818 and 0.833, one at 0.333 (below the
    # threshold), one of another class on top of it, and one far away
    boxes = torch.tensor([[0., 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 12], [5, 0, 15, 10], [0, 0, 10, 10],
                          [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.95, 0.8])
    labels = torch.tensor([1, 1, 1, 1, 2, 1])
    kept = box_voting(boxes[[0, 5]], labels[[0, 5]], boxes, scores, labels, 0.8)
    # (0 * 0.9 + 1 * 0.6 + 0 * 0.3) / 1.8 = 1 / 3; (10 * 0.9 + 11 * 0.6 + 10 * 0.3) / 1.8 = 31 / 3; the same for y2
    torch.testing.assert_close(kept, torch.tensor([[1 / 3, 0, 31 / 3, 31 / 3], [20, 20, 30, 30]]))
    # a kept box that is not among the candidates and overlaps none of them stays; no kept box at all
    lonely = torch.tensor([[50., 50, 60, 60]])
    assert torch.equal(box_voting(lonely, torch.tensor([1]), boxes, scores, labels, 0.8), lonely)
    assert box_voting(boxes[:0], labels[:0], boxes, scores, labels, 0.8).shape == (0, 4)


def test_soft_nms_by_hand():
    # box 1 overlaps box 0 at IoU 90 / 110 and box 3 at 60 / 140, box 3 overlaps box 0 at 50 / 150, box 2
    # is another class on top of box 0
    boxes = torch.tensor([[0., 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [5, 0, 15, 10]])
    scores = torch.tensor([0.9, 0.6, 0.8, 0.5])
    labels = torch.tensor([1, 1, 2, 1])
    keep, kept_scores = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.05, max_keep=10)

    def decay(iou):
        return math.exp(-iou ** 2 / 0.5)

    # after box 0: box 1 0.6 * 0.262 = 0.157, box 3 0.5 * 0.801 = 0.400, so box 3 comes next and decays box 1
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(kept_scores, torch.tensor([0.9, 0.8, 0.5 * decay(50 / 150),
                                                          0.6 * decay(90 / 110) * decay(60 / 140)]))
    # a floor above the decayed score drops the box; max_keep cuts the list
    keep, _ = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.2, max_keep=10)
    assert sorted(keep.tolist()) == [0, 2, 3]
    assert soft_nms(boxes, scores, labels, 0.5, 0.05, max_keep=2)[0].tolist() == [0, 2]
    assert soft_nms(boxes[:0], scores[:0], labels[:0], 0.5, 0.05, 10)[0].shape == (0,)
    assert soft_nms_reference(boxes, scores, labels, 0.5, 0.05, 10)[0].tolist() == [0, 2, 3, 1]


@pytest.mark.parametrize("seed", range(6))
def test_cpu_soft_nms_keeps_what_the_reference_keeps(seed):
    g = torch.Generator().manual_seed(seed)
    n = [0, 1, 50, 400, 900, 300][seed]
    xy = torch.rand(n, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 80 + 1], 1)
    if n:  # near-duplicates, the case Soft-NMS is for, and tied scores
        boxes[n // 2:] = boxes[: n - n // 2] + torch.randn(n - n // 2, 4, generator=g)
    scores = torch.rand(n, generator=g)
    scores[::7] = 0.5
    labels = torch.randint(1, 4, (n,), generator=g)
    for sigma, floor, max_keep in ((0.5, 0.05, 100), (0.3, 0.001, 1000), (2.0, 0.3, 10)):
        keep, kept = soft_nms(boxes, scores, labels, sigma, floor, max_keep)
        ref_keep, ref_kept = soft_nms_reference(boxes, scores, labels, sigma, floor, max_keep)
        assert keep.dtype == ref_keep.dtype == torch.int64 and keep.tolist() == ref_keep.tolist()
        torch.testing.assert_close(kept, ref_kept, rtol=1e-6, atol=1e-7)  # exp of another maths library


def test_roi_max_pool_single_map():
    # Feature value = its column index; stride 2 so image box [0, 0, 8, 8] covers feature cells 0..4.
    feature = torch.arange(8.0).repeat(8, 1)[None, None]
    pooler = RoIPooler(2, strides=[2], mode="pool")
    out = pooler([feature], [torch.tensor([[0.0, 0.0, 8.0, 8.0]])])
    # Caffe RoI pooling rounds to cells [0, 4] (inclusive, 5 wide): bins [0, 2.5) and [2.5, 5)
    # -> maxima at columns 2 and 4.
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[2.0, 4.0], [2.0, 4.0]]


def test_roi_align_single_map_is_bilinear_mean():
    feature = torch.arange(8.0).repeat(8, 1)[None, None]  # linear in x: align returns bin centres
    out = RoIPooler(2, strides=[1], mode="align", sampling_ratio=2)([feature], [torch.tensor([[0.0, 0.0, 4.0, 4.0]])])
    # aligned=True: pixel centres at +0.5, so bins over x in [0, 2) and [2, 4) average to 0.5 and 2.5.
    assert torch.allclose(out[0, 0], torch.tensor([[0.5, 2.5], [0.5, 2.5]]))


def test_batch_index_respected():
    f = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    out = RoIPooler(1, strides=[1])([f], [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 4.0, 4.0]])])
    assert out.flatten().tolist() == [1.0]


def test_fpn_levels():
    sizes = torch.tensor([224.0, 112.0, 448.0, 10.0, 2000.0])
    boxes = torch.stack([torch.zeros(5), torch.zeros(5), sizes, sizes], dim=1)
    assert assign_fpn_levels(boxes, 2, 5).tolist() == [2, 1, 3, 0, 3]


def test_multilevel_pooling_uses_the_right_map():
    strides = [4, 8, 16, 32]
    features = [torch.full((1, 1, 512 // s, 512 // s), float(i)) for i, s in enumerate(strides)]
    # sqrt(area) 20 -> level 2, 120 -> 3, 250 -> 4, 500 -> 5 (4 + log2(size / 224), floored)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 120.0, 120.0], [0.0, 0.0, 250.0, 250.0],
                          [0.0, 0.0, 500.0, 500.0]])
    out = RoIPooler(2, strides=strides, mode="align")(features, [boxes])
    expected = assign_fpn_levels(boxes, 2, 5).float()
    assert out[:, 0, 0, 0].tolist() == expected.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_canonical_size_moves_the_levels():
    # canonical 56: 56 px pools from stride 16 (index 2 of 4..32), 28 from 8, 112 from 32, 10 from 4
    strides = [4, 8, 16, 32]
    features = [torch.full((1, 1, 256 // s, 256 // s), float(i)) for i, s in enumerate(strides)]
    boxes = torch.tensor([[0.0, 0.0, 56.0, 56.0], [0.0, 0.0, 28.0, 28.0], [0.0, 0.0, 112.0, 112.0],
                          [0.0, 0.0, 10.0, 10.0]])
    for mode in ("align", "pool"):
        out = RoIPooler(2, strides=strides, mode=mode, canonical_size=56.0)(features, [boxes])
        assert out[:, 0, 0, 0].tolist() == [2.0, 1.0, 3.0, 0.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        RoIPooler(7, strides=[16], mode="max")
    with pytest.raises(ValueError, match="powers of two"):
        RoIPooler(7, strides=[12])


def _random_boxes(n, generator, size=500.0, max_side=120.0):
    xy = torch.rand(n, 2, generator=generator) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * max_side + 0.5], dim=1)


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_cpu_nms_keeps_what_torchvision_keeps(iou):
    import torchvision

    g = torch.Generator().manual_seed(1)
    boxes = _random_boxes(2000, g)
    scores = torch.rand(2000, generator=g)
    scores[::5] = scores[0]  # many ties
    labels = torch.randint(0, 3, (2000,), generator=g)
    reference = [torchvision.ops.nms(boxes[labels == c], scores[labels == c], iou) for c in range(3)]
    reference = torch.cat([torch.nonzero(labels == c).flatten()[k] for c, k in enumerate(reference)])
    ours = batched_nms(boxes, scores, labels, iou)
    assert 100 < len(ours) < 2000
    assert sorted(ours.tolist()) == sorted(reference.tolist())
    assert torch.all(scores[ours][1:] <= scores[ours][:-1])  # best first
    assert nms(boxes, scores, iou).tolist() == torchvision.ops.nms(boxes, scores, iou).tolist()
    # max_keep stops early with the same first boxes
    assert batched_nms(boxes, scores, labels, iou, max_keep=50).tolist() == ours[:50].tolist()
    assert nms(boxes, scores, iou, max_keep=7).tolist() == nms(boxes, scores, iou)[:7].tolist()


def test_cpu_nms_edge_cases():
    empty = torch.zeros(0, 4)
    assert batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).tolist() == []
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    # identical boxes: the better one survives; the empty box overlaps nothing
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, max_keep=0).tolist() == []
    # IoU exactly at the threshold is kept (torchvision suppresses only above it): 50 / 100
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0]])
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_cpu_roi_align_equals_torchvision_bit_for_bit(sampling_ratio):
    import torchvision

    g = torch.Generator().manual_seed(2)
    features = [torch.randn(2, 8, 24, 32, generator=g), torch.randn(2, 8, 12, 16, generator=g)]
    # boxes partly or wholly outside the image, tiny and huge ones
    boxes = [torch.cat([_random_boxes(60, g, 560.0, 700.0) - 30.0, torch.tensor([[5.0, 5.0, 5.2, 5.1],
                                                                                  [-200.0, -90.0, -100.0, -50.0]])]),
             _random_boxes(40, g, 512.0, 200.0)]
    pooler = RoIPooler(7, strides=[16, 32], mode="align", sampling_ratio=sampling_ratio)
    with torch.no_grad():
        ours = pooler(features, boxes)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    levels = assign_fpn_levels(rois[:, 1:], 4, 5)
    assert set(levels.tolist()) == {0, 1}
    reference = torch.empty_like(ours)
    for level, (f, stride) in enumerate(zip(features, [16, 32])):
        idx = levels == level
        reference[idx] = torchvision.ops.roi_align(f, rois[idx], 7, spatial_scale=1.0 / stride,
                                                   sampling_ratio=sampling_ratio, aligned=True)
    assert torch.equal(ours, reference)

    # training: the same values, and the gradient of the maps equal to torchvision's backward
    ours_in = [f.clone().requires_grad_(True) for f in features]
    theirs_in = [f.clone().requires_grad_(True) for f in features]
    pooled = pooler(ours_in, boxes)
    assert torch.equal(pooled.detach(), reference)
    weight = torch.randn(pooled.shape, generator=g)
    (pooled * weight).sum().backward()
    theirs = torch.empty_like(ours)
    for level, (f, stride) in enumerate(zip(theirs_in, [16, 32])):
        idx = levels == level
        theirs[idx] = torchvision.ops.roi_align(f, rois[idx], 7, spatial_scale=1.0 / stride,
                                                sampling_ratio=sampling_ratio, aligned=True)
    (theirs * weight).sum().backward()
    for a, b in zip(ours_in, theirs_in):
        assert a.grad.abs().sum() > 0 and torch.equal(a.grad, b.grad)


def test_cpu_roi_align_backward_with_one_map_and_border_samples():
    import torchvision

    g = torch.Generator().manual_seed(5)
    feature = torch.randn(1, 4, 6, 7, generator=g)
    # samples on the last row / column (neighbours collapse onto one cell) and outside the map
    boxes = [torch.tensor([[0.0, 0.0, 28.0, 24.0], [20.0, 16.0, 40.0, 40.0], [-30.0, -30.0, 10.0, 10.0],
                           [3.0, 2.0, 3.5, 2.25]])]
    pooler = RoIPooler((3, 2), strides=[4], mode="align", sampling_ratio=0)
    ours_in, theirs_in = feature.clone().requires_grad_(True), feature.clone().requires_grad_(True)
    pooled = pooler([ours_in], boxes)
    assert type(pooled.grad_fn).__name__ == "_RoIAlignCPUBackward"  # the channels-last kernels, not torchvision's
    pooled.pow(2).sum().backward()
    rois = torch.cat([torch.zeros(4, 1), boxes[0]], 1)
    torchvision.ops.roi_align(theirs_in, rois, (3, 2), 0.25, 0, True).pow(2).sum().backward()
    assert torch.equal(ours_in.grad, theirs_in.grad)
    assert ours_in.grad[0, :, 5, 6].abs().sum() > 0  # the bottom-right cell received its share


def test_cpu_roi_max_pool_equals_torchvision_bit_for_bit_with_ties_and_gradients():
    import torchvision

    g = torch.Generator().manual_seed(3)
    # few distinct values: many ties, so the first maximum in row-major order must win as in torchvision
    features = [torch.randint(0, 4, (2, 8, 24, 32), generator=g).float(),
                torch.randn(2, 8, 12, 16, generator=g)]
    boxes = [torch.cat([_random_boxes(60, g, 560.0, 700.0) - 30.0,
                        torch.tensor([[5.0, 5.0, 5.2, 5.1], [-200.0, -90.0, -100.0, -50.0],
                                      [24.0, 8.0, 40.0, 56.0], [-8.0, -24.0, 8.0, 24.0]])]),  # halves: 1.5, 0.5, -0.5
             _random_boxes(40, g, 512.0, 200.0)]
    pooler = RoIPooler(7, strides=[16, 32], mode="pool")
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    levels = assign_fpn_levels(rois[:, 1:], 4, 5)
    assert set(levels.tolist()) == {0, 1}

    ours_in = [f.clone().requires_grad_(True) for f in features]
    theirs_in = [f.clone().requires_grad_(True) for f in features]
    with torch.no_grad():
        inference = pooler(features, boxes)  # the in-place path
    pooled = pooler(ours_in, boxes)
    single = pooler.__class__(7, strides=[16], mode="pool")([ours_in[0]], boxes[:1])
    assert type(single.grad_fn).__name__ == "_RoIPoolCPUBackward"  # the channels-last kernels, not torchvision's
    reference = torch.empty_like(pooled)
    for level, (f, stride) in enumerate(zip(theirs_in, [16, 32])):
        idx = levels == level
        reference[idx] = torchvision.ops.roi_pool(f, rois[idx], 7, spatial_scale=1.0 / stride)
    assert torch.equal(inference, reference.detach()) and torch.equal(pooled.detach(), reference.detach())
    assert (reference == 0).any()  # boxes outside the map give empty bins
    weight = torch.randn(pooled.shape, generator=g)
    (pooled * weight).sum().backward()
    (reference * weight).sum().backward()
    for a, b in zip(ours_in, theirs_in):
        assert a.grad.abs().sum() > 0 and torch.equal(a.grad, b.grad)
