"""Test-time scales (``model.test_scales``): the backbone runs again on the images resized by each
factor, these views score the same RoIs scaled to them, and every view's class probabilities and
boxes (scaled back) are averaged (``detect.models.two_stage``)."""
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
from detect.ops import BalancedSampler, BoxCoder, Matcher, RoIPooler, clip_boxes, flip_boxes


def _tensor(path, size):
    return torch.from_numpy(cv2.resize(read_image(path), size[::-1])).permute(2, 0, 1).float() / 255


def _first_test_image(shapes_dir, size):
    return _tensor(sorted((shapes_dir / "images" / "test").iterdir())[0], size)


def test_the_views_are_averaged_roi_for_roi_by_hand():
    head = RoIHead(RoIPooler(2, [4]), TwoFCHead(1, 2, 8), BoxPredictor(8, 2), Matcher([0.5], [0, 1]),
                   BalancedSampler(4, 0.25), BoxCoder((10, 10, 5, 5)))
    roi = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    # the main view: probabilities 1/3 each, boxes the RoI itself
    class_logits, box_deltas = torch.zeros(1, 3), torch.zeros(1, 12)
    # another scale's view of the same RoI: class 1 at 0.9 with its box 6 px to the right, class 2 at 0.05
    view = [(torch.tensor([[[16.0, 10.0, 36.0, 40.0], [10.0, 10.0, 30.0, 40.0]]]), torch.tensor([[0.9, 0.05]]))]
    out = head.postprocess(class_logits, box_deltas, [roi], [(50, 100)], views=[view])[0]
    torch.testing.assert_close(out["scores"], torch.tensor([(1 / 3 + 0.9) / 2, (1 / 3 + 0.05) / 2]))
    assert out["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out["boxes"], torch.tensor([[13.0, 10.0, 33.0, 40.0], [10.0, 10.0, 30.0, 40.0]]))


def test_a_view_at_half_size_scores_the_rois_halved_and_its_boxes_are_doubled(tiny_frcnn, shapes_dir):
    """The RoI head is replaced by one whose class-1 logit is the width of the map it pools from and
    whose deltas are zero: each view's boxes are the RoIs it was given, its probabilities tell which
    view it was, and the average can be written down."""
    model, _ = load_model(tiny_frcnn, overrides=["model.test_scales=[0.5]", "model.test_flip=false",
                                                   "model.roi_head.box_vote_iou=0"])
    model.eval()
    seen = []

    def predict(features, rois):
        seen.append(([r.clone() for r in rois], features[0].shape[-1]))
        n = sum(len(r) for r in rois)
        logits = torch.zeros(n, 4)
        logits[:, 1] = math.log(features[0].shape[-1])
        return logits, torch.zeros(n, 16)

    model.roi_head.predict = predict
    model.roi_head.score_thresh = 0.0
    image = _first_test_image(shapes_dir, (128, 256))  # 64 x 128 at half: no padding in either batch
    with torch.no_grad():
        out = model([image])[0]
    (main_rois, main_width), (half_rois, half_width) = seen
    assert (main_width, half_width) == (32, 16)  # the stride-8 maps of a 256 px and a 128 px wide batch
    torch.testing.assert_close(half_rois[0], main_rois[0] * 0.5)
    # class 1 per view: w / (w + 3) with w the map's width
    p_main, p_half = main_width / (main_width + 3), half_width / (half_width + 3)
    ones = out["labels"] == 1
    assert ones.any()
    torch.testing.assert_close(out["scores"][ones], torch.full((int(ones.sum()),), (p_main + p_half) / 2))
    # zero deltas: every view's boxes are its RoIs, scaled back, so each detection is an RoI (clipped)
    clipped = clip_boxes(main_rois[0], (128, 256))
    assert all(torch.isclose(clipped, box).all(dim=1).any() for box in out["boxes"])


def test_a_view_at_scale_one_changes_nothing(tiny_frcnn, shapes_dir):
    plain, _ = load_model(tiny_frcnn, overrides=["model.test_scales=[]"])  # shapes.yaml has [0.75]
    same, _ = load_model(tiny_frcnn, overrides=["model.test_scales=[1.0]"])
    other, _ = load_model(tiny_frcnn, overrides=["model.test_scales=[0.5]"])
    image = _first_test_image(shapes_dir, (128, 170))
    with torch.no_grad():
        ref, got, half = plain([image])[0], same([image])[0], other([image])[0]
    assert len(ref["scores"]) > 0
    torch.testing.assert_close(got["scores"], ref["scores"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-4, rtol=0)
    assert len(half["scores"]) != len(ref["scores"]) or not torch.allclose(half["scores"], ref["scores"])


def test_with_flip_the_detections_of_a_mirror_image_are_the_mirror_of_its_detections(tiny_frcnn, shapes_dir):
    model, _ = load_model(tiny_frcnn, overrides=["model.test_flip=true", "model.test_scales=[0.5]"])
    image = _first_test_image(shapes_dir, (128, 170))  # 85 px wide at half size: its mirror is exact
    with torch.no_grad():
        out, mirrored = model([image])[0], model([image.flip(-1)])[0]
    assert len(out["scores"]) > 0 and len(mirrored["scores"]) == len(out["scores"])
    torch.testing.assert_close(mirrored["scores"], out["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(flip_boxes(mirrored["boxes"], 170), out["boxes"], atol=1e-3, rtol=0)


def test_training_ignores_test_scales(tiny_frcnn, shapes_dir):
    model, _ = load_model(tiny_frcnn, overrides=["model.test_scales=[0.5, 2.0]"])
    model.train()
    image = _first_test_image(shapes_dir, (96, 128))
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1])}
    torch.manual_seed(0)
    losses = model([image], [target])
    model.test_scales = []
    torch.manual_seed(0)
    assert {k: v.item() for k, v in model([image], [target]).items()} == {k: v.item() for k, v in losses.items()}


def test_bad_test_scales_are_refused_by_name():
    with pytest.raises(ConfigError, match="'model.test_scales' must be between 0.1 and 4, got 0"):
        load_config("configs/faster_rcnn/shapes.yaml", ["model.test_scales=[0.75, 0]"])
    with pytest.raises(ConfigError, match="model.test_scales: R-CNN has no test-time views"):
        build_model(load_config("configs/rcnn/shapes.yaml", ["model.test_scales=[0.75]", "data.classes=[a,b]"]))
    cfg = load_config("configs/fast_rcnn/shapes.yaml", ["model.test_scales=[0.75]", "data.classes=[a,b]",
                                                        "model.fast_rcnn.pyramid_scales=[0.5, 1.0]"])
    with pytest.raises(ConfigError, match="choose one multi-scale test"):
        build_model(cfg)
