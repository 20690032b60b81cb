import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest

from detect.data.detection_dataset import DatasetError
from detect.data.image_io import read_image
from detect.data.voc import load_voc
from tests.conftest import write_rgb


def voc_xml(objects, width=100, height=80):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><filename>x.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name in ("im1", "im2"):
        write_rgb(root / "JPEGImages" / f"{name}.jpg", np.zeros((80, 100, 3), np.uint8))
    (root / "Annotations" / "im1.xml").write_text(voc_xml([
        ("dog", (1, 1, 100, 80), 0),    # whole image, 1-based -> 0..100 x 0..80
        ("cat", (11, 21, 40, 60), 1),   # difficult
        ("cat", (50, 50, 50, 60), 0),   # degenerate: xmax == xmin
        ("dog", (61, 41, 120, 70), 0),  # reaches outside: clipped at x = 100
    ]))
    (root / "Annotations" / "im2.xml").write_text(voc_xml([]))
    (root / "ImageSets" / "Main" / "train.txt").write_text("im1\nim2\n")
    (root / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    return root


def test_parse_voc(voc_root):
    ds = load_voc(voc_root, "train")
    assert ds.class_names == ["cat", "dog"]  # sorted names found
    r1, r2 = ds.records
    assert (r1.image_id, r2.image_id) == (1, 2)
    np.testing.assert_array_equal(r1.boxes, [[0, 0, 100, 80], [10, 20, 40, 60], [60, 40, 100, 70]])
    assert r1.labels.tolist() == [2, 1, 2]
    assert r1.ignore.tolist() == [False, True, False]
    assert [(p.kind, p.obj) for p in ds.problems] == [("degenerate", "object 2"), ("clipped", "object 3")]
    assert ds.problems[0].file.endswith("im1.xml")
    assert len(r2.boxes) == 0
    image, target = ds[1]
    assert image.shape == (80, 100, 3) and target["image_id"] == 2


def test_voc_errors(voc_root):
    with pytest.raises(DatasetError, match=r"available splits: \['empty', 'train'\]"):
        load_voc(voc_root, "val")
    with pytest.raises(DatasetError, match="lists no images"):
        load_voc(voc_root, "empty")
    with pytest.raises(DatasetError, match="unknown category 'dog'"):
        load_voc(voc_root, "train", classes=["cat"])
    (voc_root / "Annotations" / "im2.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="im2.xml: invalid xml"):
        load_voc(voc_root, "train")
    (voc_root / "Annotations" / "im2.xml").unlink()
    with pytest.raises(DatasetError, match="annotation file not found: .*im2.xml"):
        load_voc(voc_root, "train")
    with pytest.raises(DatasetError, match="VOC root not found"):
        load_voc(voc_root / "nowhere", "train")


def test_bccd_loads_and_reports_exactly_the_degenerate_boxes(bccd_root):
    expected = Counter()
    degenerate = set()
    split_ids = set()
    for split in ("trainval", "test"):
        split_ids |= set((bccd_root / "ImageSets" / "Main" / f"{split}.txt").read_text().split())
    for image_id in split_ids:
        for i, obj in enumerate(ET.parse(bccd_root / "Annotations" / f"{image_id}.xml").findall("object")):
            b = [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            if b[2] <= b[0] or b[3] <= b[1]:
                degenerate.add((f"{image_id}.xml", f"object {i}"))
            else:
                expected[obj.findtext("name")] += 1
    assert len(degenerate) == 2 and len(split_ids) == 364

    found = Counter()
    problems = set()
    images = 0
    for split in ("trainval", "test"):
        ds = load_voc(bccd_root, split, classes=["RBC", "WBC", "Platelets"])
        for record in ds.records:
            assert read_image(record.path).shape == (480, 640, 3)
            images += 1
            found.update(ds.class_names[label - 1] for label in record.labels.tolist())
        problems |= {(p.file.rsplit("/", 1)[-1], p.obj) for p in ds.problems if p.kind == "degenerate"}
        assert all(p.kind == "degenerate" for p in ds.problems)
    assert images == 364
    assert problems == degenerate
    assert found == expected


@pytest.mark.parametrize("obj,message", [
    ("<object><name></name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>",
     "im2.xml, object 0: <name> is empty"),
    ("<object><name>dog</name></object>", "im2.xml, object 0: missing <name> or <bndbox>"),
    ("<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>",
     "im2.xml, object 0: missing <name> or <bndbox>"),
    ("<object><name>dog</name><bndbox><xmin>one</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>",
     "<xmin> is 'one', not a number"),
])
def test_objects_without_a_usable_name_or_box_are_refused_naming_the_file(voc_root, obj, message):
    (voc_root / "Annotations" / "im2.xml").write_text(
        f"<annotation><size><width>100</width><height>80</height></size>{obj}</annotation>")
    with pytest.raises(DatasetError) as e:
        load_voc(voc_root, "train")  # with the classes from the annotations: an empty name is no class
    assert message in str(e.value)
