"""The inference runtime applies the CPU speed choices from outside the models."""
import torch
from torch import nn

from detect.config import load_config
from detect.inference.runtime import ROI_CHUNK_BYTES, prepare_for_inference, run_model
from detect.models import build_model
from detect.ops.conv import Conv3x3


def _cfg(*extra):
    return load_config(None, ["model.backbone.name=tiny", "model.backbone.fpn=true", "model.rpn.anchor_sizes=[]",
                              "data.classes=[a,b]", "model.roi_head.score_thresh=0.0", *extra])


def _plain_3x3(model):
    return [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.groups == 1 and m.dilation == (1, 1) and m.padding == (1, 1)]


def test_a_built_model_has_no_speed_policy():
    model = build_model(_cfg())
    assert not any(isinstance(m, Conv3x3) for m in model.modules())
    assert model.roi_head.predict_chunk_bytes == 0
    assert len(_plain_3x3(model)) > 0


def test_prepare_on_the_cpu_swaps_the_convolutions_and_chunks_the_rois():
    model = build_model(_cfg())
    eligible = len(_plain_3x3(model))
    assert prepare_for_inference(model, torch.device("cpu")) is model
    assert sum(type(m) is Conv3x3 for m in model.modules()) == eligible  # the RPN head's conv among them
    assert type(model.rpn.head.conv) is Conv3x3
    assert model.roi_head.predict_chunk_bytes == ROI_CHUNK_BYTES
    prepare_for_inference(model)  # idempotent
    assert sum(type(m) is Conv3x3 for m in model.modules()) == eligible


def test_prepare_elsewhere_leaves_the_model_as_built():
    model = build_model(_cfg())
    prepare_for_inference(model, torch.device("cuda"))  # only inspected, nothing runs there
    assert not any(isinstance(m, Conv3x3) for m in model.modules())
    assert model.roi_head.predict_chunk_bytes == 0


def test_prepared_model_gives_the_same_detections_and_trains_the_same():
    torch.manual_seed(0)
    plain = build_model(_cfg()).eval()
    prepared = prepare_for_inference(build_model(_cfg()).eval())
    prepared.load_state_dict(plain.state_dict())
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    with torch.no_grad():
        a = [plain([im])[0] for im in images]
        b = run_model(prepared, images)
    for x, y in zip(a, b):  # the tiny model's maps are under NNPACK's size floor: exactly equal
        assert len(x["boxes"]) > 0 and all(torch.equal(x[k], y[k]) for k in ("boxes", "scores", "labels"))
    target = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([1])}]
    torch.manual_seed(1)
    la = plain.train()([images[0]], target)
    torch.manual_seed(1)
    lb = prepared.train()([images[0]], target)
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_run_model_passes_each_image_its_proposals():
    calls = []

    class Echo(nn.Module):
        def forward(self, images, proposals=None):
            calls.append((len(images), None if proposals is None else len(proposals)))
            return [{"n": im.shape[1], "p": None if proposals is None else p} for im, p in
                    zip(images, proposals or [None] * len(images))]

    out = run_model(Echo(), [torch.rand(3, 4, 4), torch.rand(3, 6, 6)], [torch.zeros(1, 4), torch.ones(2, 4)])
    assert calls == [(1, 1), (1, 1)]
    assert [o["n"] for o in out] == [4, 6] and out[1]["p"].shape == (2, 4)
