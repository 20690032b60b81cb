import json
import subprocess
import sys
from pathlib import Path

import cv2
from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parents[2]


def run_tool(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "tools" / "dataset.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_stats_json_and_show(shapes_dir, tmp_path):
    source = ["--format", "coco", "--ann-file", shapes_dir / "train.json", "--img-dir", shapes_dir / "images"]
    r = run_tool("stats", *source, "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    coco = COCO(str(shapes_dir / "train.json"))
    assert stats["images"] == 12 and stats["boxes"] == len(coco.getAnnIds())
    for cat in coco.loadCats(coco.getCatIds()):
        assert stats["boxes_per_class"][cat["name"]] == len(coco.getAnnIds(catIds=[cat["id"]]))
        assert f"{cat['name']}" in r.stdout
    no_boxes = sum(1 for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i]))
    assert stats["images_without_boxes"] == no_boxes
    assert sum(b["count"] for b in stats["size_histogram"]) == stats["boxes"]

    r = run_tool("show", *source, "--num", 3, "--output-dir", tmp_path / "show")
    assert r.returncode == 0, r.stderr
    shown = sorted((tmp_path / "show").glob("*.jpg"))
    assert len(shown) == 3 and cv2.imread(str(shown[0])) is not None


def test_convert_voc_to_coco(bccd_root, tmp_path):
    r = run_tool("convert", "--format", "voc", "--root", bccd_root, "--split", "test", "--to", "coco",
                 "--output-dir", tmp_path / "t", "data.classes=[RBC,WBC,Platelets]")
    assert r.returncode == 0, r.stderr
    # a dataset folder: annotations/<split>.json and the images (linked) under images/<split>/
    coco = COCO(str(tmp_path / "t" / "annotations" / "test.json"))
    assert len(coco.getImgIds()) == 72 and min(coco.getImgIds()) == 1
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["RBC", "WBC", "Platelets"]
    first = coco.loadImgs(1)[0]
    linked = tmp_path / "t" / "images" / "test" / first["file_name"]
    assert linked.read_bytes() == (bccd_root / "JPEGImages" / first["file_name"]).read_bytes()
    assert f"data.train.ann_file={tmp_path / 't' / 'annotations' / 'test.json'}" in r.stdout


def test_bccd_stats_counts_match_the_xml(bccd_root, tmp_path):
    import xml.etree.ElementTree as ET
    from collections import Counter

    ids = (bccd_root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    expected = Counter()
    for i in ids:
        for obj in ET.parse(bccd_root / "Annotations" / f"{i}.xml").findall("object"):
            b = [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            if b[2] > b[0] and b[3] > b[1]:
                expected[obj.findtext("name")] += 1
    r = run_tool("stats", "--config", "configs/datasets/bccd.yaml", f"data.train.root={bccd_root}",
                 "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["boxes_per_class"] == dict(expected)
    assert stats["images"] == len(ids)
    for name, n in expected.items():
        assert any(line.split()[:2] == [name, str(n)] for line in r.stdout.splitlines())
    assert [p["kind"] for p in stats["problems"]] == ["degenerate", "degenerate"]
    assert "problems: 2" in r.stdout


def test_user_errors_are_one_clear_line(tmp_path):
    r = run_tool("stats", "--format", "voc", "--root", tmp_path / "nowhere", "--split", "train")
    assert r.returncode == 2
    assert "error: VOC root not found" in r.stderr and str(tmp_path / "nowhere") in r.stderr
    assert "Traceback" not in r.stderr
    r = run_tool("stats", "--format", "coco", "--img-dir", tmp_path)
    assert r.returncode == 2 and "data.train.ann_file is not set" in r.stderr
    r = run_tool("stats", "--format", "coco", "train.lrr=1")
    assert r.returncode == 2 and "unknown key 'train.lrr'" in r.stderr and "Traceback" not in r.stderr


def test_anchors_prints_both_reports_and_the_overrides(shapes_dir, tmp_path):
    source = ["--config", REPO / "configs/faster_rcnn/shapes.yaml", f"data.train.ann_file={shapes_dir / 'train.json'}",
              f"data.train.img_dir={shapes_dir / 'images'}"]
    r = run_tool("anchors", *source, "--json", tmp_path / "a.json")
    assert r.returncode == 0, r.stderr
    fit = json.loads((tmp_path / "a.json").read_text())
    current, fitted = fit["reports"]["current"], fit["reports"]["fitted"]
    coco = COCO(str(shapes_dir / "train.json"))
    assert current["boxes"] == fitted["boxes"] == len(coco.getAnnIds())  # one training scale, no crowd boxes
    assert sum(c["boxes"] for c in fitted["per_class"].values()) == fitted["boxes"]
    assert fitted["anchor_sizes"] == fit["sizes"] and fitted["aspect_ratios"] == fit["ratios"]
    assert f"model.rpn.anchor_sizes={json.dumps(fit['sizes'])}" in r.stdout
    for line in ("current: ", "fitted: ", "class rectangle", "best possible recall"):
        assert line in r.stdout, line


def test_anchors_names_the_boxes_no_anchor_can_reach(tmp_path):
    from tests.conftest import write_rgb
    import numpy as np

    write_rgb(tmp_path / "img" / "a.png", np.zeros((200, 200, 3), np.uint8))
    dots = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [10 + 20 * i, 13, 3, 3], "area": 9, "iscrowd": 0}
            for i in range(8)]
    (tmp_path / "a.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 200}],
                                                 "categories": [{"id": 1, "name": "dot"}], "annotations": dots}))
    r = run_tool("anchors", "--config", REPO / "configs/faster_rcnn/shapes.yaml", f"data.train.ann_file={tmp_path / 'a.json'}",
                 f"data.train.img_dir={tmp_path / 'img'}", "data.classes=[dot]", "input.min_size=200",
                 "input.max_size=200")
    assert r.returncode == 0, r.stderr
    assert "fitted: 100% of the training boxes (8 of 8) have no anchor at IoU >= 0.7" in r.stdout
    assert "too small for the finest anchor grid" in r.stdout and "raise input.min_size" in r.stdout
