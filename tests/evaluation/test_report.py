"""tools/eval.py on any COCO results file, its bad input, and report.html in a real browser."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.evaluation.test_error_analysis import GT, RESULTS

REPO = Path(__file__).resolve().parents[2]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    for image in GT["images"]:
        img = rng.integers(0, 255, (image["height"], image["width"], 3), dtype=np.uint8)
        (tmp_path / "images").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "images" / image["file_name"]), img)
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "dets.json").write_text(json.dumps(RESULTS))
    return tmp_path


def _eval(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env={**os.environ, "CI": "true"})


def test_any_results_file_gets_the_metrics_errors_and_report(files):
    r = _eval("--detections", files / "dets.json", "--ann-file", files / "gt.json", "--img-dir", files / "images",
              "--output-dir", files / "report", "--report")
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((files / "report" / "metrics.json").read_text())
    assert metrics["coco"]["AP50"] == pytest.approx((25.5 / 101 + 34 / 101) / 2, abs=1e-6)  # as in test_errors
    assert metrics["errors"]["counts"] == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "missed": 1}
    assert metrics["errors"]["dAP"]["bkg"] == pytest.approx((51 / 101 - 25.5 / 101) / 2, abs=1e-6)
    assert metrics["confusion"]["matrix"] == [[1, 0, 1], [1, 1, 1], [3, 0, 0]]
    page = (files / "report" / "report.html").read_text()
    assert "classification" in page and "BloodImage" not in page and page.count("<figure>") >= 5
    assert "errors (AP50 points gained if fixed): cls 16.3, loc 9.9" in r.stdout


def test_report_renders_in_a_real_browser(files):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed here (.ci/run installs Debian's chromium when it can)")
    r = _eval("--detections", files / "dets.json", "--ann-file", files / "gt.json", "--img-dir", files / "images",
              "--output-dir", files / "report", "--report")
    assert r.returncode == 0, r.stderr[-2000:]
    page = (files / "report" / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    shot = subprocess.run([browser, *flags, "--window-size=1280,3000", f"--screenshot={files / 'shot.png'}", page],
                          capture_output=True, text=True, timeout=120)
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=3000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in (shot.stderr + dom.stderr).splitlines() if "CONSOLE" in line]
    assert console == []  # the page logs nothing, errors included
    body = dom.stdout[dom.stdout.index("<body"):].split(">", 1)[0]
    # every picture decoded: 3 charts, PR curves, and the gallery images
    assert 'data-broken="0"' in body
    assert int(body.split('data-images="')[1].split('"')[0]) == 3 + page_figures(files)
    image = cv2.imread(str(files / "shot.png"))
    assert image is not None and image.shape[:2] == (3000, 1280) and image.std() > 10  # not a blank page


def page_figures(files) -> int:
    return (files / "report" / "report.html").read_text().count("<figure>")


def _write(path: Path, results) -> Path:
    path.write_text(json.dumps(results, allow_nan=True))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d[0].update(image_id=99), r"1 image id\(s\) not in the ground truth, e.g. \[99\]"),
    (lambda d: d[0].update(category_id=7), r"category id\(s\) \[7\] are not in the ground truth, whose categories "
                                           r"are \{1: 'one', 2: 'two'\}"),
    (lambda d: d[1].update(bbox=[10, 10, -5, 40]), r"1 detection\(s\) with a zero, negative or non-finite width or "
                                                   r"height, e\.g\. detection 1: bbox \[10, 10, -5, 40\]"),
    (lambda d: d[2].update(score=math.nan), r"detection 2: score nan is not a finite number"),
    (lambda d: d[3].pop("score"), r"detection 3 needs the keys"),
])
def test_a_bad_results_file_is_one_line_naming_it(files, change, message):
    import re

    results = json.loads(json.dumps(RESULTS))
    change(results)
    path = _write(files / "bad.json", results)
    r = _eval("--detections", path, "--ann-file", files / "gt.json")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: ") and re.search(message, last), last


def test_boxes_written_as_corners_are_recognised(files):
    corners = [dict(d, bbox=[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]])
               for d in RESULTS]
    r = _eval("--detections", _write(files / "xyxy.json", corners), "--ann-file", files / "gt.json")
    assert r.returncode == 2
    assert "look like [x1, y1, x2, y2], not COCO's [x, y, width, height]" in r.stderr


def test_an_empty_results_file_is_everything_missed(files):
    r = _eval("--detections", _write(files / "none.json", []), "--ann-file", files / "gt.json", "--report")
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((files / "eval_none" / "metrics.json").read_text())  # beside the results file
    assert (files / "eval_none" / "report.html").is_file()
    assert metrics["coco"]["AP50"] == 0.0
    assert metrics["errors"]["counts"]["missed"] == 5


def test_a_ground_truth_without_a_category_the_results_use(files):
    gt = json.loads(json.dumps(GT))
    gt["categories"] = gt["categories"][:1]
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] == 1]
    (files / "gt1.json").write_text(json.dumps(gt))
    r = _eval("--detections", files / "dets.json", "--ann-file", files / "gt1.json")
    assert r.returncode == 2 and "category id(s) [2] are not in the ground truth" in r.stderr
