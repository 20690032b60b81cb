"""Bad inputs a user meets: each gets one clear message naming the file and what is wrong, and
nothing that can be kept is lost. The last test feeds random data through the loaders and the
config and accepts only the package's own errors."""
import json
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from detect.config import ConfigError, load_config
from detect.data.coco import load_coco
from detect.data.detection_dataset import DatasetError
from detect.data.image_io import ImageReadError, read_image
from detect.data.stats import unreadable_images
from detect.checkpoint.storage import CheckpointError, load_checkpoint, save_checkpoint
from detect.inference.predictor import Predictor
from detect.training.trainer import Trainer
from detect.models import build_model
from detect.cli.common import user_message
from tests.conftest import REPO, write_rgb


def coco_file(folder, annotations, width=100, height=80):
    write_rgb(folder / "images" / "a.jpg", np.full((height, width, 3), 90, np.uint8))
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": width, "height": height}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json"


def test_boxes_not_finite_or_outside_the_image_are_dropped_with_the_reason(tmp_path, caplog):
    ann = coco_file(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},       # kept
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 0, 5, 5]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, float("inf"), 5]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [200, 100, 10, 10]},     # wholly outside 100x80
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [-10, -10, 5, 5]},       # wholly outside
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [90, 70, 20, 20]},       # clipped to 90..100, 70..80
    ])
    dataset = load_coco(ann, tmp_path / "images")
    assert dataset.records[0].boxes.tolist() == [[10, 10, 30, 30], [90, 70, 100, 80]]
    messages = {p.obj: p.message for p in dataset.problems}
    assert "not finite" in messages["annotation id 2"] and "not finite" in messages["annotation id 3"]
    assert messages["annotation id 4"] == "box (200.0, 100.0, 210.0, 110.0) (thing) lies outside the 100x80 image, dropped"
    assert "lies outside" in messages["annotation id 5"] and "clipped to (90.0, 70.0, 100.0, 80.0)" in messages["annotation id 6"]
    assert all(p.file.endswith("ann.json: image 'a.jpg'") for p in dataset.problems)


def test_a_training_set_without_a_single_box_is_refused_at_start(tmp_path, caplog):
    ann = coco_file(tmp_path, [])
    cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        f"data.train.ann_file={ann}", f"data.train.img_dir={tmp_path}/images", "data.test.ann_file=null",
        "model.rpn.anchor_sizes=[[16,32],[32,64],[64,128],[128,256]]", "model.rpn.aspect_ratios=[1.0]"])
    with pytest.raises(DatasetError) as e:
        Trainer(cfg, tmp_path / "run", progress=False)
    assert str(e.value).startswith(f"COCO {ann}: no box to learn from in 1 images")
    assert f"{ann}: no annotations at all" in caplog.text


@pytest.mark.parametrize("override,message", [
    ("train.max_iter=-5", "'train.max_iter' must be >= 1, got -5"),
    ("train.batch_size=0", "'train.batch_size' must be >= 1, got 0"),
    ("input.min_size=[480,-1]", "'input.min_size' must be >= 1, got -1"),
    ("input.flip_prob=1.5", "'input.flip_prob' must be between 0 and 1, got 1.5"),
    ("train.ema=1", "'train.ema' must be between 0 and 0.999999, got 1"),
    ("data.max_unreadable=2", "'data.max_unreadable' must be between 0 and 1, got 2"),
])
def test_numbers_out_of_range_are_config_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/faster_rcnn/shapes.yaml", [override])
    assert str(e.value) == f"command line: {message}"


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    real = save_checkpoint(tmp_path / "real.pth", {"model": {"w": torch.ones(1000)}, "iteration": 3})
    data = real.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty.pth").write_bytes(b"")

    class RunsCode:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": RunsCode()}, tmp_path / "code.pth")
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"x": 1}))
    expected = {
        "cut.pth": "the file is truncated or corrupt (its zip archive cannot be read)",
        "random.pth": "not a PyTorch checkpoint at all",
        "empty.pth": "the file is empty",
        "code.pth": "it holds Python objects besides tensors and plain values, which could run code when loaded",
        "legacy.pth": "a legacy pickled file, not a detect checkpoint",
    }
    for name, reason in expected.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name)
        text = str(e.value)
        assert text.startswith(f"{tmp_path / name}: not a readable detect checkpoint: {reason}"), text
        assert "weights_only" not in text and "\n" not in text
    assert load_checkpoint(real)["iteration"] == 3


def test_images_of_every_colour_layout_and_orientation_read_as_displayed(tmp_path):
    rng = np.random.default_rng(1)
    colour16 = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), colour16)  # stored BGR
    assert np.array_equal(read_image(tmp_path / "c16.png"), (colour16[..., ::-1] // 257).astype(np.uint8))

    palette = Image.fromarray(rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)).quantize(colors=7)
    palette.save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "pal.png"), np.asarray(palette.convert("RGB")))

    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0], smooth[..., 1], smooth[..., 2] = np.linspace(0, 250, 48)[None], 120, np.linspace(0, 250, 32)[:, None]
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    reference = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"), np.float32)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(np.float32) - reference).mean() < 3

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:6, :8] = (255, 0, 0)     # a red top-left corner and a green right band tell every turn apart
    stored[:, 34:] = (0, 255, 0)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)
        displayed = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), np.float32)
        got = read_image(path).astype(np.float32)
        assert got.shape == displayed.shape, orientation
        assert np.abs(got - displayed).mean() < 2, orientation


def test_stats_finds_truncated_and_missized_images_before_training(tmp_path):
    write_rgb(tmp_path / "images" / "b.jpg", np.full((80, 100, 3), 50, np.uint8))
    ann = coco_file(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}])
    data = json.loads(ann.read_text())
    data["images"] += [{"id": 2, "file_name": "b.jpg", "width": 100, "height": 80},
                       {"id": 3, "file_name": "c.jpg", "width": 64, "height": 64}]
    ann.write_text(json.dumps(data))
    full = (tmp_path / "images" / "a.jpg").read_bytes()
    (tmp_path / "images" / "a.jpg").write_bytes(full[:len(full) // 2])
    write_rgb(tmp_path / "images" / "c.jpg", np.zeros((64, 65, 3), np.uint8))
    rows = unreadable_images(load_coco(ann, tmp_path / "images"))
    assert [(r["file"].rsplit("/", 1)[1], r["kind"], r["message"]) for r in rows] == [
        ("a.jpg", "unreadable", "truncated JPEG (no end-of-image marker)"),
        ("c.jpg", "size", "the image is 65x64, the annotations say 64x64")]


@pytest.mark.parametrize("shape", [(1, 1), (2, 500), (500, 2), (3, 3)])
def test_tiny_and_thin_images_go_through_the_detector(shape):
    cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        "data.classes=[a,b]", "model.rpn.anchor_sizes=[[16,32],[32,64],[64,128],[128,256]]",
        "model.rpn.aspect_ratios=[0.5,1.0,2.0]", "model.roi_head.score_thresh=0.0", "input.min_size_test=128",
        "input.max_size=256"])
    torch.manual_seed(0)
    predictor = Predictor(build_model(cfg), cfg, torch.device("cpu"))
    h, w = shape
    det = predictor(np.full((h, w, 3), 128, np.uint8))
    boxes = det["boxes"]
    assert len(boxes) > 0  # a random model with no score threshold returns boxes: where they lie is the test
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= w).all()
    assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= h).all()


def run_tool(*args):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stderr.strip().splitlines()


def test_cli_mistakes_get_one_line_and_exit_status_2(shapes_dir, tmp_path):
    common = ["--config", "configs/faster_rcnn/shapes.yaml", "--no-progress", f"data.train.ann_file={shapes_dir}/train.json",
              f"data.train.img_dir={shapes_dir}/images", "data.test.ann_file=null", "train.max_iter=2",
              "model.backbone.fpn=false", "model.rpn.anchor_sizes=[[16,32,64]]", "model.rpn.aspect_ratios=[1.0]",
              "model.roi_head.fc_dim=64", "input.min_size=96", "input.max_size=128", "data.num_workers=0"]
    run = tmp_path / "run"
    code, lines = run_tool("tools/train.py", "--output-dir", run, *common)
    assert code == 0, lines[-20:]

    code, lines = run_tool("tools/train.py", "--output-dir", run, *common, "model.roi_head.fc_dim=32", "--resume")
    assert code == 2 and lines[-1].startswith(f"error: {run / 'model_final.pth'} was made with another config "
                                              f"(model.roi_head.fc_dim: 64 in the checkpoint, 32 now); --resume "
                                              f"continues a run with the config it started with"), lines
    code, lines = run_tool("tools/train.py", "--output-dir", run, *common, "data.classes=[ellipse,rectangle,triangle]",
                           "--resume")
    assert code == 2 and lines[-1].startswith(
        f"error: checkpoint {run / 'model_final.pth'} does not match the config: it has 3 classes ['rectangle', "
        f"'ellipse', 'triangle'] (config: 3 ['ellipse', 'rectangle', 'triangle']); --resume continues"), lines
    assert not any("Traceback" in line for line in lines)

    (tmp_path / "taken").write_text("a file")
    code, lines = run_tool("tools/infer.py", "--checkpoint", run / "model_final.pth", "--input", shapes_dir / "images",
                           "--output-dir", tmp_path / "taken")
    assert (code, lines) == (2, [f"error: {tmp_path / 'taken'}: a file of that name exists; the output is a folder"])


def test_an_error_raised_in_a_dataloader_worker_reaches_the_user_as_its_own_line():
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise ImageReadError("/data/x.jpg", "truncated JPEG (no end-of-image marker)")

    with pytest.raises(ImageReadError) as e:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(e.value)  # what PyTorch hands over ...
    assert user_message(e.value) == "/data/x.jpg: truncated JPEG (no end-of-image marker)"  # ... what the user reads


# --- random input: only the package's own errors may come out --------------------------------------

OWN_ERRORS = (DatasetError, ImageReadError, ConfigError)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-10**6, 10**6),
                   st.none(), st.text(max_size=3), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boxes=st.lists(st.one_of(st.lists(number, min_size=0, max_size=5), number), max_size=6),
       size=st.tuples(number, number))
def test_random_annotations_give_a_dataset_or_a_dataset_error(tmp_path, boxes, size):
    write_rgb(tmp_path / "images" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": size[0], "height": size[1]}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    try:
        dataset = load_coco(tmp_path / "ann.json", tmp_path / "images")
    except DatasetError:
        return
    record = dataset.records[0]
    assert np.isfinite(record.boxes).all()
    assert ((record.boxes[:, 2] > record.boxes[:, 0]) & (record.boxes[:, 3] > record.boxes[:, 1])).all()
    assert (record.boxes[:, [0, 2]] <= record.width).all() and (record.boxes[:, [1, 3]] <= record.height).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=2000),
                      st.binary(max_size=300).map(lambda b: b"\xff\xd8\xff\xe0" + b),        # JPEG-looking
                      st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)))      # PNG-looking
def test_random_bytes_as_an_image_give_an_image_or_an_image_read_error(tmp_path, data):
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except ImageReadError as e:
        assert str(e).startswith(f"{path}: ")
        return
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


keys = st.sampled_from(["train.max_iter", "train.lr", "input.min_size", "input.max_size", "model.rpn.anchor_sizes",
                        "model.backbone.name", "data.classes", "train.steps", "model.roi_head.fc_dim", "train.ema",
                        "nonsense.key", "train", "input.flip_prob", "model.rpn.aspect_ratios"])
values = st.sampled_from(["-1", "0", "1", "0.5", "1e9", "nan", "inf", "abc", "[]", "[1,2]", "[[8,16]]", "{a: 1}",
                          "null", "true", "[a, b]", "'", "[", "auto"])


@settings(max_examples=80, deadline=None)
@given(overrides=st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3))
def test_random_config_overrides_give_a_model_or_a_config_error(overrides):
    try:
        cfg = load_config("configs/faster_rcnn/shapes.yaml", ["data.classes=[a]", *overrides])
        if cfg.model.rpn.anchor_sizes != "auto" and cfg.model.rpn.aspect_ratios != "auto":
            build_model(cfg)
    except ConfigError as e:
        assert str(e).startswith("command line: ") and "\n" not in str(e), str(e)
