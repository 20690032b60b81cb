import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from detect.data.coco import load_coco, to_coco_dict
from detect.data.detection_dataset import DatasetError


def test_parse_clean_and_report(coco_dir):
    ds = load_coco(coco_dir / "ann.json", coco_dir / "images")
    # Categories in id order: cat (2) -> label 1, dog (5) -> label 2.
    assert ds.class_names == ["cat", "dog"]
    a, b = ds.records
    assert (a.image_id, b.image_id) == (7, 9)
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60], [90, 60, 100, 80], [0, 0, 10, 10]])
    assert a.labels.tolist() == [1, 2, 2]
    assert a.ignore.tolist() == [False, False, True]  # iscrowd -> ignore
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert len(b.boxes) == 0
    kinds = {(p.kind, p.obj) for p in ds.problems}
    assert kinds == {("degenerate", "annotation id 2"), ("clipped", "annotation id 3")}
    assert all("a.jpg" in p.file for p in ds.problems)


def test_item_contract(coco_dir):
    ds = load_coco(coco_dir / "ann.json", coco_dir / "images")
    image, target = ds[0]
    assert image.shape == (80, 100, 3) and image.dtype == np.uint8
    assert set(target) >= {"boxes", "labels", "ignore", "image_id", "orig_size"}
    assert target["image_id"] == 7 and target["orig_size"] == (80, 100)
    assert ds.aspect_ratio(0) == 100 / 80


def test_classes_order_and_category_map(coco_dir):
    ds = load_coco(coco_dir / "ann.json", coco_dir / "images", classes=["dog", "cat"])
    assert ds.records[0].labels.tolist() == [2, 1, 1]
    with pytest.raises(DatasetError) as e:
        load_coco(coco_dir / "ann.json", coco_dir / "images", classes=["cat", "horse"])
    assert "ann.json" in str(e.value) and "'dog'" in str(e.value)
    ds = load_coco(coco_dir / "ann.json", coco_dir / "images", classes=["cat", "canine"],
                   category_map={"dog": "canine"})
    assert ds.records[0].labels.tolist() == [1, 2, 2]
    ds = load_coco(coco_dir / "ann.json", coco_dir / "images", classes=["cat"], category_map={"dog": None})
    assert ds.records[0].labels.tolist() == [1]
    assert sum(p.kind == "dropped-category" for p in ds.problems) == 3


def test_missing_image_is_an_error_naming_it(coco_dir):
    (coco_dir / "images" / "b.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        load_coco(coco_dir / "ann.json", coco_dir / "images")
    assert "b.jpg" in str(e.value) and "missing" in str(e.value)


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("{not json", "not valid json"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}), "'images' list is empty"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
                 "annotations": [{"id": 3, "image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}],
                 "categories": [{"id": 1, "name": "a"}]}), "annotation id 3 has category_id 9"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
                 "annotations": [{"id": 4, "image_id": 1, "category_id": 1, "bbox": ["a", 0, 1, 1]}],
                 "categories": [{"id": 1, "name": "a"}]}), "annotation id 4 has a bbox that is not four numbers: ['a', 0, 1, 1]"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [None, 0, 1, 1]}],
                 "categories": [{"id": 1, "name": "a"}]}), "annotation id 5 has a bbox that is not four numbers"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": "abc", "height": 80}], "annotations": [],
                 "categories": [{"id": 1, "name": "a"}]}), "image 'a.jpg' has width 'abc', not a size in pixels"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
                 "annotations": [{"id": 6, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                 "categories": [{"id": 1, "name": "a"}]}), "refer to image ids that are not in 'images': [2]"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
                 "annotations": [{"id": 7, "image_id": 1, "category_id": 1}],
                 "categories": [{"id": 1, "name": "a"}]}), "annotation id 7 has no [x, y, w, h] bbox: None"),
])
def test_bad_annotation_files(coco_dir, content, message):
    bad = coco_dir / "bad.json"
    bad.write_text(content)
    with pytest.raises(DatasetError) as e:
        load_coco(bad, coco_dir / "images")
    assert message in str(e.value) and "bad.json" in str(e.value)


def test_missing_annotation_file(coco_dir):
    with pytest.raises(DatasetError, match="nope.json"):
        load_coco(coco_dir / "nope.json", coco_dir / "images")


def test_coco_round_trip_through_pycocotools(coco_dir, tmp_path):
    ds = load_coco(coco_dir / "ann.json", coco_dir / "images")
    out = tmp_path / "round.json"
    out.write_text(json.dumps(to_coco_dict(ds, coco_dir / "images")))
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [7, 9]
    assert coco.loadImgs(7)[0]["file_name"] == "a.jpg"
    anns = coco.loadAnns(coco.getAnnIds(imgIds=7))
    assert [a["bbox"] for a in anns] == [[10, 20, 30, 40], [90, 60, 10, 20], [0, 0, 10, 10]]
    assert [a["iscrowd"] for a in anns] == [0, 0, 1]
    assert [a["area"] for a in anns] == [1200, 200, 100]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    # Reading the written file back gives the same records.
    again = load_coco(out, coco_dir / "images")
    np.testing.assert_array_equal(again.records[0].boxes, ds.records[0].boxes)
    assert again.records[0].ignore.tolist() == ds.records[0].ignore.tolist()


def test_dropped_boxes_are_logged_with_file_and_object(coco_dir, caplog):
    with caplog.at_level("WARNING", logger="detect"):
        load_coco(coco_dir / "ann.json", coco_dir / "images")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "ann.json" in warnings[0] and "a.jpg" in warnings[0] and "annotation id 2" in warnings[0]
    assert "degenerate" in warnings[0]
