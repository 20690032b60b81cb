import numpy as np
import torch

from detect.ops import (box_area, box_iou, clip_boxes, clip_boxes_np, cxcywh_to_xyxy, flip_boxes, nonempty_boxes,
                        remove_small_boxes, scale_boxes, xywh_to_xyxy, xyxy_to_cxcywh, xyxy_to_xywh)


def test_conversions_by_hand_torch_and_numpy():
    xyxy = [[1.0, 2.0, 4.0, 8.0]]
    for make in (torch.tensor, np.array):
        b = make(xyxy)
        xywh = xyxy_to_xywh(b)
        cxcywh = xyxy_to_cxcywh(b)
        assert type(xywh) is type(b)
        assert np.allclose(np.asarray(xywh), [[1, 2, 3, 6]])
        assert np.allclose(np.asarray(cxcywh), [[2.5, 5.0, 3.0, 6.0]])
        assert np.allclose(np.asarray(xywh_to_xyxy(xywh)), xyxy)
        assert np.allclose(np.asarray(cxcywh_to_xyxy(cxcywh)), xyxy)


def test_conversions_keep_leading_shape():
    b = torch.rand(3, 5, 4)
    assert xyxy_to_cxcywh(b).shape == (3, 5, 4)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b, atol=1e-6)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0],    # overlap 5x5 = 25, union 175
                      [10.0, 0.0, 20.0, 10.0],   # touching edge: 0
                      [0.0, 0.0, 10.0, 10.0],    # same box: 1
                      [2.0, 2.0, 4.0, 4.0]])     # inside: 4 / 100
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0, 1.0, 0.04]]))


def test_area_and_nonempty():
    b = np.array([[0, 0, 2, 3], [5, 5, 5, 9], [4, 4, 2, 6]], dtype=np.float32)
    assert box_area(b).tolist() == [6.0, 0.0, -4.0]
    assert nonempty_boxes(b).tolist() == [True, False, False]


def test_clip_torch_and_numpy_agree():
    b = torch.tensor([[-5.0, -1.0, 50.0, 20.0], [3.0, 4.0, 5.0, 6.0]])
    expected = [[0.0, 0.0, 40.0, 20.0], [3.0, 4.0, 5.0, 6.0]]  # image 30 high, 40 wide
    assert clip_boxes(b, (30, 40)).tolist() == expected
    assert clip_boxes_np(b.numpy(), (30, 40)).tolist() == expected


def test_remove_small_boxes_and_scale():
    b = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 3.0, 3.0]])
    assert remove_small_boxes(b, 2.0).tolist() == [1]
    assert scale_boxes(b, (2.0, 0.5)).tolist() == [[0, 0, 2, 2.5], [0, 0, 6, 1.5]]
    assert scale_boxes(b.numpy(), (2.0, 0.5)).tolist() == [[0, 0, 2, 2.5], [0, 0, 6, 1.5]]


def test_flip_boxes_by_hand_and_twice_is_the_identity():
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    assert flip_boxes(b, 100).tolist() == [[70, 20, 90, 40], [0, 0, 100, 5]]
    assert flip_boxes(b.numpy(), 100).tolist() == [[70, 20, 90, 40], [0, 0, 100, 5]]
    assert torch.equal(flip_boxes(flip_boxes(b, 100), 100), b)
    assert flip_boxes(b[None], 100).shape == (1, 2, 4)  # any leading shape
