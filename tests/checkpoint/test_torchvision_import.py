"""torchvision's Faster R-CNN detectors imported exactly: the same detections, a config that is the
importer's own, every command on the result, and one clear line for the weights it cannot take."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.ops.misc import FrozenBatchNorm2d

from detect.checkpoint.torchvision_import import (ARCHITECTURES, _COMMON, _merged, architecture_config,
                                                  import_torchvision, torchvision_model)
from detect.config import load_config
from detect.errors import CheckpointError, ConfigError
from detect.inference.loading import load_model

REPO = Path(__file__).resolve().parents[2]


def _frozen(module: torch.nn.Module) -> None:
    """BatchNorm -> FrozenBatchNorm2d with the same statistics: torchvision builds its detectors so
    around pretrained weights (a model built without weights gets plain BatchNorm)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _frozen(child)


def random_torchvision_detector(arch: str, seed: int = 0, head_std: float = 0.05) -> torch.nn.Module:
    """torchvision's ``arch`` with seeded random weights that give varied detections: BatchNorm
    statistics of random images (a random network's activations otherwise grow layer by layer), the
    heads' weights spread, 3 classes; tested on images already at its 160-px test size."""
    torch.manual_seed(seed)
    model = torchvision_model(arch, 4)
    model.transform.min_size, model.transform.max_size = (160,), 320
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
                m.reset_running_stats()
        model.backbone.train()
        for _ in range(2):
            model.backbone(model.transform([torch.rand(3, 160, 160) for _ in range(2)])[0].tensors)
        for p in model.roi_heads.parameters():
            p.normal_(0, head_std)
        for p in model.rpn.head.parameters():
            p.normal_(0, 0.01 if "resnet" in arch else 0.05)
        _frozen(model.backbone)
    return model.eval()


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn"])
def test_imported_model_gives_torchvisions_detections(arch, tmp_path):
    tv = random_torchvision_detector(arch)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    result = import_torchvision(arch, str(tmp_path / "tv.pth"), tmp_path / "model.pth")
    assert result["classes"] == ["class_1", "class_2", "class_3"]
    model, cfg = load_model(tmp_path / "model.pth")
    # at its test size, so torchvision's own resize leaves them as they are (one image is 224 px
    # wide: its max-pooled FPN level has 4 cells, whose anchors torchvision spaces 56 px apart)
    images = [torch.rand(3, 160, 208, generator=torch.Generator().manual_seed(1)),
              torch.rand(3, 224, 160, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        theirs, ours = tv(images), model(images)
    total = 0
    for t, o in zip(theirs, ours):
        assert len(t["boxes"]) == len(o["boxes"])
        total += len(o["boxes"])
        torch.testing.assert_close(o["boxes"], t["boxes"], atol=0.01, rtol=0)
        torch.testing.assert_close(o["scores"], t["scores"], atol=1e-4, rtol=0)
        assert torch.equal(o["labels"], t["labels"])
    assert total >= 10  # enough detections for the comparison to mean something


def test_the_shipped_configs_are_the_importers_own():
    for arch, extra in ARCHITECTURES.items():
        shipped = load_config(REPO / "configs" / "faster_rcnn" / f"torchvision_{arch}.yaml", ["data.classes=[a]"])
        assert shipped == architecture_config(arch, ["a"]), arch
    assert yaml.safe_load((REPO / "configs/faster_rcnn/torchvision_fasterrcnn_resnet50_fpn.yaml").read_text()) == \
        _merged(_COMMON, ARCHITECTURES["fasterrcnn_resnet50_fpn"])


def test_weights_it_cannot_take_are_one_line_each(tmp_path):
    with pytest.raises(ConfigError, match="fasterrcnn_resnet50_fpn, fasterrcnn_mobilenet_v3_large_fpn"):
        import_torchvision("retinanet_resnet50_fpn", "x.pth", tmp_path / "m.pth")
    tv = torchvision_model("fasterrcnn_mobilenet_v3_large_fpn", 3)
    torch.save(tv.state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(CheckpointError, match=r"not the weights of torchvision's fasterrcnn_resnet50_fpn"):
        import_torchvision("fasterrcnn_resnet50_fpn", str(tmp_path / "mobilenet.pth"), tmp_path / "m.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"not a torchvision Faster R-CNN state dict .* it starts conv.weight"):
        import_torchvision("fasterrcnn_resnet50_fpn", str(tmp_path / "other.pth"), tmp_path / "m.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "mobilenet.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable state dict"):
        import_torchvision("fasterrcnn_mobilenet_v3_large_fpn", str(tmp_path / "cut.pth"), tmp_path / "m.pth")
    with pytest.raises(ConfigError, match="--classes names 3 classes; the weights have 2"):
        import_torchvision("fasterrcnn_mobilenet_v3_large_fpn", str(tmp_path / "mobilenet.pth"), tmp_path / "m.pth",
                           ["a", "b", "c"])
    assert not (tmp_path / "m.pth").exists()


def test_the_command_imports_and_the_result_runs_in_infer(tmp_path):
    tv = random_torchvision_detector("fasterrcnn_mobilenet_v3_large_fpn")
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    env = {**os.environ, "CI": "true"}
    r = subprocess.run([sys.executable, "-m", "detect", "import-weights", "--from", "torchvision", "--arch",
                        "fasterrcnn_mobilenet_v3_large_fpn", "--weights", str(tmp_path / "tv.pth"), "--output-dir",
                        str(tmp_path / "imported"), "--classes", "cat", "dog", "cow"],
                       capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 classes (cat, dog, cow)" in r.stdout
    images = tmp_path / "images"
    images.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 255, (160, 200, 3), dtype=np.uint8))
    r = subprocess.run([sys.executable, "-m", "detect", "infer", "--checkpoint", str(tmp_path / "imported" / "model.pth"),
                        "--input", str(images), "--output-dir", str(tmp_path / "out"), "--workers", "0",
                        "input.min_size_test=160"], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {c["name"] for c in json.loads((tmp_path / "out" / "images.json").read_text())["categories"]}
    assert names == {"cat", "dog", "cow"}


def test_an_imported_model_exports_and_onnx_runtime_gives_its_detections(tmp_path):
    pytest.importorskip("onnxruntime")
    from detect.export.onnx_export import export_onnx

    # box-head weights of 0.01: the logits of 0.05 ones swing on ONNX Runtime's rounding (scores off by 4e-4)
    tv = random_torchvision_detector("fasterrcnn_mobilenet_v3_large_fpn", seed=3, head_std=0.01)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    import_torchvision("fasterrcnn_mobilenet_v3_large_fpn", str(tmp_path / "tv.pth"), tmp_path / "model.pth")
    model, cfg = load_model(tmp_path / "model.pth", overrides=["input.min_size_test=160", "input.max_size=320"])
    export_onnx(model, cfg, tmp_path / "model.onnx")
    onnx_model, _ = load_model(tmp_path / "model.onnx")
    image = torch.rand(3, 160, 224, generator=torch.Generator().manual_seed(4))  # a side not a multiple of 64
    with torch.no_grad():
        ref, got = model([image])[0], onnx_model([image])[0]
    assert len(ref["scores"]) > 0 and len(got["scores"]) == len(ref["scores"])
    # boxes to 0.01 px plus 1e-3 of their coordinate (torchvision's own ONNX tests allow 1e-3): the
    # two runtimes' float32 rounding grows with the coordinate through the exp() of the box decoding,
    # and on one CPU a corner at x = 83 came out 0.011 px apart
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=0.01, rtol=1e-3)
    torch.testing.assert_close(got["scores"], ref["scores"], atol=1e-4, rtol=0)
    assert torch.equal(got["labels"], ref["labels"])
