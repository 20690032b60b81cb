import json
import re
import subprocess
import sys
from pathlib import Path

from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parents[2]


def test_quickstart_trains_evaluates_and_annotates_a_folder(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "quickstart.py"), "--iterations", "12", "--num-train", "12",
                        "--num-test", "4", "--data", str(tmp_path / "shapes"), "--output-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    # the table printed at step 3 is the one metrics.json holds (to its three decimals)
    coco = metrics["coco"]
    row = r" +".join(re.escape(f"{coco[k]:.3f}") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    assert re.search(rf"^ *{row} ", r.stdout, re.M), (row, r.stdout[-3000:])
    assert coco["AP50"] >= coco["AP"] >= 0 and metrics["num_images"] == 4
    assert metrics["checkpoint"] == str(run / "model_final.pth")
    assert (run / "model_final.pth").is_file() and (run / "pr_curves.png").is_file()
    ran = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()
           if '"loss"' in line]
    assert ran[-1] == 12 and "for 12 iterations" in r.stdout
    written = sorted(p.name for p in (run / "infer" / "images").iterdir())
    tests = sorted(p.name for p in (tmp_path / "shapes" / "images" / "test").iterdir())
    assert written == tests and len(tests) == 4
    gt = COCO(str(run / "infer" / "images.json"))
    assert len(gt.getImgIds()) == 4
    detections = json.loads((run / "infer" / "detections.json").read_text())
    assert all(d["score"] >= 0.5 for d in detections)
    # the printed summary counts what detections.json holds, per class (after 12 iterations the
    # count may be zero: the numbers must agree either way)
    summary = r.stdout[r.stdout.index("[4/4] inference"):]
    assert f"4 images with results (4 processed now, 0 already done), {len(detections)} detections" in summary
    names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    for cat_id, name in names.items():
        count = sum(d["category_id"] == cat_id for d in detections)
        assert re.search(rf"^  {name} +{count}$", summary, re.M), (name, count, summary)
    if detections:
        gt.loadRes(str(run / "infer" / "detections.json"))  # valid COCO results for these images
    # the package says nothing against its own configuration
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
