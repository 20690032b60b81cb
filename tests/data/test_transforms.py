import numpy as np
import pytest

from detect.config import load_config
from detect.data.transforms import DetectionTransform, boxes_to_original, build_transforms


def target(boxes, labels=None, ignore=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return {"boxes": boxes, "labels": np.asarray(labels if labels is not None else [1] * n, np.int64),
            "ignore": np.asarray(ignore if ignore is not None else [False] * n, bool), "image_id": 3}


def test_resize_short_side_and_scale_kept():
    image = np.zeros((480, 640, 3), np.uint8)
    out, t = DetectionTransform(240, 1000)(image, target([[64, 48, 128, 96]]))
    assert out.shape == (240, 320, 3)
    assert t["scale"] == (0.5, 0.5)
    np.testing.assert_allclose(t["boxes"], [[32, 24, 64, 48]])
    np.testing.assert_allclose(boxes_to_original(t["boxes"], t["scale"]), [[64, 48, 128, 96]])
    assert t["image_id"] == 3


def test_long_side_cap_wins():
    out, t = DetectionTransform(200, 500)(np.zeros((100, 1000, 3), np.uint8), target([]))
    assert out.shape == (50, 500, 3) and t["scale"] == (0.5, 0.5)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_flip_by_hand_and_twice_is_identity():
    flip = DetectionTransform(80, 1000, train=True, flip_prob=1.0)
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    t0 = target([[10, 20, 30, 40], [0, 0, 100, 80]], labels=[2, 1], ignore=[True, False])
    once, t1 = flip(image, t0)
    np.testing.assert_allclose(t1["boxes"], [[70, 20, 90, 40], [0, 0, 100, 80]])
    np.testing.assert_array_equal(once, image[:, ::-1])
    twice, t2 = flip(once, t1)
    np.testing.assert_array_equal(twice, image)
    np.testing.assert_allclose(t2["boxes"], t0["boxes"], atol=1e-4)  # albumentations normalises boxes
    assert t2["labels"].tolist() == [2, 1] and t2["ignore"].tolist() == [True, False]


def test_boxes_follow_the_image_content():
    # A white rectangle on black: after random resize + flip + jitter, the white pixels' bounding
    # box must still be the transformed box (to within a pixel of interpolation).
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:70, 100:150] = 255
    tr = DetectionTransform([90, 150, 200], 1000, train=True, flip_prob=0.5, color_jitter=0.2)
    tr.set_seed(0)
    for _ in range(6):
        out, t = tr(image, target([[100, 30, 150, 70]]))
        ys, xs = np.nonzero(out.max(axis=2) > 128)
        np.testing.assert_allclose(t["boxes"][0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
        assert min(out.shape[:2]) in (90, 150, 200)


def test_seeded_multiscale_is_reproducible():
    image = np.zeros((60, 80, 3), np.uint8)
    sizes = []
    for _ in range(2):
        tr = DetectionTransform([32, 48, 64], 1000, train=True)
        tr.set_seed(5)
        sizes.append([tr(image, target([]))[0].shape for _ in range(8)])
    assert sizes[0] == sizes[1] and len(set(sizes[0])) > 1


def test_built_from_config():
    cfg = load_config(None, ["input.min_size=[100,120]", "input.min_size_test=110", "input.max_size=500"])
    out, _ = build_transforms(cfg, train=False)(np.zeros((200, 300, 3), np.uint8), target([]))
    assert out.shape[:2] == (110, 165)
    with pytest.raises(ValueError, match="positive"):
        DetectionTransform(0, 100)


def test_scale_jitter_moves_the_size_and_its_cap_within_the_range():
    # 480x640 at min 480 / max 640 is scale 1; a jitter of 0.2 draws the factor from [0.8, 1.2], the cap
    # moving with it (640 * 1.2 = 768 px long side), and the boxes follow
    image = np.zeros((480, 640, 3), np.uint8)
    tr = DetectionTransform(480, 640, train=True, flip_prob=0.0, scale_jitter=0.2)
    tr.set_seed(0)
    factors = []
    for _ in range(40):
        out, t = tr(image, target([[64, 48, 128, 96]]))
        sx, sy = t["scale"]
        assert 0.8 - 1e-3 <= sx <= 1.2 + 1e-3 and abs(sx - sy) < 5e-3
        assert out.shape[:2] == (round(480 * sy), round(640 * sx))
        np.testing.assert_allclose(t["boxes"][0], [64 * sx, 48 * sy, 128 * sx, 96 * sy], atol=0.05)
        factors.append(sx)
    assert min(factors) < 0.85 and max(factors) > 1.15  # both ends of the range are reached
    assert tr.possible_scales(480, 640) == pytest.approx([0.8, 1.0, 1.2])
    # the cap applies before the gain: 100x1000 at min 200 / max 500 is scale 0.5, then 0.4-0.6
    assert DetectionTransform(200, 500, train=True, scale_jitter=0.2).possible_scales(100, 1000) == \
        pytest.approx([0.4, 0.5, 0.6])


def test_scale_jitter_is_for_training_only():
    cfg = load_config(None, ["input.min_size=480", "input.min_size_test=480", "input.max_size=640",
                             "input.scale_jitter=0.3"])
    out, t = build_transforms(cfg, train=False)(np.zeros((480, 640, 3), np.uint8), target([]))
    assert out.shape[:2] == (480, 640) and t["scale"] == (1.0, 1.0)
    assert build_transforms(cfg, train=False).possible_scales(480, 640) == [1.0]
    assert build_transforms(cfg, train=True).resize.jitter == 0.3
    with pytest.raises(ValueError, match="jitter"):
        DetectionTransform(480, 640, train=True, scale_jitter=1.0)


def test_box_safe_crop_keeps_every_box_whole():
    crop = DetectionTransform(100, 1000, train=True, flip_prob=0.0, crop_prob=1.0)
    image = np.zeros((200, 300, 3), np.uint8)
    boxes = [[100, 50, 140, 90], [160, 120, 200, 150]]
    sizes = set()
    for seed in range(10):
        crop.set_seed(seed)
        out, t = crop(image, target(boxes, labels=[1, 2]))
        assert t["labels"].tolist() == [1, 2]
        w, h = (t["boxes"][:, 2] - t["boxes"][:, 0]), (t["boxes"][:, 3] - t["boxes"][:, 1])
        np.testing.assert_allclose(w / h, [1.0, 40 / 30], rtol=2e-2)
        assert min(out.shape[:2]) == 100
        sizes.add(round(float(w[0]), 1))
    assert len(sizes) > 1  # different crops, different zooms
