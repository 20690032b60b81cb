import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_frcnn_benchmark_measures_both_libraries(shapes_dir, tmp_path):
    overrides = [f"data.train.ann_file={shapes_dir / 'train.json'}", f"data.train.img_dir={shapes_dir / 'images'}",
                 f"data.test.ann_file={shapes_dir / 'test.json'}", f"data.test.img_dir={shapes_dir / 'images'}",
                 "data.classes=[rectangle,ellipse,triangle]", "model.backbone.name=mobilenet_v3_large",
                 "model.backbone.fpn=true", "input.min_size=96", "input.min_size_test=96", "input.max_size=128"]
    out = tmp_path / "frcnn.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "frcnn", "--config",
                        str(REPO / "configs/datasets/shapes.yaml"), "--num-images", "2", "--rounds", "3",
                        "--train-steps", "1", "--json", str(out), *overrides],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows["images"] == 2 and rows["rounds"] == 3 and rows["backbone"] == "mobilenet_v3_large"
    for name, proposals in (("detect_default", 300), ("torchvision_default", 1000), ("detect_1000", 1000),
                            ("torchvision_equal", 300)):
        row = rows[name]
        assert row["proposals"] == proposals
        assert row["total_s"] > row["backbone_s"] > 0
        assert abs(row["outside_backbone_s"] - (row["total_s"] - row["backbone_s"])) < 1e-12
    ratios = rows["ratios"]
    assert abs(ratios["outside_backbone_equal_300"] - rows["detect_default"]["outside_backbone_s"]
               / rows["torchvision_equal"]["outside_backbone_s"]) < 1e-12
    assert rows["train_step_s"]["detect"] > 0 and rows["train_step_s"]["torchvision"] > 0
    assert "ratios detect / torchvision" in r.stdout and "detect_1000" in r.stdout
