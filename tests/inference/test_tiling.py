"""Sliced inference (model.tiles): the windows by hand, one detection per planted object however the
tiles cut it, the bad settings refused in one line, and training crops at the tile scale."""
import logging
import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detect.config import load_config
from detect.data.transforms import build_transforms
from detect.errors import ConfigError
from detect.inference.tiling import TiledDetector, tile_windows, tiled


def test_windows_by_hand():
    # 1000 x 600, tiles of 400 sharing 20%: a step of 320; the last of a row flush with the edge
    assert tile_windows(600, 1000, 400, 0.2) == [(0, 0, 400, 400), (320, 0, 720, 400), (600, 0, 1000, 400),
                                                 (0, 200, 400, 600), (320, 200, 720, 600), (600, 200, 1000, 600)]
    # a side shorter than a tile is one window of that side; no overlap: a plain grid
    assert tile_windows(300, 1000, 400, 0.2) == [(0, 0, 400, 300), (320, 0, 720, 300), (600, 0, 1000, 300)]
    assert tile_windows(800, 800, 400, 0.0) == [(0, 0, 400, 400), (400, 0, 800, 400), (0, 400, 400, 800),
                                                (400, 400, 800, 800)]


class BlobDetector(nn.Module):
    """A 'detector' that finds each white blob of an image exactly (its bounding box, score 0.9, class
    1), whatever part of the scene it is given: what sliced inference must merge. Counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images):
        self.calls.append([tuple(im.shape[-2:]) for im in images])
        out = []
        for im in images:
            mask = (im[0] > 0.5).numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]], dtype=torch.float32)
            boxes = boxes.reshape(-1, 4)
            out.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9), "labels": torch.ones(len(boxes),
                                                                                                        dtype=torch.int64)})
        return out


def scene(objects, height=600, width=1000):
    image = torch.zeros(3, height, width)
    for x0, y0, x1, y1 in objects:
        image[:, y0:y1, x0:x1] = 1.0
    return image


def sort(boxes):
    return sorted(map(tuple, boxes.round().int().tolist()))


# windows of tile_windows(600, 1000, 400, 0.2): columns start at 0, 320, 600 and rows at 0, 200
PLANTED = [(390, 50, 420, 80),     # across the first column's right edge (x 400), inside the second column
           (700, 380, 730, 420),   # across the first row's bottom edge (y 400)
           (380, 380, 420, 420),   # across a corner of four tiles
           (330, 100, 350, 120),   # in the overlap: whole in two tiles
           (0, 0, 20, 20),         # at the image's own corner: a border, not a cut
           (980, 580, 1000, 600)]  # at the opposite corner


def test_one_detection_per_planted_object_however_the_tiles_cut_it():
    detector = BlobDetector()
    tiles = TiledDetector(detector, 400, 0.2, full_image=False, full_size=(600, 1000), nms_thresh=0.5,
                          detections_per_image=100, batch=4)
    got = tiles([scene(PLANTED)])[0]
    assert sort(got["boxes"]) == sorted(PLANTED)  # no fragment beside any whole object
    assert torch.all(got["scores"] == 0.9) and torch.all(got["labels"] == 1)
    # six tiles in batches of four
    assert detector.calls == [[(400, 400)] * 4, [(400, 400)] * 2]


def test_sliced_inference_equals_each_tile_by_hand_then_the_merge():
    from detect.ops import batched_nms

    image = scene(PLANTED)
    detector = BlobDetector()
    parts = []
    for x0, y0, x1, y1 in tile_windows(600, 1000, 400, 0.2):
        out = detector([image[:, y0:y1, x0:x1]])[0]
        b = out["boxes"]
        inner_cut = ((b[:, 0] <= 1) & (x0 > 0)) | ((b[:, 1] <= 1) & (y0 > 0)) | \
                    ((b[:, 2] >= x1 - x0 - 1) & (x1 < 1000)) | ((b[:, 3] >= y1 - y0 - 1) & (y1 < 600))
        parts.append(b[~inner_cut] + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
    boxes = torch.cat(parts)
    keep = batched_nms(boxes, torch.full((len(boxes),), 0.9), torch.ones(len(boxes), dtype=torch.int64), 0.5)
    by_hand = sort(boxes[keep])
    got = TiledDetector(BlobDetector(), 400, 0.2, False, (600, 1000), 0.5, 100, batch=3)([image])[0]
    assert sort(got["boxes"]) == by_hand == sorted(PLANTED)


class PairDetector(nn.Module):
    """Finds the objects drawn in channels 1 and 2 separately (their boxes may overlap, as two cells
    in a smear do): channel 1's at score 0.9, channel 2's at 0.8, both class 1."""

    def forward(self, images):
        out = []
        for im in images:
            boxes, scores = [], []
            for channel, score in ((1, 0.9), (2, 0.8)):
                mask = (im[channel] > 0.5).numpy().astype(np.uint8)
                _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
                boxes += [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]]
                scores += [score] * (len(stats) - 1)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores), "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return out


def test_the_merge_is_soft_nms_where_the_detector_uses_it():
    from detect.ops import soft_nms

    # two objects overlapping at IoU 0.6, in the overlap of two tiles and in the full view: each view
    # finds both; hard NMS across the views would keep one of them
    first, second = (330, 100, 390, 160), (345, 100, 405, 160)
    image = torch.zeros(3, 600, 1000)
    image[1, 100:160, 330:390] = 1.0
    image[2, 100:160, 345:405] = 1.0
    hard = TiledDetector(PairDetector(), 400, 0.2, True, (600, 1000), 0.5, 100)([image])[0]
    assert sort(hard["boxes"]) == [first]
    soft = TiledDetector(PairDetector(), 400, 0.2, True, (600, 1000), 0.5, 100, soft_nms_sigma=0.5,
                         score_thresh=0.05)([image])[0]
    assert sort(soft["boxes"][:2]) == sorted([first, second])  # the two best: one per object
    # by hand: the views' detections (the two tiles of the first row that hold the pair, the first
    # one cutting the second object at x 400, which is dropped; the full view), merged by Soft-NMS
    views = [PairDetector()([image[:, 0:400, x0:x0 + 400]])[0] for x0 in (0, 320)] + [PairDetector()([image])[0]]
    for i, (view, x0) in enumerate(zip(views, (0, 320, 0))):
        whole = view["boxes"][:, 2] < 399 if i == 0 else torch.ones(len(view["boxes"]), dtype=torch.bool)
        view["boxes"] = view["boxes"][whole] + torch.tensor([x0, 0, x0, 0], dtype=torch.float32)
        view["scores"] = view["scores"][whole]
    assert [len(v["boxes"]) for v in views] == [1, 2, 2]
    boxes = torch.cat([v["boxes"] for v in views])
    scores = torch.cat([v["scores"] for v in views])
    keep, kept = soft_nms(boxes, scores, torch.ones(len(boxes), dtype=torch.int64), 0.5, 0.05, 100)
    assert sort(soft["boxes"]) == sort(boxes[keep]) and torch.allclose(soft["scores"], kept)
    assert kept[1] == pytest.approx(0.8 * math.exp(-0.6 ** 2 / 0.5), abs=1e-6)  # the second object's, decayed once


def test_an_object_larger_than_the_overlap_comes_from_the_full_view():
    big = (250, 150, 550, 450)  # cut by every tile that holds part of it
    objects = PLANTED[3:] + [big]
    without = TiledDetector(BlobDetector(), 400, 0.2, False, (600, 1000), 0.5, 100)([scene(objects)])[0]
    assert big not in sort(without["boxes"])
    # the full view at the image's own size (600 short side, 1000 cap) sees it whole; the small ones,
    # found by the tiles and the full view alike, stay one detection each
    detector = BlobDetector()
    with_full = TiledDetector(detector, 400, 0.2, True, (600, 1000), 0.5, 100)([scene(objects)])[0]
    assert sort(with_full["boxes"]) == sorted(objects)
    assert detector.calls[-1] == [(600, 1000)]


def test_an_image_that_fits_one_tile_runs_whole_and_is_said_once(caplog):
    detector = BlobDetector()
    tiles = TiledDetector(detector, 400, 0.2, True, (600, 1000), 0.5, 100)
    with caplog.at_level(logging.INFO, logger="detect.inference.tiling"):
        for _ in range(2):
            got = tiles([scene([(10, 10, 30, 30)], 300, 380)])[0]
    assert sort(got["boxes"]) == [(10, 10, 30, 30)] and detector.calls == [[(300, 380)], [(300, 380)]]
    said = [r.getMessage() for r in caplog.records]
    assert said == ["model.tiles.size=400: an image of 380x300 fits one tile; it runs whole"]


@pytest.mark.parametrize("overrides, message", [
    (["model.tiles.size=400", "model.tiles.overlap=0.95"], "model.tiles.overlap"),
    (["model.tiles.size=32"], "model.tiles.size=32: a tile must be at least 64 px (the model's smallest input)"),
])
def test_bad_tile_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        tiled(nn.Identity(), load_config("configs/faster_rcnn/shapes.yaml", overrides))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sliced_inference_is_refused_for_the_stages_with_proposals_from_a_file():
    with pytest.raises(ConfigError, match="sliced inference runs Faster R-CNN"):
        tiled(nn.Identity(), load_config("configs/fast_rcnn/shapes.yaml", ["model.tiles.size=400"]))


def test_the_test_images_stay_at_the_tile_scale_and_training_sees_tile_crops():
    cfg = load_config("configs/faster_rcnn/shapes.yaml", ["model.tiles.size=128", "model.tiles.scale=0.5",
                                                          "input.tile_crop_prob=1.0"])
    image = np.zeros((600, 1000, 3), np.uint8)
    image[100:140, 200:260] = 255
    target = {"boxes": np.array([[200, 100, 260, 140]], np.float32), "labels": np.array([1]),
              "ignore": np.zeros(1, bool)}
    resized, t = build_transforms(cfg, train=False)(image, {k: v.copy() for k, v in target.items()})
    assert resized.shape[:2] == (300, 500)  # half the native size, not the test size
    np.testing.assert_allclose(t["boxes"], [[100, 50, 130, 70]])
    train = build_transforms(cfg, train=True)
    train.set_seed(0)
    for _ in range(20):
        crop, t = train(image, {k: v.copy() for k, v in target.items()})
        assert crop.shape[:2] == (128, 128) and t["scale"] == (0.5, 0.5)
        # the one object, whole at the tile scale (30 x 20 px), is in every crop (a crop drawn anywhere
        # in the 500 x 300 image would miss it most of the time), and the crop shows its pixels
        assert len(t["boxes"]) == 1
        x1, y1, x2, y2 = t["boxes"][0]
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
        assert x2 - x1 == pytest.approx(30, abs=1e-3) and y2 - y1 == pytest.approx(20, abs=1e-3)
        inside = crop[int(round(y1)) + 2:int(round(y2)) - 2, int(round(x1)) + 2:int(round(x2)) - 2]
        assert inside.size and (inside > 200).all()
    # an image without objects still gives a crop of the tile's size, and a small one is padded to it
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "ignore": np.zeros(0, bool)}
    assert train(image, dict(empty))[0].shape[:2] == (128, 128)
    assert train(np.zeros((100, 120, 3), np.uint8), dict(empty))[0].shape[:2] == (128, 128)


@pytest.mark.parametrize("side, advised", [(30, True), (200, False)])
def test_dataset_stats_recommend_tiles_when_boxes_are_small_only_at_the_training_scale(tmp_path, side, advised):
    import json

    from detect.data.coco import load_coco
    from detect.data.stats import tiling_advice

    # 2000 x 1500 images at the shapes config's training size (short side 256: a factor of 0.17): a
    # 30 px box becomes ~5 px, under the 16 px the advice looks for; one of 200 px stays large
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 2000, "height": 1500} for i in (1, 2)]
    anns = [{"id": k + 1, "image_id": 1 + k % 2, "category_id": 1, "bbox": [100 + 50 * k, 100, side, side],
             "area": side * side, "iscrowd": 0} for k in range(6)]
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "thing"}]}))
    dataset = load_coco(tmp_path / "a.json", tmp_path, check_files=False)
    cfg = load_config("configs/faster_rcnn/shapes.yaml")
    advice = tiling_advice(dataset, build_transforms(cfg, train=True), tile_size=640)
    if advised:
        assert advice.startswith("100% of the boxes are under 16 px at the training scale, 0% in the images as they are")
        assert advice.endswith("model.tiles.size=640 input.tile_crop_prob=0.5")
    else:
        assert advice is None


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_anchors_are_fitted_to_the_boxes_at_the_scales_training_shows_them(share):
    # a share of tile crops: the boxes as the whole image shows them (the shapes config's 256 px short
    # side: 600 x 1000 at 256 / 600) and at the tile scale; every image a crop: the tile scale alone
    # (the whole-image scale is never trained, so its tiny boxes must not pull the anchors down)
    cfg = load_config("configs/faster_rcnn/shapes.yaml", ["model.tiles.size=128", "model.tiles.scale=0.5",
                                                          f"input.tile_crop_prob={share}"])
    scales = build_transforms(cfg, train=True).possible_scales(600, 1000)
    expected = [0.5] if share == 1.0 else [pytest.approx(256 / 600), 0.5]
    assert scales == expected
