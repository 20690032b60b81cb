import math

import pytest
import torch
import torch.nn.functional as F

from detect.config import load_config
from detect.inference.runtime import run_model
from detect.models import build_model
from detect.models.roi_head import BoxPredictor, RoIHead, TwoFCHead, select_detections
from detect.ops import BalancedSampler, BoxCoder, Matcher, RoIPooler


def tiny_cfg(*extra):
    return load_config(None, ["model.backbone.name=tiny", "model.roi_head.fc_dim=64", "data.classes=[a,b]",
                              "model.rpn.anchor_sizes=[[16,32,64]]", *extra])


def make_head():
    return RoIHead(RoIPooler(2, [4]), TwoFCHead(1, 2, 8), BoxPredictor(8, 2), Matcher([0.5], [0, 1]),
                   BalancedSampler(4, 0.25), BoxCoder((10, 10, 5, 5)), add_gt_as_proposals=True)


def test_sample_rois_labels_and_targets_by_hand():
    head = make_head()
    props = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [50.0, 50.0, 60.0, 60.0]])]
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 20.0]]), "labels": torch.tensor([2])}
    torch.manual_seed(0)
    rois, labels, targets = head.sample_rois(props, [gt])
    # IoU with the ground truth: proposal 0 -> 100 / 200 = 0.5, proposal 1 -> 1, proposal 2 -> 0, the
    # added ground truth -> 1. Three positives, one negative; 25% of 4 -> 1 positive, then the only negative.
    assert labels.tolist().count(2) == 1 and labels.tolist().count(0) == 1
    assert rois[0][1].tolist() == [50.0, 50.0, 60.0, 60.0]  # the only background
    fg_roi = rois[0][0]
    expected = BoxCoder((10, 10, 5, 5)).encode(fg_roi[None], gt["boxes"])
    assert torch.allclose(targets[0], expected[0]) and targets[1].abs().sum() == 0


def test_roi_losses_by_hand():
    head = make_head()
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    deltas = torch.zeros(2, 12)
    deltas[1, 8:12] = torch.tensor([0.5, 0.0, 2.0, 0.0])  # class 2's deltas of RoI 1
    labels = torch.tensor([0, 2])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    losses = head.losses(logits, deltas, labels, targets)
    assert losses["loss_cls"].item() == pytest.approx(F.cross_entropy(logits, labels).item())
    # smooth L1 (beta 1): 0.5 * 0.5^2 + (2 - 0.5) = 1.625, summed over the foreground, / 2 sampled RoIs.
    assert losses["loss_box"].item() == pytest.approx(1.625 / 2)


def test_select_detections_with_box_voting_and_soft_nms():
    # two RoIs, one class: boxes at IoU 90 / 110 = 0.818 with scores 0.9 and 0.6
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]], [[1.0, 0.0, 11.0, 10.0]]])
    scores = torch.tensor([[0.9], [0.6]])
    hard = select_detections(boxes, scores, (20, 20), 0.05, 0.5, 100)
    assert hard["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]] and hard["labels"].tolist() == [1]
    voted = select_detections(boxes, scores, (20, 20), 0.05, 0.5, 100, vote_iou=0.8)
    torch.testing.assert_close(voted["boxes"], torch.tensor([[0.6 / 1.5, 0.0, 10.0 + 0.6 / 1.5, 10.0]]))
    torch.testing.assert_close(voted["scores"], torch.tensor([0.9]))  # voting moves boxes, not scores
    soft = select_detections(boxes, scores, (20, 20), 0.05, 0.5, 100, soft_nms_sigma=0.5)
    assert soft["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]]
    torch.testing.assert_close(soft["scores"], torch.tensor([0.9, 0.6 * math.exp(-(90 / 110) ** 2 / 0.5)]))
    # the config keys reach the head
    head = build_model(tiny_cfg("model.roi_head.box_vote_iou=0.8", "model.roi_head.soft_nms_sigma=0.5")).roi_head
    assert (head.box_vote_iou, head.soft_nms_sigma) == (0.8, 0.5)


def test_empty_target_image_trains_as_negative():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    images = [torch.rand(3, 64, 80)]
    losses = model(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert losses["loss_rpn_cls"].item() > 0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.rpn.head.objectness.weight.grad.abs().sum() > 0


def test_inference_contract():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.roi_head.score_thresh=0.0")).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80), torch.rand(3, 50, 40)])
    assert len(out) == 2
    for o, (h, w) in zip(out, [(64, 80), (50, 40)]):
        assert set(o) == {"boxes", "scores", "labels"}
        assert o["boxes"].dtype == torch.float32 and o["labels"].dtype == torch.int64
        assert 0 < len(o["boxes"]) <= 100
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all() and (o["boxes"] >= 0).all()
        assert set(o["labels"].tolist()) <= {1, 2}
        assert (o["scores"][:-1] >= o["scores"][1:]).all()  # batched NMS returns by decreasing score
    with pytest.raises(ValueError, match="needs targets"):
        model.train()([torch.rand(3, 32, 32)])


def test_cpu_inference_runs_a_batch_image_by_image(monkeypatch):
    # a batch pads the 50x40 image to 64x80 (its border features change): the model runs it as one
    # batch on every device, and the inference runtime runs each image alone on the CPU
    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.roi_head.score_thresh=0.0")).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 50, 40)]
    shapes = []
    original = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda x: shapes.append(tuple(x.shape)) or original(x))
    with torch.no_grad():
        model(images)
        assert shapes == [(2, 3, 64, 80)]
        batch = run_model(model, images)
        alone = [model([im])[0] for im in images]
    assert shapes[1:3] == [(1, 3, 64, 80), (1, 3, 64, 48)]  # padded to multiples of 16, each on its own
    for a, b in zip(batch, alone):
        assert len(a["boxes"]) > 0 and all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


@pytest.mark.parametrize("extra", [["model.backbone.fpn=true", "model.rpn.anchor_sizes=[]"],
                                   ["model.roi_head.pooler=align"],
                                   ["model.backbone.name=resnet18", "model.roi_head.box_head=res5",
                                    "model.roi_head.batch_size_per_image=8", "model.backbone.freeze_at=2"]])
def test_variants_build_and_run(extra):
    model = build_model(tiny_cfg(*extra)).train()
    losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]),
                                              "labels": torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_fpn_strides_choose_the_levels_by_stride():
    from detect.models.backbones import build_backbone

    assert build_backbone("mobilenet_v3_large", fpn=True).strides == [16, 32, 64]
    backbone = build_backbone("mobilenet_v3_large", fpn=True, fpn_strides=[8, 16, 32], fpn_channels=32)
    assert backbone.strides == [8, 16, 32, 64] and backbone.roi_strides == [8, 16, 32]
    maps = backbone(torch.rand(1, 3, 64, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(8, 12), (4, 6), (2, 3), (1, 2)]
    with pytest.raises(ValueError, match=r"fpn_strides \[4, 12\]: tiny has no stage of stride \[12\]"):
        build_backbone("tiny", fpn=True, fpn_strides=[4, 12])


def test_fpn_norm_gn_normalises_each_fpn_output_per_group():
    from detect.models.backbones import build_backbone

    torch.manual_seed(0)
    cfg = tiny_cfg("model.backbone.fpn=true", "model.backbone.fpn_channels=32", "model.backbone.fpn_norm=gn",
                   "model.rpn.anchor_sizes=[]")
    backbone = build_model(cfg).backbone
    convs = [block[0] for block in [*backbone.fpn.inner_blocks, *backbone.fpn.layer_blocks]]
    assert all(conv.bias is None for conv in convs)  # the norm's shift replaces the bias
    maps = backbone(torch.rand(2, 3, 64, 96))
    # every level but the max-pooled one leaves an output convolution's GroupNorm (weight 1, bias 0
    # at initialisation, 32 groups of one channel each here): zero mean, unit variance per image and group
    for m in maps[:-1]:
        flat = m.detach().flatten(2)
        torch.testing.assert_close(flat.mean(-1), torch.zeros(flat.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.var(-1, unbiased=False), torch.ones(flat.shape[:2]), atol=2e-3, rtol=0)
    plain = build_backbone("tiny", fpn=True, fpn_channels=32)
    assert all(block[0].bias is not None and len(block) == 1 for block in plain.fpn.layer_blocks)
    with pytest.raises(ValueError, match="model.backbone.fpn_norm must be none or gn, got 'bn'"):
        build_backbone("tiny", fpn=True, fpn_norm="bn")


def test_a_channels_last_backbone_gives_the_same_maps_and_gradients():
    from detect.models.backbones import build_backbone

    torch.manual_seed(0)
    plain = build_backbone("mobilenet_v3_large", fpn=True, norm="gn", fpn_strides=[8, 16, 32], fpn_channels=16,
                           width=0.5)
    fast = build_backbone("mobilenet_v3_large", fpn=True, norm="gn", fpn_strides=[8, 16, 32], fpn_channels=16,
                          width=0.5, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    seen = []
    for m in fast.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.grad_fn is not None and
                                                                      type(out.grad_fn).__name__))
    x = torch.rand(2, 3, 96, 128)
    maps_plain, maps_fast = plain(x), fast(x)
    assert seen and set(seen) == {"_GroupNormNHWCBackward"}  # every GroupNorm ran the channels-last kernel
    for a, b in zip(maps_fast, maps_plain):
        assert b.is_contiguous() and a.is_contiguous()  # the heads get NCHW maps either way
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    sum(m.square().sum() for m in maps_plain).backward()
    sum(m.square().sum() for m in maps_fast).backward()
    # gradients up to ~2e4 here; a bias's is a sum of such terms that can cancel to 1e-3, so the
    # float32 rounding of either side is measured against the largest gradient
    scale = max(p.grad.abs().max() for p in plain.parameters())
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert (q.grad - p.grad).abs().max() <= 1e-5 * scale, name


def test_width_multiplies_the_channels():
    from detect.models.backbones import build_backbone

    assert [s.channels for s in build_backbone("tiny", fpn=True, width=2.0).stages] == [64, 96, 128, 192]
    assert [s.channels for s in build_backbone("mobilenet_v3_large", width=0.5).stages][2:4] == [24, 56]
    with pytest.raises(ValueError, match="only tiny and mobilenet_v3_large take a positive width"):
        build_backbone("resnet18", width=2.0)


def test_build_needs_classes():
    with pytest.raises(ValueError, match="data.classes is empty"):
        build_model(load_config(None, ["model.backbone.name=tiny"]))


def test_chunked_inference_equals_one_pass():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.backbone.fpn=true", "model.rpn.anchor_sizes=[]",
                                 "model.roi_head.pooler=align")).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 50, 40)]
    with torch.no_grad():
        features = model.backbone(model.batcher(images)[0])
        rois = [torch.tensor([[0.0, 0.0, 30.0, 20.0], [10.0, 5.0, 60.0, 60.0], [2.0, 2.0, 9.0, 7.0]]),
                torch.tensor([[5.0, 5.0, 35.0, 45.0], [0.0, 0.0, 40.0, 50.0]])]
        whole = model.roi_head.predict(features, rois)
        h, w = model.roi_head.pooler.output_size
        per_roi = features[0].shape[1] * h * w * 4
        model.roi_head.predict_chunk_bytes = 2 * per_roi  # chunks of 2 RoIs
        chunked = model.roi_head.predict(features, rois)
    assert chunked[0].shape == (5, 3)
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-5, atol=1e-6)
