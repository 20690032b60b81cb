import json
import subprocess
import sys
from pathlib import Path

from detect.proposals.files import load_proposals

REPO = Path(__file__).resolve().parents[2]


def run_tool(script, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def shapes_overrides(shapes_dir):
    return [f"data.test.ann_file={shapes_dir / 'test.json'}", f"data.test.img_dir={shapes_dir / 'images'}"]


def test_compute_then_recall_read_back(shapes_dir, tmp_path):
    out = tmp_path / "test_fast.npz"  # the annotation file's name and the mode, in --output-dir
    common = ["--config", REPO / "configs/datasets/shapes.yaml", "--subset", "test"]
    r = run_tool("proposals.py", "compute", *common, "--output-dir", tmp_path, "--mode", "fast", "--workers", "2",
                 *shapes_overrides(shapes_dir))
    assert r.returncode == 0, r.stderr
    assert "4 images, 4 computed" in r.stdout
    props = load_proposals(out)
    assert len(props) == 4 and props.meta["settings"]["mode"] == "fast"
    gt = json.loads((shapes_dir / "test.json").read_text())
    sizes = {Path(img["file_name"]).name: (img["width"], img["height"]) for img in gt["images"]}
    for i, key in enumerate(props.keys):
        boxes = props.boxes[props.offsets[i]:props.offsets[i + 1]]
        w, h = sizes[str(key)]
        assert [0, 0, w, h] in boxes.tolist()  # the whole image is always one region

    r = run_tool("proposals.py", "recall", *common, "--proposals", out, "--json", tmp_path / "r.json",
                 *shapes_overrides(shapes_dir))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_images"] == 4 and result["num_gt"] == len(gt["annotations"])
    assert result["counts"] == ["100", "300", "1000", "2000", "all"]
    # flat synthetic shapes: selective search finds them
    assert result["overall"]["all"]["recall@0.5"] >= 0.8
    assert "R@0.5" in r.stdout

    # the file a config names (data.test.proposals), asked for with other settings
    r = run_tool("proposals.py", "compute", *common, "--mode", "single", *shapes_overrides(shapes_dir),
                 f"data.test.proposals={out}")
    assert r.returncode == 2 and "other settings" in r.stderr and "--overwrite" in r.stderr


def test_benchmark_proposals_section_without_opencv(shapes_dir, tmp_path):
    r = run_tool("benchmark.py", "proposals", "--config", REPO / "configs/datasets/shapes.yaml", "--num-images", "2",
                 "--modes", "single", "--json", tmp_path / "b.json", *shapes_overrides(shapes_dir))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [row["impl"] for row in rows] == ["detect"] and rows[0]["seconds_per_image"] > 0
    assert rows[0]["recall"]["overall"]["all"]["recall@0.5"] > 0.5
    assert "not available" in r.stdout
