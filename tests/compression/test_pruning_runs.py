"""Pruning a trained checkpoint (tools/compress.py prune / report) on a tiny detector: what is
written, that every tool loads it, that it computes what the masked model computes, and refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detect.config import load_config
from detect.data.image_io import read_image
from detect.checkpoint.storage import save_checkpoint
from detect.inference.loading import load_model
from detect.compression.svd_checkpoint import compress_checkpoint
from detect.compression.sparsity_report import compression_report
from detect.evaluation.metrics import evaluate
from detect.inference.predictor import Predictor
from detect.compression.pruning_runs import PruneSpec, prune_checkpoint, prune_model
from detect.models import build_model
from detect.models.pruning import UnitMasks, lowest, unit_layers, weight_norm_scores

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tiny_frcnn, shapes_dir):
    return {"checkpoint": tiny_frcnn, "data": shapes_dir}


def _image(data: Path) -> torch.Tensor:
    path = sorted((data / "images" / "test").iterdir())[0]
    return torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_one_shot_unit_pruning_gives_the_masked_detectors_detections(trained):
    model, cfg = load_model(trained["checkpoint"])
    image = _image(trained["data"])
    units = unit_layers(model)
    with UnitMasks(units) as masks, torch.no_grad():
        for alias in ("fc6", "fc7"):
            masks.masks[alias][lowest(weight_norm_scores(units[alias], 2), 32)] = 0.0
        masked = model([image])[0]
    prune_model(model, cfg, PruneSpec("unit", 0.5))
    assert model.roi_head.box_head.fc6.out_features == 32 and model.roi_head.predictor.cls_score.in_features == 32
    assert list(cfg.model.roi_head.fc_units) == [32, 32]
    with torch.no_grad():
        pruned = model([image])[0]
    assert len(masked["scores"]) > 0
    torch.testing.assert_close(pruned["boxes"], masked["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(pruned["scores"], masked["scores"], atol=1e-5, rtol=1e-4)
    assert torch.equal(pruned["labels"], masked["labels"])


def test_pruned_checkpoint_round_trips_through_eval_and_infer(trained, tmp_path):
    out = tmp_path / "unit" / "model_pruned.pth"
    r = _run("tools/compress.py", "prune", "--checkpoint", trained["checkpoint"], "--method", "unit", "--sparsity", "0.5",
             "--output-dir", out.parent, "--num-rois", "50")
    assert r.returncode == 0, r.stderr
    assert "fc6: 32 of 64 units kept" in r.stdout and "fc7: 32 of 64 units kept" in r.stdout
    model, cfg = load_model(out)
    assert model.roi_head.box_head.fc7.weight.shape == (32, 32)
    expected = evaluate(model, cfg, torch.device("cpu"), output_dir=None, progress=False)["coco"]

    r = _run("tools/eval.py", "--checkpoint", out, "--output-dir", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    coco = json.loads((tmp_path / "eval" / "metrics.json").read_text())["coco"]
    assert coco["AP"] == pytest.approx(expected["AP"], abs=1e-9) and coco["AP50"] == pytest.approx(expected["AP50"], abs=1e-9)

    r = _run("tools/infer.py", "--checkpoint", out, "--input", trained["data"] / "images" / "test",
             "--output-dir", tmp_path / "infer", "--workers", "0", "--no-save-images")
    assert r.returncode == 0, r.stderr
    dets = json.loads((tmp_path / "infer" / "detections.json").read_text())
    listed = json.loads((tmp_path / "infer" / "images.json").read_text())["images"]
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    image_id = next(i["id"] for i in listed if Path(i["file_name"]).name == path.name)
    theirs = sorted(d["score"] for d in dets if d["image_id"] == image_id)
    ours = Predictor.from_checkpoint(out)(path)  # the pruned model in this process, same path
    assert len(theirs) == len(ours["scores"]) > 0
    assert theirs == pytest.approx(sorted(float(s) for s in ours["scores"]), abs=1e-5)


def test_weight_pruning_leaves_exactly_the_share_zero_and_a_smaller_file(trained, tmp_path):
    out = tmp_path / "weight.pth"
    info = prune_checkpoint(trained["checkpoint"], PruneSpec("weight", 0.75), out)["info"]
    fc6 = info["layers"]["roi_head.box_head.fc6"]
    assert fc6["zero"] == round(0.75 * fc6["weights"]) == round(0.75 * 64 * 64 * 7 * 7)
    raw = torch.load(out, weights_only=True)
    assert "roi_head.box_head.fc6.weight" in raw["sparse"] and "roi_head.box_head.fc6.weight" not in raw["model"]
    model, _ = load_model(out)
    w = model.roi_head.box_head.fc6.weight
    assert int((w == 0).sum()) == fc6["zero"]
    original, _ = load_model(trained["checkpoint"])
    kept = w != 0
    assert torch.equal(w[kept], original.roi_head.box_head.fc6.weight[kept])  # the survivors are untouched
    # 4 bytes per weight dense; a bit plus 4 bytes per survivor packed
    saved = trained["checkpoint"].stat().st_size - out.stat().st_size
    assert saved > 0.9 * (4 * fc6["weights"] - fc6["weights"] / 8 - 4 * (fc6["weights"] - fc6["zero"]))
    with pytest.raises(ValueError, match=r"already 75.0% zero: ask for a sparsity above it"):
        prune_checkpoint(out, PruneSpec("weight", 0.5), tmp_path / "again.pth")


def test_fisher_pruning_while_fine_tuning_and_composed_twice(trained, tmp_path):
    first = prune_checkpoint(trained["checkpoint"], PruneSpec("fisher", 0.5, finetune_minutes=0.05), tmp_path / "f1.pth",
                             ["data.num_workers=0"])
    assert first["info"]["finetune"]["iterations"] > 0
    assert first["info"]["layers"]["fc6"] == {"units": 64, "kept": 32}
    second = prune_checkpoint(tmp_path / "f1.pth", PruneSpec("unit", 0.5), tmp_path / "f2.pth")
    assert second["info"]["layers"]["fc7"] == {"units": 32, "kept": 16}
    state = torch.load(tmp_path / "f2.pth", weights_only=True)
    assert [p["method"] for p in state["pruning"]] == ["fisher", "unit"]
    model, cfg = load_model(tmp_path / "f2.pth")
    assert list(cfg.model.roi_head.fc_units) == [16, 16] and model.roi_head.box_head.fc6.out_features == 16


def test_rcnn_crop_network_fc_is_pruned_with_its_svms(tmp_path):
    cfg = load_config("configs/rcnn/shapes.yaml", ["data.classes=[a,b]", "model.rcnn.fc_dim=16"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.svm_weight.normal_()
        model.bbox_weight.normal_()
    prune_model(model, cfg, PruneSpec("unit", 0.25))
    assert model.fc.out_features == 12 and model.svm_weight.shape == (2, 12) and model.bbox_weight.shape == (2, 13, 4)
    assert cfg.model.rcnn.fc_dim == 12
    save_checkpoint(tmp_path / "r.pth", {"model": model.state_dict(), "config": cfg.to_dict(), "class_names": ["a", "b"]})
    loaded, _ = load_model(tmp_path / "r.pth")
    assert torch.equal(loaded.svm_weight, model.svm_weight)


def test_bad_requests_are_refused_with_what_to_do(trained, tmp_path):
    ck = trained["checkpoint"]
    r = _run("tools/compress.py", "prune", "--checkpoint", ck, "--method", "unit", "--sparsity", "1.5", "--output-dir",
             tmp_path / "x")
    assert r.returncode != 0
    assert "sparsity must be between 0 and 1 (exclusive): the share removed, got 1.5" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x" / "model_pruned.pth").exists()
    with pytest.raises(ValueError, match=r"unit pruning removes units of fc6, fc7; not of 'fc8'"):
        prune_checkpoint(ck, PruneSpec("unit", 0.5, layers=["fc8"]), tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"no prunable layer 'head.fc9' .* prunable layers are fc6, fc7"):
        prune_checkpoint(ck, PruneSpec("weight", 0.5, layers=["head.fc9"]), tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"sparsity 0.999 removes every unit of fc6 \(64\): keep at least one"):
        prune_checkpoint(ck, PruneSpec("fisher", 0.999), tmp_path / "x.pth")
    compress_checkpoint(ck, [16, 16], tmp_path / "svd.pth")
    with pytest.raises(ValueError, match=r"no fully connected layer to prune: its box head is factorised by truncated "
                                         r"SVD \(svd_ranks \[16, 16\]\): prune before compressing"):
        prune_checkpoint(tmp_path / "svd.pth", PruneSpec("unit", 0.5), tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_compression_report_compares_the_four_methods(trained, tmp_path):
    result = compression_report(trained["checkpoint"], tmp_path / "rep", sparsities=[0.5], num_rois=50)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["none", "svd", "weight", "unit", "fisher"]
    assert rows["svd"]["ranks"] == [31, 16]  # int(0.5 * 64 * 3136 / (64 + 3136)), int(0.5 * 64 * 64 / 128)
    fc = 3136 * 64 + 64 * 64
    assert rows["unit"]["fc_removed"] == pytest.approx(1 - (3136 * 32 + 32 * 32) / fc)
    assert rows["weight"]["fc_removed"] == pytest.approx(0.5, abs=1e-4)
    assert rows["unit"]["bytes"] < rows["none"]["bytes"] and rows["weight"]["bytes"] < rows["none"]["bytes"]
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [r["method"] for r in saved["rows"]] == list(rows)
    for name in ("report.md", "ap_vs_sparsity.png", "latency_vs_sparsity.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "| unit | 0.5 | 0 |" in (tmp_path / "rep" / "report.md").read_text()
