"""YOLO txt datasets and Roboflow exports read as they come; conversion in every direction; a split
for data that comes in one piece; every bad line named with its file and line."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detect.config import load_config
from detect.data import yolo
from detect.data.build import build_dataset
from detect.data.coco import load_coco
from detect.data.convert import stratified_split, subset, write_dataset
from detect.data.voc import load_voc
from detect.data.yolo import load_yolo
from detect.errors import DatasetError
from tests.conftest import REPO, write_rgb


def image(path: Path, h: int = 50, w: int = 100) -> Path:
    return write_rgb(path, np.full((h, w, 3), 90, np.uint8))


@pytest.fixture
def messy(tmp_path) -> Path:
    """A data.yaml dataset with a box, a polygon, a negative image (empty label file), an image without
    a label file, a label file without an image, two images of one stem, and one bad line of each kind."""
    root = tmp_path / "messy"
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg"):
        image(root / "images" / "train" / name)
    image(root / "images" / "train" / "a.png")  # the stem "a" again: both would read labels/train/a.txt
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"                 # line 1: 20 x 20 px centred at (50, 25)
        "\n"                                  # line 2: blank
        "1 0.1 0.1 0.3 0.1 0.2 0.5\n"         # line 3: a polygon: its bounding box
        "0 0.5 0.5 0.2\n"                     # line 4: 4 fields
        "5 0.5 0.5 0.1 0.1\n"                 # line 5: class 5 of 2
        "1 0.5 abc 0.1 0.1\n"                 # line 6: not a number
        "0 0.95 0.5 0.2 0.2\n"                # line 7: reaches past the right edge: clipped
        "1 0.3 0.3 0.0 0.1\n")                # line 8: zero width: dropped
    (labels / "b.txt").write_text("")         # a negative image
    (labels / "z.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "names": {0: "cat", 1: "dog"}}))
    return root


def test_boxes_polygons_negatives_and_every_bad_line(messy, caplog):
    with caplog.at_level(logging.INFO):
        ds = load_yolo(messy / "data.yaml", "train")
    assert ds.class_names == ["cat", "dog"]
    records = {r.path.relative_to(messy / "images" / "train").as_posix(): r for r in ds.records}
    assert sorted(records) == ["a.jpg", "b.png", "c.jpg", "d.jpg"]  # a.png shares a.jpg's label file: left out
    a = records["a.jpg"]
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [10, 5, 30, 25], [85, 20, 100, 30]], atol=1e-4)
    assert a.labels.tolist() == [1, 2, 1]
    for name in ("b.png", "c.jpg", "d.jpg"):
        assert len(records[name].boxes) == 0  # negative images: an empty label file or none
    said = {(Path(p.file).name, p.obj, p.kind): p.message for p in ds.problems}
    labels = messy / "labels" / "train"
    assert said[("a.txt", "line 4", "bad-line")].startswith("4 fields: a box line has 5")
    assert said[("a.txt", "line 5", "bad-line")] == "class id 5 is not one of the 2 classes (0-1); line left out"
    assert said[("a.txt", "line 6", "bad-line")] == "'abc' is not a number; line left out"
    assert said[("a.txt", "line 7", "clipped")].endswith("clipped to (85.0, 20.0, 100.0, 30.0)")
    assert "zero or negative size, dropped" in said[("a.txt", "line 8", "degenerate")]
    assert ("c.jpg", None, "no-label-file") in said and ("d.jpg", None, "no-label-file") in said
    assert ("z.txt", None, "orphan-label") in said
    assert "two images named 'a' in one split share the label file" in said[("a.png", None, "duplicate-stem")]
    # one line each, naming the file and the line
    logged = [r.getMessage() for r in caplog.records]
    assert f"{labels / 'a.txt'}, line 5: class id 5 is not one of the 2 classes (0-1); line left out" in logged
    assert any(m.endswith("2 images have no label file (negative images)") for m in logged)


def test_stats_counts_what_is_missing(messy):
    r = subprocess.run([sys.executable, "-m", "detect", "dataset", "stats", "--format", "yolo", "--root", messy,
                        "--split", "train", "--no-images"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "[no-label-file]" in r.stdout and "[orphan-label]" in r.stdout and "[bad-line]" in r.stdout
    assert f"{messy / 'labels' / 'train' / 'a.txt'}, line 6: 'abc' is not a number" in r.stdout


def test_a_data_yaml_that_cannot_work_is_one_line(tmp_path):
    (tmp_path / "no_names.yaml").write_text("train: images\n")
    with pytest.raises(DatasetError, match=r"no_names.yaml: no 'names'"):
        load_yolo(tmp_path / "no_names.yaml", "train")
    (tmp_path / "missing.yaml").write_text("train: nowhere/images\nnames: [a]\n")
    with pytest.raises(DatasetError, match=r"missing.yaml: train: nowhere/images does not exist"):
        load_yolo(tmp_path / "missing.yaml", "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "ok.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(DatasetError, match=r"ok.yaml: no 'val' split"):
        load_yolo(tmp_path / "ok.yaml", "val")


def test_folders_without_a_yaml_and_a_list_of_images(tmp_path):
    image(tmp_path / "images" / "val" / "x.jpg")
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DatasetError, match="no class names"):
        load_yolo(tmp_path, "val")
    assert load_yolo(tmp_path, "val", classes=["thing"]).class_names == ["thing"]
    (tmp_path / "classes.txt").write_text("thing\n")
    ds = load_yolo(tmp_path, "val")
    np.testing.assert_allclose(ds.records[0].boxes, [[25, 12.5, 75, 37.5]])
    (tmp_path / "val.txt").write_text("./images/val/x.jpg\n")
    (tmp_path / "data.yaml").write_text("path: .\nval: val.txt\nnames: [thing]\n")
    assert load_yolo(tmp_path, "val").records[0].path == (tmp_path / "images" / "val" / "x.jpg").resolve()


def test_the_label_cache_reads_only_what_changed(messy, monkeypatch):
    load_yolo(messy, "train")
    assert (messy / "labels" / "train" / yolo.CACHE_NAME).is_file()
    calls, opened = [], []
    real = yolo.displayed_size
    monkeypatch.setattr(yolo, "displayed_size", lambda p: calls.append(p) or real(p))
    real_cache = yolo.LabelCache.__init__
    monkeypatch.setattr(yolo.LabelCache, "__init__", lambda self, folder: opened.append(folder) or
                        real_cache(self, folder))
    again = load_yolo(messy, "train")
    assert calls == []  # every image and label file from the cache
    assert opened == [messy / "labels" / "train"]  # its file read once, not once per image
    label = messy / "labels" / "train" / "a.txt"
    label.write_text("1 0.5 0.5 0.5 0.5\n")
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10 ** 9))
    changed = load_yolo(messy, "train")
    # only the images whose label file changed (a.png names the same file, and is left out again)
    assert sorted(p.name for p in calls) == ["a.jpg", "a.png"]
    a = next(r for r in changed.records if r.path.name == "a.jpg")
    assert a.labels.tolist() == [2] and len(again.records) == len(changed.records)


def test_a_roboflow_coco_export_trains_with_its_real_classes(tmp_path):
    export = tmp_path / "export"
    for split, n in (("train", 4), ("valid", 2)):
        images, annotations = [], []
        for i in range(n):
            image(export / split / f"{i}.jpg", 96, 96)
            images.append({"id": i, "file_name": f"{i}.jpg", "width": 96, "height": 96})
            annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [20, 20, 40, 30],
                                "area": 1200, "iscrowd": 0})
        (export / split / "_annotations.coco.json").write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": 0, "name": "cells", "supercategory": "none"},  # Roboflow's unused superclass
                           {"id": 1, "name": "red", "supercategory": "cells"},
                           {"id": 2, "name": "white", "supercategory": "cells"}]}))
    cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        "data.train.format=coco", f"data.train.root={export}", "data.train.split=train", "data.train.ann_file=null",
        "data.train.img_dir=null", "data.test.format=coco", f"data.test.root={export}", "data.test.split=valid",
        "data.test.ann_file=null", "data.test.img_dir=null", "data.classes=[]", "train.max_iter=2",
        "train.checkpoint_period=0", "data.num_workers=0", "input.min_size=96", "input.min_size_test=96",
        "input.max_size=96", "model.roi_head.fc_dim=32", "device=cpu"])
    assert build_dataset(cfg, "train").class_names == ["red", "white"]
    from detect.training import train

    metrics = train(cfg, tmp_path / "run", progress=False)
    assert set(metrics["coco"]["per_class"]) == {"red", "white"}


def test_a_roboflow_voc_export_reads_its_split_folders(tmp_path):
    export = tmp_path / "voc_export"
    image(export / "train" / "p.jpg")
    (export / "train" / "p.xml").write_text(
        "<annotation><filename>p.jpg</filename><size><width>100</width><height>50</height></size>"
        "<object><name>cat</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>30</xmax><ymax>25</ymax></bndbox>"
        "</object></annotation>")
    ds = load_voc(export, "train")
    assert ds.class_names == ["cat"] and ds.records[0].path == export / "train" / "p.jpg"
    np.testing.assert_allclose(ds.records[0].boxes, [[10, 5, 30, 25]])


@pytest.mark.parametrize("source", ["bccd", "facemask"])
def test_conversion_round_trips_through_yolo_and_every_format(source, tmp_path):
    data = REPO.parent / "shared" / "data"
    if source == "bccd":
        if not (data / "BCCD" / "Annotations").is_dir():
            pytest.skip("BCCD not found")
        original = load_voc(data / "BCCD", "test")
    else:
        if not (data / "facemask" / "annotations").is_dir():
            pytest.skip("facemask not found")
        original = load_coco(data / "facemask" / "annotations" / "custom_val.json", data / "facemask" / "val2017")
    write_dataset(original, "yolo", tmp_path / "yolo", "test")
    as_yolo = load_yolo(tmp_path / "yolo" / "data.yaml", "test")
    write_dataset(as_yolo, "coco", tmp_path / "coco", "test")
    back = load_coco(tmp_path / "coco" / "annotations" / "test.json", tmp_path / "coco" / "images" / "test")
    write_dataset(back, "voc", tmp_path / "voc", "test")
    as_voc = load_voc(tmp_path / "voc", "test")
    for copy in (as_yolo, back, as_voc):
        assert copy.class_names == original.class_names
        assert len(copy.records) == len(original.records)
        for a, b in zip(original.records, copy.records):
            assert a.path.name == b.path.name and (a.width, a.height) == (b.width, b.height)
            assert a.labels.tolist() == b.labels.tolist()
            np.testing.assert_allclose(b.boxes, a.boxes, atol=0.01)
    assert sum(len(r.boxes) == 0 for r in back.records) == sum(len(r.boxes) == 0 for r in original.records)


def test_training_on_the_yolo_copy_gives_the_same_losses(tmp_path):
    from detect.data.synthetic import generate_dataset
    from detect.training import train

    shapes = generate_dataset(tmp_path / "shapes", num_train=4, num_test=2, seed=6, long_side=96, max_objects=3)
    original = load_coco(shapes / "train.json", shapes / "images")
    write_dataset(original, "yolo", tmp_path / "yolo", "train")
    common = ["train.max_iter=3", "train.log_period=1", "train.checkpoint_period=0", "data.num_workers=0",
              "input.min_size=96", "input.max_size=128", "model.roi_head.fc_dim=32", "device=cpu",
              "data.test.ann_file=null", "data.classes=[rectangle,ellipse,triangle]"]
    coco_cfg = load_config("configs/faster_rcnn/shapes.yaml", [f"data.train.ann_file={shapes}/train.json",
                                                               f"data.train.img_dir={shapes}/images", *common])
    yolo_cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        "data.train.format=yolo", f"data.train.root={tmp_path / 'yolo' / 'data.yaml'}", "data.train.split=train",
        *common])
    train(coco_cfg, tmp_path / "coco_run", progress=False)
    train(yolo_cfg, tmp_path / "yolo_run", progress=False)
    rows = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("coco_run", "yolo_run")]
    assert [r["iteration"] for r in rows[0]] == [r["iteration"] for r in rows[1]] == [1, 2, 3]
    for a, b in zip(*rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_split_is_seeded_and_stratified(tmp_path):
    from detect.data.synthetic import generate_dataset

    shapes = generate_dataset(tmp_path / "shapes", num_train=40, num_test=1, seed=7, long_side=64, max_objects=4)
    whole = load_coco(shapes / "train.json", shapes / "images")
    parts = stratified_split(whole, [0.75, 0.25], seed=3)
    assert parts == stratified_split(whole, [0.75, 0.25], seed=3) != stratified_split(whole, [0.75, 0.25], seed=4)
    assert sorted(parts[0] + parts[1]) == list(range(40)) and len(parts[0]) == 30
    for c in range(1, 4):
        boxes = [sum(int((whole.records[i].labels == c).sum()) for i in part) for part in parts]
        assert abs(boxes[0] / sum(boxes) - 0.75) < 0.1, (c, boxes)
    r = subprocess.run([sys.executable, "-m", "detect", "dataset", "split", "--format", "coco", "--ann-file",
                        shapes / "train.json", "--img-dir", shapes / "images", "--fractions", "0.75", "0.25",
                        "--seed", "3", "--output-dir", tmp_path / "out"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    written = [load_coco(tmp_path / "out" / "annotations" / f"{s}.json", tmp_path / "out" / "images" / s)
               for s in ("train", "val")]
    assert [len(w.records) for w in written] == [30, 10]
    assert [r.path.name for r in written[1].records] == [whole.records[i].path.name for i in parts[1]]


def test_the_label_reading_benchmark_reads_the_generated_set_back(tmp_path):
    from detect.benchmark.yolo_labels import run_yolo_benchmark

    result = run_yolo_benchmark(tmp_path / "set", num_images=40, rounds=1)
    ds = load_yolo(tmp_path / "set" / "data.yaml", "train")
    assert result["images"] == len(ds.records) == 40
    assert sum(len(r.boxes) for r in ds.records) == result["boxes"] + 1  # the changed file's one more box
    assert result["changed_files"] == 1 and len(list((tmp_path / "set" / "labels" / "train").glob("*.txt"))) == 36
    assert {(r.width, r.height) for r in ds.records} == {(640, 480), (480, 640), (800, 600), (1024, 768)}
