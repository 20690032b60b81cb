import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detect.config import load_config
from detect.data.synthetic import generate_dataset
from detect.inference import Predictor
from detect.training.trainer import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = generate_dataset(tmp_path_factory.mktemp("d"), num_train=2, num_test=1, seed=1, long_side=96)
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("configs/faster_rcnn/shapes.yaml", [
        f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images", "data.test.ann_file=null",
        "train.max_iter=2", "data.num_workers=0", "model.roi_head.fc_dim=64", "input.min_size=96",
        "input.min_size_test=96", "device=cpu", "model.roi_head.score_thresh=0.0"])
    train(cfg, out, progress=False)
    return out / "model_final.pth"


@pytest.fixture
def messy_folder(tmp_path):
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        cv2.imwrite(str(root / sub / "img.jpg"), img)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(img[..., 0]).save(root / "gray.png")
    Image.fromarray(np.dstack([img, np.full((60, 80), 128, np.uint8)]), "RGBA").save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x60, displayed 60x80 (w x h)
    Image.fromarray(img).save(root / "rotated.jpg", exif=exif.tobytes())
    return root


def run_infer(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "infer.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env={**os.environ, "CI": "true"})


def test_cli_on_a_messy_folder_and_resume(checkpoint, messy_folder, tmp_path):
    out = tmp_path / "out"
    r = run_infer("--checkpoint", checkpoint, "--input", messy_folder, "--output-dir", out, "--score-thresh", "0.0",
                  "--batch-size", "2", "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert written == ["a/img.jpg", "b/img.jpg", "gray.png", "rgba.png", "rotated.jpg"]
    shapes = {name: cv2.imread(str(out / "images" / name)).shape[:2] for name in written}
    assert shapes["rotated.jpg"] == (80, 60)  # EXIF applied: boxes and output refer to the displayed image

    skipped = json.loads((out / "skipped.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"corrupt.jpg", "notes.txt"}
    assert "truncated" in reasons["corrupt.jpg"] or "not a decodable" in reasons["corrupt.jpg"]
    assert "corrupt.jpg" in r.stdout and "skipped 2 files" in r.stdout

    coco = COCO(str(out / "images.json"))
    dets = coco.loadRes(str(out / "detections.json"))
    assert len(coco.getImgIds()) == 5
    sizes = {img["file_name"]: (img["height"], img["width"]) for img in coco.loadImgs(coco.getImgIds())}
    assert sizes["rotated.jpg"] == (80, 60) and sizes["gray.png"] == (60, 80)
    anns = dets.loadAnns(dets.getAnnIds())
    assert anns, "a score threshold of 0 keeps detections"
    for a in anns:
        img = coco.loadImgs(a["image_id"])[0]
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3
    total = len(anns)
    assert f"{total} detections" in r.stdout

    # Interrupted half-way: drop two results, run again with --skip-existing; only those are redone.
    for name in ("b/img.jpg", "gray.png"):
        (out / ".results" / f"{name}.json").unlink()
    mtime = (out / "images" / "a" / "img.jpg").stat().st_mtime_ns
    r = run_infer("--checkpoint", checkpoint, "--input", messy_folder, "--output-dir", out, "--score-thresh", "0.0",
                  "--skip-existing", "--workers", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 processed now, 3 already done" in r.stdout
    assert (out / "images" / "a" / "img.jpg").stat().st_mtime_ns == mtime
    again = COCO(str(out / "images.json")).loadRes(str(out / "detections.json"))
    assert len(again.getAnnIds()) == total and len(again.getImgIds()) == 5


def test_predictor_api_maps_to_original_pixels(checkpoint, messy_folder):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.0)
    assert predictor.class_names == ["rectangle", "ellipse", "triangle"]
    image = np.random.default_rng(2).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    one = predictor(image)
    assert set(one) == {"boxes", "scores", "labels", "class_names"}
    # the model's own boxes, on the resized input, divided by the resize factor of each axis
    tensor, _ = predictor.prepare(image)
    import torch
    with torch.no_grad():
        raw = predictor.model([tensor])[0]["boxes"].numpy()
    fx, fy = tensor.shape[2] / 500, tensor.shape[1] / 300
    assert abs(fx - 1) > 0.1 and abs(fy - 1) > 0.1  # resized for the test: a missing division would be seen
    expected = np.clip(raw / np.array([fx, fy, fx, fy], np.float32), 0, [500, 300, 500, 300])
    assert len(one["boxes"]) > 0 and np.allclose(one["boxes"], expected, atol=0.02)
    assert one["class_names"] == [predictor.class_names[k - 1] for k in one["labels"]]
    both = predictor([messy_folder / "gray.png", image])
    assert len(both) == 2 and both[0]["boxes"].shape[1] == 4


def test_empty_folder_and_bad_checkpoint_fail_clearly(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_infer("--checkpoint", checkpoint, "--input", tmp_path / "empty", "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "no images found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    r = run_infer("--checkpoint", tmp_path / "bad.pth", "--input", tmp_path / "empty", "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "bad.pth" in r.stderr and "Traceback" not in r.stderr


def test_video_every_kth_frame(checkpoint, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (80, 64))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    writer.release()
    r = run_infer("--checkpoint", checkpoint, "--input", video, "--output-dir", tmp_path / "v", "--every", "2",
                  "--score-thresh", "0.0")
    assert r.returncode == 0, r.stderr[-2000:]
    images = json.loads((tmp_path / "v" / "images.json").read_text())["images"]
    assert [im["frame"] for im in images] == [0, 2, 4]
    cap = cv2.VideoCapture(str(tmp_path / "v" / "clip_detections.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 3
    COCO(str(tmp_path / "v" / "images.json")).loadRes(str(tmp_path / "v" / "detections.json"))


def test_very_large_image(checkpoint, tmp_path):
    (tmp_path / "big").mkdir()
    big = np.zeros((9000, 12000, 3), np.uint8)
    big[::50] = 255
    cv2.imwrite(str(tmp_path / "big" / "huge.png"), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del big
    r = run_infer("--checkpoint", checkpoint, "--input", tmp_path / "big", "--output-dir", tmp_path / "o",
                  "--score-thresh", "0.0", "--workers", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    img = json.loads((tmp_path / "o" / "images.json").read_text())["images"][0]
    assert (img["width"], img["height"]) == (12000, 9000)
    drawn = cv2.imread(str(tmp_path / "o" / "images" / "huge.png"))
    assert max(drawn.shape[:2]) == 4096  # annotated copy bounded in size
    detections = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert detections  # a score threshold of 0 keeps detections: the loop below checks something
    boxes = np.array([d["bbox"] for d in detections])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 12000 + 1e-3).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 9000 + 1e-3).all()
    assert (boxes[:, 0] + boxes[:, 2]).max() > 200  # in the file's pixels: the resized input is 128 wide


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_clear_error(checkpoint, messy_folder, tmp_path):
    r = run_infer("--checkpoint", checkpoint, "--input", messy_folder, "--output-dir", tmp_path / "o", "--device", "cuda")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr and "Traceback" not in r.stderr


def test_glob_single_file_and_class_filter(checkpoint, messy_folder, tmp_path):
    r = run_infer("--checkpoint", checkpoint, "--input", f"{messy_folder}/*/img.jpg", "--output-dir", tmp_path / "glob",
                  "--score-thresh", "0.0", "--workers", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    images = json.loads((tmp_path / "glob" / "images.json").read_text())["images"]
    assert sorted(i["file_name"] for i in images) == ["a/img.jpg", "b/img.jpg"]

    r = run_infer("--checkpoint", checkpoint, "--input", messy_folder / "gray.png", "--output-dir", tmp_path / "one",
                  "--score-thresh", "0.0", "--workers", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [i["file_name"] for i in json.loads((tmp_path / "one" / "images.json").read_text())["images"]] == ["gray.png"]
    every = json.loads((tmp_path / "one" / "detections.json").read_text())
    cats = {c["name"]: c["id"] for c in json.loads((tmp_path / "one" / "images.json").read_text())["categories"]}

    r = run_infer("--checkpoint", checkpoint, "--input", messy_folder / "gray.png", "--output-dir", tmp_path / "kept",
                  "--score-thresh", "0.0", "--workers", "0", "--classes", "ellipse", "triangle")
    assert r.returncode == 0, r.stderr[-2000:]
    kept = json.loads((tmp_path / "kept" / "detections.json").read_text())
    assert kept == [d for d in every if d["category_id"] in (cats["ellipse"], cats["triangle"])]
    assert len(kept) < len(every)  # the random model's rectangles were there, and were left out

    r = run_infer("--checkpoint", checkpoint, "--input", messy_folder, "--output-dir", tmp_path / "x", "--classes", "dog")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --classes: unknown class names ['dog']; the model knows "
                                "['rectangle', 'ellipse', 'triangle']")
    r = run_infer("--checkpoint", checkpoint, "--input", f"{messy_folder}/*.nothing", "--output-dir", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.strip() == f"error: no images match {messy_folder}/*.nothing"
