import hashlib
import json

import numpy as np
from pycocotools.coco import COCO

from detect.data.coco import load_coco
from detect.data.synthetic import CLASSES, generate_dataset, generate_image


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_loads_in_pycocotools_and_in_detect(shapes_dir):
    coco = COCO(str(shapes_dir / "train.json"))
    assert len(coco.getImgIds()) == 12
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    ds = load_coco(shapes_dir / "train.json", shapes_dir / "images")
    assert ds.problems == []  # the generator writes only clean boxes
    for record in ds.records:
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all()
        assert (record.boxes[:, [0, 2]] <= record.width).all() and (record.boxes[:, [1, 3]] <= record.height).all()
    image, target = ds[0]
    assert image.shape[:2] == (ds.records[0].height, ds.records[0].width)


def test_deterministic_for_a_seed(tmp_path):
    a = generate_dataset(tmp_path / "a", num_train=3, num_test=2, seed=4, long_side=64)
    b = generate_dataset(tmp_path / "b", num_train=3, num_test=2, seed=4, long_side=64)
    c = generate_dataset(tmp_path / "c", num_train=3, num_test=2, seed=5, long_side=64)
    assert digest(a) == digest(b) != digest(c)
    # Asking for more images does not change the first ones.
    d = generate_dataset(tmp_path / "d", num_train=5, num_test=2, seed=4, long_side=64)
    assert (a / "images/train/000002.jpg").read_bytes() == (d / "images/train/000002.jpg").read_bytes()
    assert json.loads((a / "test.json").read_text()) == json.loads((d / "test.json").read_text())


def test_variety_empty_images_sizes_and_overlaps():
    sizes, classes, empty, overlaps, shapes = [], set(), 0, 0, set()
    for i in range(60):
        image, objects = generate_image(np.random.default_rng([0, 1, i]), long_side=128)
        shapes.add(image.shape[:2])
        empty += not objects
        classes |= {c for c, _, _, _ in objects}
        boxes = np.array([b for _, b, _, _ in objects]).reshape(-1, 4)
        # half of every shape stays in view, whatever covers it: another shape or the image border
        assert all(visible >= 0.5 * full for _, _, visible, full in objects)
        sizes += np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
        for j in range(len(boxes)):
            for k in range(j + 1, len(boxes)):
                ix = min(boxes[j, 2], boxes[k, 2]) - max(boxes[j, 0], boxes[k, 0])
                iy = min(boxes[j, 3], boxes[k, 3]) - max(boxes[j, 1], boxes[k, 1])
                overlaps += ix > 0 and iy > 0
    assert classes == {0, 1, 2}
    assert empty >= 2 and overlaps >= 5
    assert min(sizes) < 12 and max(sizes) > 60  # small to large
    assert len(shapes) == 3  # landscape, portrait and square images


def test_cli_prints_statistics(tmp_path, capsys):
    from detect.data.synthetic import main

    assert main(["--out", str(tmp_path), "--num-train", "2", "--num-test", "1", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "images: 2" in out and "images: 1" in out and "boxes per class" in out


def test_large_images_hold_small_whole_objects_apart():
    # sliced inference's development set: 1,500-2,000 px images, objects of about 8-40 px (the shape's
    # size; a box's geometric mean side stays within 5-60 px), whole, none touching another
    from detect.data.synthetic import generate_large_image

    for seed in range(3):
        image, objects = generate_large_image(np.random.default_rng(seed))
        h, w = image.shape[:2]
        assert max(h, w) == 2000 and min(h, w) >= 1000 and len(objects) >= 10
        boxes = np.array([box for _, box, _, _ in objects])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        assert 5 <= sides.min() and sides.max() <= 60
        for _, _, visible, full in objects:
            assert visible == full  # whole: nothing covers part of an object
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_large_image_distractors_are_outlines_never_a_copy_of_a_class(monkeypatch):
    # a filled disc among the distractors was an unlabelled small ellipse: every circle drawn is a
    # ring thin enough to keep its hole
    import detect.data.synthetic as synthetic

    circles = []
    real = synthetic.cv2.circle

    def record(image, centre, radius, colour, thickness=1, *args):
        circles.append((radius, thickness))
        return real(image, centre, radius, colour, thickness, *args)

    monkeypatch.setattr(synthetic.cv2, "circle", record)
    for seed in range(3):
        synthetic.generate_large_image(np.random.default_rng(seed))
    assert circles and all(0 < thickness and radius - thickness >= 2 for radius, thickness in circles)
