"""Fast R-CNN: RoI sampling as in the paper, truncated SVD, proposals through the data path,
a tiny model that overfits, and a checkpoint that runs through tools/infer.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detect.config import load_config
from detect.data.image_io import read_image
from detect.data.transforms import DetectionTransform
from detect.inference.loading import load_model
from detect.inference.runtime import run_model
from detect.training.trainer import train
from detect.models import build_model
from detect.models.fast_rcnn import FastRCNN
from detect.models.roi_head import TwoFCHead
from detect.models.svd import compress_box_head, truncate
from detect.ops import box_iou, flip_boxes
from detect.errors import ProposalError
from detect.proposals.files import image_keys, write_proposals

REPO = Path(__file__).resolve().parents[2]


def fast_config(data, *extra):
    train_json = f"{data}/train.json"
    return load_config("configs/fast_rcnn/shapes.yaml", [
        f"data.train.ann_file={train_json}", f"data.train.img_dir={data}/images",
        f"data.test.ann_file={train_json}", f"data.test.img_dir={data}/images",
        f"data.train.proposals={data}/props.npz", f"data.test.proposals={data}/props.npz",
        "input.min_size=192", "input.min_size_test=192", "input.max_size=256", "input.flip_prob=0.0",
        "model.roi_head.fc_dim=128", "train.batch_size=2", "train.warmup_iters=20", "train.log_period=10",
        "train.checkpoint_period=0", "data.num_workers=0", "device=cpu", *extra])


def test_sampler_counts_and_iou_ranges_follow_the_paper(shapes_with_proposals):
    cfg = fast_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]")
    model = build_model(cfg)
    head = model.roi_head
    gt = torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    # proposals at chosen IoUs with the ground truth: shift a copy of it sideways
    props = []
    for iou in np.linspace(0.0, 0.95, 400):
        # IoU of two 100x100 boxes offset by d: (100-d)/(100+d) -> d = 100 (1-iou)/(1+iou)
        d = 100 * (1 - iou) / (1 + iou)
        props.append([100 + d, 100, 200 + d, 200])
    props = torch.tensor(props, dtype=torch.float32)
    torch.manual_seed(0)
    rois, labels, _ = head.sample_rois([props], [{"boxes": gt, "labels": torch.tensor([2])}])
    iou = box_iou(rois[0], gt)[:, 0]
    assert len(rois[0]) == 64  # R / N = 128 / 2
    fg = labels > 0
    assert fg.sum() == 16  # 25% foreground
    assert torch.all(iou[fg] >= 0.5 - 1e-5) and torch.all(labels[fg] == 2)
    assert torch.all(iou[~fg] >= 0.1 - 1e-5) and torch.all(iou[~fg] < 0.5)


def test_truncated_svd_full_rank_reproduces_and_low_rank_approximates():
    torch.manual_seed(0)
    head = TwoFCHead(8, 3, 32)
    x = torch.randn(5, 8, 3, 3)
    expected = head(x)
    full = compress_box_head(TwoFCHead(8, 3, 32), [0, 0])
    full.load_state_dict(head.state_dict())
    compressed = compress_box_head(full, [32, 32])
    assert isinstance(compressed.fc6, torch.nn.Sequential)
    torch.testing.assert_close(compressed(x), expected, atol=1e-5, rtol=1e-5)
    layer = torch.nn.Linear(72, 32)
    low = truncate(layer, 4)
    assert low[0].weight.shape == (4, 72) and low[1].weight.shape == (32, 4)
    # the rank-4 product is the best rank-4 approximation: its error is the tail of the spectrum
    s = torch.linalg.svdvals(layer.weight.detach().double())
    err = torch.linalg.matrix_norm((low[1].weight @ low[0].weight - layer.weight).double())
    assert err.item() == pytest.approx(s[4:].square().sum().sqrt().item(), rel=1e-4)


def test_proposals_are_resized_and_flipped_with_the_boxes():
    transform = DetectionTransform(min_size=50, max_size=1000, train=True, flip_prob=1.0)
    image = np.zeros((100, 200, 3), np.uint8)
    target = {"boxes": np.array([[10, 20, 30, 40]], np.float32), "labels": np.array([1]),
              "ignore": np.array([False]), "proposals": np.array([[0, 0, 200, 100], [20, 10, 60, 30]], np.float32)}
    out_image, out = transform(image, target)
    assert out_image.shape[:2] == (50, 100)
    np.testing.assert_allclose(out["boxes"], [[85, 10, 95, 20]], atol=1e-4)
    np.testing.assert_allclose(out["proposals"], [[0, 0, 100, 50], [70, 5, 90, 15]], atol=1e-4)
    assert out["labels"].tolist() == [1]


def test_missing_proposals_fail_at_start_naming_image_and_command(shapes_with_proposals, tmp_path):
    data = shapes_with_proposals
    ann = json.loads((data / "train.json").read_text())
    paths = [data / "images" / img["file_name"] for img in ann["images"]]
    # a file that lacks the last image
    write_proposals(tmp_path / "partial.npz", image_keys(paths)[:-1], [1, 2, 3], [np.zeros((1, 4))] * 3, {})
    cfg = fast_config(data, f"data.train.proposals={tmp_path / 'partial.npz'}")
    with pytest.raises(ProposalError, match=rf"{paths[-1].name}: no proposals.*tools/proposals.py compute"):
        train(cfg, tmp_path / "run", progress=False)
    cfg = fast_config(data, "data.train.proposals=null")
    with pytest.raises(ProposalError, match="data.train.proposals is not set.*tools/proposals.py compute"):
        train(cfg, tmp_path / "run2", progress=False)


def test_tiny_fast_rcnn_overfits_and_round_trips_through_infer(shapes_with_proposals, tmp_path):
    data = shapes_with_proposals
    cfg = fast_config(data, "train.max_iter=300", "train.lr=0.03", "train.steps=[0.8]")
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics["coco"]["AP50"] >= 0.9, metrics["coco"]
    assert metrics["timing"]["proposal_seconds_per_image"] == 0.0  # proposals came from the file

    # the checkpoint alone runs tools/infer.py (selective search on the fly, no proposals file)
    ckpt = tmp_path / "run" / "model_final.pth"
    model, _ = load_model(ckpt)
    assert isinstance(model, FastRCNN)
    images = tmp_path / "in"
    images.mkdir()
    ann = json.loads((data / "train.json").read_text())
    for img in ann["images"][:2]:
        (images / Path(img["file_name"]).name).write_bytes((data / "images" / img["file_name"]).read_bytes())
    r = subprocess.run([sys.executable, str(REPO / "tools" / "infer.py"), "--checkpoint", str(ckpt), "--input",
                        str(images), "--output-dir", str(tmp_path / "out")], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())
    gt_by_name = {Path(img["file_name"]).name: img["id"] for img in ann["images"]}
    listed = json.loads((tmp_path / "out" / "images.json").read_text())
    id_to_name = {i["id"]: Path(i["file_name"]).name for i in listed["images"]}
    # each ground-truth object of the two images is found with IoU >= 0.5 by a confident detection
    for name, image_id in gt_by_name.items():
        if name not in {p.name for p in images.iterdir()}:
            continue
        ours = [d for d in dets if id_to_name[d["image_id"]] == name and d["score"] >= 0.5]
        gts = [a for a in ann["annotations"] if a["image_id"] == image_id]
        for g in gts:
            gx, gy, gw, gh = g["bbox"]
            best = max((_iou_xywh(d["bbox"], g["bbox"]) for d in ours), default=0.0)
            assert best >= 0.5, (name, g, ours)


    # full-rank truncated SVD (fc_dim 128): a compressed checkpoint that gives the same detections (through
    # the tool's first form, before 0.2: no subcommand, an output file; it still works, with notes)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "compress.py"), "--checkpoint", str(ckpt), "--ranks",
                        "128", "128", "--output", str(tmp_path / "svd.pth"), "--num-rois", "50"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "box head + predictor on 50 RoIs" in r.stdout
    compressed, ccfg = load_model(tmp_path / "svd.pth")
    assert list(ccfg.model.roi_head.svd_ranks) == [128, 128]
    assert isinstance(compressed.roi_head.box_head.fc6, torch.nn.Sequential)
    image = torch.from_numpy(read_image(next(images.iterdir()))).permute(2, 0, 1).float() / 255
    props = [torch.tensor([[0, 0, 60, 60], [10, 20, 90, 100], [30, 30, 128, 100]], dtype=torch.float32)]
    with torch.no_grad():
        a = model.roi_head.predict(model.backbone(model.batcher([image])[0]), props)
        b = compressed.roi_head.predict(compressed.backbone(compressed.batcher([image])[0]), props)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_pyramid_inference_and_given_proposals(shapes_with_proposals, monkeypatch):
    cfg = fast_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]",
                      "model.fast_rcnn.pyramid_scales=[0.5,1.0,2.0]", "model.fast_rcnn.pyramid_roi_size=32")
    model = build_model(cfg).eval()
    image = torch.rand(3, 64, 96)
    props = torch.tensor([[0, 0, 96, 64], [10, 10, 20, 20], [10, 10, 40, 40]], dtype=torch.float32)
    with torch.no_grad():
        out = model([image], proposals=[props])[0]
        assert set(out) == {"boxes", "scores", "labels"}
        # each RoI pooled at its own scale equals pooling it alone at that scale
        rois = props
        area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
        level = (area[:, None] * torch.tensor([0.25, 1.0, 4.0]) - 32 ** 2).abs().argmin(1)
        assert level.tolist() == [0, 2, 1]
        single = build_model(fast_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]")).eval()
        single.load_state_dict(model.state_dict())
        mid = single.roi_head.predict(single.backbone(single.batcher([image])[0]), [props[2:3]])
        scaled = torch.nn.functional.interpolate(image[None], scale_factor=0.5, mode="bilinear",
                                                 align_corners=False)[0]
        low = single.roi_head.predict(single.backbone(single.batcher([scaled])[0]), [props[0:1] * 0.5])
        pooled_levels = torch.cat([low[0], mid[0]])
        got = torch.cat([_pyramid_logits(model, image, props)[i:i + 1] for i in (0, 2)])
        torch.testing.assert_close(got, pooled_levels, atol=1e-5, rtol=1e-4)
        # classified one RoI at a time (RoIHead.predict's chunks), each back in its row
        many = torch.cat([props, props + 2.0, props * 0.9])  # several RoIs at each scale
        area = (many[:, 2] - many[:, 0]) * (many[:, 3] - many[:, 1])
        level = (area[:, None] * torch.tensor([0.25, 1.0, 4.0]) - 32 ** 2).abs().argmin(1)
        assert sorted(level.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        expected = []
        for roi, lv in zip(many, level.tolist()):
            scale = [0.5, 1.0, 2.0][lv]
            scaled = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                                     align_corners=False)[0] if scale != 1.0 else image
            features = single.backbone(single.batcher([scaled])[0])
            expected.append(single.roi_head.predict(features, [roi[None] * scale])[0])
        monkeypatch.setattr(model.roi_head, "predict_chunk_bytes", 1)
        torch.testing.assert_close(_pyramid_logits(model, image, many), torch.cat(expected), atol=1e-5, rtol=1e-4)


def test_cpu_inference_runs_a_batch_image_by_image(shapes_with_proposals):
    torch.manual_seed(0)
    model = build_model(fast_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]",
                                    "model.roi_head.score_thresh=0.0")).eval()
    images = [torch.rand(3, 64, 96), torch.rand(3, 40, 48)]
    props = [torch.tensor([[0, 0, 96, 64], [10, 10, 40, 40]], dtype=torch.float32),
             torch.tensor([[2, 2, 30, 30], [5, 5, 48, 40], [0, 0, 10, 10]], dtype=torch.float32)]
    with torch.no_grad():
        batch = run_model(model, images, props)
        alone = [model([im], proposals=[p])[0] for im, p in zip(images, props)]
    for a, b in zip(batch, alone):
        assert len(a["boxes"]) > 0 and all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


@pytest.mark.parametrize("pyramid", [False, True])
def test_test_flip_mirrors_the_proposals_and_is_mirror_equivariant(shapes_with_proposals, monkeypatch, pyramid):
    torch.manual_seed(0)
    extra = ["model.fast_rcnn.pyramid_scales=[0.5,1.0]", "model.fast_rcnn.pyramid_roi_size=32"] if pyramid else []
    model = build_model(fast_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]",
                                    "model.roi_head.score_thresh=0.0", "model.test_flip=true", *extra)).eval()
    image = torch.rand(3, 64, 96)
    props = torch.tensor([[0, 0, 96, 64], [10, 10, 20, 20], [10, 12, 40, 44], [50, 5, 90, 30]], dtype=torch.float32)
    with torch.no_grad():
        out = model([image], proposals=[props])[0]
        mirrored = model([image.flip(-1)], proposals=[flip_boxes(props, 96)])[0]
    assert len(out["scores"]) > 0 and len(mirrored["scores"]) == len(out["scores"])
    torch.testing.assert_close(mirrored["scores"], out["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(flip_boxes(mirrored["boxes"], 96), out["boxes"], atol=1e-3, rtol=0)
    # without proposals, selective search runs on the image once, not on its mirror image too
    searched = []
    monkeypatch.setattr(model.proposer, "search",
                        lambda images: searched.append(len(images)) or [props for _ in images])
    with torch.no_grad():
        again = model([image])[0]
    assert searched == [1]
    torch.testing.assert_close(again["scores"], out["scores"])


def _pyramid_logits(model, image, props):
    captured = {}
    original = model.roi_head.postprocess

    def spy(class_logits, *args, **kwargs):
        captured["logits"] = class_logits
        return original(class_logits, *args, **kwargs)

    model.roi_head.postprocess = spy
    try:
        model([image], proposals=[props])
    finally:
        model.roi_head.postprocess = original
    return captured["logits"]


def test_image_without_objects_gives_background_rois_and_finite_loss(shapes_with_proposals):
    cfg = fast_config(shapes_with_proposals, "data.classes=[rectangle,ellipse,triangle]")
    model = build_model(cfg).train()
    image = torch.rand(3, 64, 80)
    props = torch.tensor([[0, 0, 30, 30], [10, 10, 60, 50], [40, 20, 80, 64]], dtype=torch.float32)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "proposals": props}
    rois, labels, _ = model.roi_head.sample_rois([props], [target])
    assert len(rois[0]) == 3 and labels.tolist() == [0, 0, 0]  # all background despite IoU 0 < 0.1
    losses = model([image], [target])
    assert losses["loss_box"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    losses["loss_cls"].backward()
    assert model.roi_head.predictor.cls_score.weight.grad.abs().sum() > 0
