"""Shared fixtures: small hand-made datasets and the optional BCCD folder."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "BCCD"


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def bccd_root() -> Path:
    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"BCCD not found at {BCCD}")
    return BCCD


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small synthetic shapes dataset, generated once per test session."""
    from detect.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("shapes")
    return generate_dataset(out, num_train=12, num_test=4, seed=0, long_side=96)


@pytest.fixture(scope="session")
def tiny_frcnn(tmp_path_factory, shapes_dir) -> Path:
    """The checkpoint of a tiny Faster R-CNN (the quickstart's config, fc 64) trained 40 iterations on
    ``shapes_dir``: distinct scores, so its detections have an order. Tests read it, never write it."""
    from detect.config import load_config
    from detect.training.trainer import train

    out = tmp_path_factory.mktemp("tiny_frcnn")
    cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        f"data.train.ann_file={shapes_dir}/train.json", f"data.train.img_dir={shapes_dir}/images",
        f"data.test.ann_file={shapes_dir}/test.json", f"data.test.img_dir={shapes_dir}/images",
        "train.max_iter=40", "train.eval_period=0", "train.checkpoint_period=0", "data.num_workers=0",
        "model.roi_head.fc_dim=64", "input.min_size=96", "input.min_size_test=128", "input.max_size=192",
        # NMS, not the shapes config's Soft-NMS: the export tests hold the ONNX graph (which has NMS)
        # to this model's detections
        "model.roi_head.soft_nms_sigma=0",
        # one test scale: the quickstart's second (0.75) adds ~0.3 MB of graph structure to the export,
        # which at this size would make the int8 file more than half the float one; the scales have
        # their own tests (tests/models/test_test_scales.py, tests/export/test_export.py)
        "model.test_scales=[]",
        # the 7x7 RoI grid the int8 size assertions were set on (fc6 is most of this model's weights)
        "model.roi_head.resolution=7", "device=cpu"])
    train(cfg, out, progress=False)
    return out / "model_final.pth"


@pytest.fixture
def coco_dir(tmp_path) -> Path:
    """Two 100x80 images; annotations with a normal box, a degenerate one, one reaching outside the
    image, a crowd box, and an image with no objects."""
    img = np.zeros((80, 100, 3), np.uint8)
    write_rgb(tmp_path / "images" / "a.jpg", img)
    write_rgb(tmp_path / "images" / "b.jpg", img)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 9, "file_name": "b.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [50, 10, 0, 5], "area": 0, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [90, 60, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path


@pytest.fixture(scope="session")
def shapes_with_proposals(tmp_path_factory) -> Path:
    """Four 128-px synthetic training images with fast-mode selective-search proposals in
    ``props.npz`` (for Fast R-CNN and R-CNN tests)."""
    from detect.data.image_io import read_image
    from detect.data.synthetic import generate_dataset
    from detect.proposals import selective_search
    from detect.proposals.files import image_keys, write_proposals

    data = generate_dataset(tmp_path_factory.mktemp("with_props"), num_train=4, num_test=1, seed=3, long_side=128,
                            max_objects=3)
    ann = json.loads((data / "train.json").read_text())
    paths = [data / "images" / img["file_name"] for img in ann["images"]]
    boxes = [selective_search(read_image(p), mode="fast") for p in paths]
    write_proposals(data / "props.npz", image_keys(paths), [img["id"] for img in ann["images"]], boxes, {})
    return data
