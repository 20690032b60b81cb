import pytest
import torch

from detect.ops import RoIPooler, assign_fpn_levels, batched_nms, nms


def test_nms_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0],
                          [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    # box 1 overlaps box 0 at IoU 9/11 > 0.5 (same class) -> dropped; box 2 is another class.
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        RoIPooler(7, strides=[16], mode="max")
    with pytest.raises(ValueError, match="powers of two"):
        RoIPooler(7, strides=[12])
