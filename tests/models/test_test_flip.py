"""Test-time flip (``model.test_flip``): each image's mirror image scores the same RoIs, and the two
views' class probabilities and boxes are averaged (``detect.models.two_stage``)."""
import math

import cv2
import pytest
import torch

from detect.config import load_config
from detect.data.image_io import read_image
from detect.inference.loading import load_model
from detect.errors import ConfigError
from detect.models import build_model
from detect.models.roi_head import BoxPredictor, RoIHead, TwoFCHead
from detect.models.two_stage import union_of_views
from detect.ops import BalancedSampler, BoxCoder, Matcher, RoIPooler, flip_boxes


def test_the_two_views_are_averaged_roi_for_roi_by_hand():
    head = RoIHead(RoIPooler(2, [4]), TwoFCHead(1, 2, 8), BoxPredictor(8, 2), Matcher([0.5], [0, 1]),
                   BalancedSampler(4, 0.25), BoxCoder((10, 10, 5, 5)))
    roi = torch.tensor([[10.0, 10.0, 30.0, 40.0]])  # in an image 100 px wide
    rois = [roi, flip_boxes(roi, 100)]  # the RoI, then the same RoI in the mirror view: [70, 10, 90, 40]
    # view 0: probabilities 1/3 each; view 1: background 1/6, class 1 4/6, class 2 1/6
    class_logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(4.0), 0.0]])
    # view 1 moves its class-1 box 4 px right (dx = 10 * 4 / 20): 4 px left once mirrored back
    box_deltas = torch.zeros(2, 12)
    box_deltas[1, 4] = 2.0
    out = head.postprocess(class_logits, box_deltas, rois, [(50, 100), (50, 100)], flipped=True)
    assert len(out) == 1
    torch.testing.assert_close(out[0]["scores"], torch.tensor([0.5, 0.25]))  # (1/3 + 2/3) / 2, (1/3 + 1/6) / 2
    assert out[0]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[8.0, 10.0, 28.0, 40.0], [10.0, 10.0, 30.0, 40.0]]))
    # one view alone: its own probabilities and boxes
    alone = head.postprocess(class_logits[:1], box_deltas[:1], rois[:1], [(50, 100)])[0]
    torch.testing.assert_close(alone["scores"], torch.tensor([1 / 3, 1 / 3]))


def test_the_union_of_the_views_proposals_is_scored_in_both():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 25.0, 15.0], [1.0, 1.0, 2.0, 2.0]])  # the mirror view's own proposals
    rois = union_of_views([a, b], [(20, 40), (20, 40)])
    assert rois[0].tolist() == [[0, 0, 10, 10], [15, 5, 35, 15], [38, 1, 39, 2]]
    assert torch.equal(rois[1], flip_boxes(rois[0], 40))


def _tensor(path, size):
    return torch.from_numpy(cv2.resize(read_image(path), size[::-1])).permute(2, 0, 1).float() / 255


def test_faster_rcnn_detections_of_a_mirror_image_are_the_mirror_of_its_detections(tiny_frcnn, shapes_dir):
    model, _ = load_model(tiny_frcnn, overrides=["model.test_flip=true"])
    plain, _ = load_model(tiny_frcnn, overrides=["model.test_flip=false"])
    assert model.test_flip and not plain.test_flip
    image = _tensor(sorted((shapes_dir / "images" / "test").iterdir())[0], (128, 171))
    with torch.no_grad():
        out = model([image])[0]
        mirrored = model([image.flip(-1)])[0]
        single = plain([image])[0]
    assert len(out["scores"]) > 0 and len(mirrored["scores"]) == len(out["scores"])
    torch.testing.assert_close(mirrored["scores"], out["scores"], atol=1e-5, rtol=0)
    assert torch.equal(mirrored["labels"], out["labels"])
    torch.testing.assert_close(flip_boxes(mirrored["boxes"], 171), out["boxes"], atol=1e-3, rtol=0)
    # and it is not the single view's answer
    assert len(single["scores"]) != len(out["scores"]) or not torch.allclose(single["scores"], out["scores"])
    # in a batch (of one size: padding would change the maps) each image keeps its own detections
    other = _tensor(sorted((shapes_dir / "images" / "test").iterdir())[1], (128, 171))
    with torch.no_grad():
        batch = model([image, other])
        alone = model([other])[0]
    torch.testing.assert_close(batch[0]["scores"], out["scores"], atol=1e-5, rtol=0)
    assert len(alone["scores"]) > 0 and len(batch[1]["scores"]) == len(alone["scores"])
    torch.testing.assert_close(batch[1]["boxes"], alone["boxes"], atol=1e-3, rtol=0)


def test_training_ignores_test_flip(tiny_frcnn, shapes_dir):
    model, _ = load_model(tiny_frcnn, overrides=["model.test_flip=true"])
    model.train()
    image = _tensor(sorted((shapes_dir / "images" / "test").iterdir())[0], (96, 128))
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1])}
    torch.manual_seed(0)
    losses = model([image], [target])
    model.test_flip = False
    torch.manual_seed(0)
    assert {k: v.item() for k, v in model([image], [target]).items()} == {k: v.item() for k, v in losses.items()}


def test_rcnn_refuses_test_flip_by_name():
    cfg = load_config("configs/rcnn/shapes.yaml", ["model.test_flip=true", "data.classes=[a,b]"])
    with pytest.raises(ConfigError, match="model.test_flip: R-CNN has no test-time views"):
        build_model(cfg)
