"""ONNX export, the ONNX Runtime backend and int8 (tools/export.py) on a tiny trained detector."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from detect.config import load_config
from detect.data.image_io import read_image
from detect.inference.loading import load_model
from detect.evaluation.metrics import evaluate
from detect.export.onnx_export import check_exportable, export_onnx
from detect.inference.predictor import Predictor
from detect.export.int8 import calibration_images, quantize_onnx
from detect.errors import CheckpointError
from detect.models import build_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dir, tiny_frcnn):
    """The tiny trained Faster R-CNN (distinct scores, so detections have an order), its checkpoint
    and its export."""
    out = tmp_path_factory.mktemp("export")
    ckpt = tiny_frcnn
    model, cfg = load_model(ckpt)
    summary = export_onnx(model, cfg, out / "model.onnx")
    return {"checkpoint": ckpt, "onnx": out / "model.onnx", "summary": summary, "data": shapes_dir}


def _detections(model, image):
    with torch.no_grad():
        return model([image])[0]


@pytest.mark.parametrize("size", [(128, 128), (128, 171), (97, 130), (161, 97), (256, 320)])
def test_onnx_runtime_gives_pytorchs_detections_at_any_size(trained, size):
    torch_model, _ = load_model(trained["checkpoint"])
    onnx_model, _ = load_model(trained["onnx"])
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    image = cv2.resize(read_image(path), size[::-1], interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    ref, got = _detections(torch_model, tensor), _detections(onnx_model, tensor)
    assert len(ref["scores"]) > 0
    assert len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=0.01)
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)
    assert torch.equal(got["labels"], ref["labels"])


def test_onnx_runtime_gives_pytorchs_detections_on_bccd_images(trained, bccd_root):
    torch_model, _ = load_model(trained["checkpoint"])
    predictor = Predictor.from_checkpoint(trained["onnx"])
    for path in sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:3]:
        tensor = predictor.prepare(read_image(path))[0]  # 640x480 resized by the test transform
        ref, got = _detections(torch_model, tensor), _detections(predictor.model, tensor)
        assert len(got["scores"]) == len(ref["scores"]) > 0
        np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=0.01)
        np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)


def test_the_file_carries_what_inference_needs(trained):
    meta = {p.key: p.value for p in onnx.load(str(trained["onnx"])).metadata_props}
    assert meta["detect.format"] == "detect-onnx/1"
    assert meta["detect.model_type"] == "faster_rcnn"
    assert json.loads(meta["detect.class_names"]) == ["rectangle", "ellipse", "triangle"]
    assert json.loads(meta["detect.config"])["input"]["min_size_test"] == 128
    io = json.loads(meta["detect.io"])
    assert io["image"]["shape"] == ["1", "3", "H", "W"] and io["image"]["range"] == [0, 1]
    assert int(meta["detect.min_side"]) == trained["summary"]["min_side"] > 1
    graph = onnx.load(str(trained["onnx"])).graph
    assert {"NonMaxSuppression", "RoiAlign"} <= {n.op_type for n in graph.node}  # in the graph, not in Python
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[2].dim_param and dims[3].dim_param  # height and width are dynamic


def test_evaluation_and_predictor_give_the_same_results(trained, tmp_path):
    torch_model, cfg = load_model(trained["checkpoint"])
    onnx_model, onnx_cfg = load_model(trained["onnx"])
    a = evaluate(torch_model, cfg, torch.device("cpu"), progress=False)
    b = evaluate(onnx_model, onnx_cfg, torch.device("cpu"), progress=False)
    assert a["coco"]["AP50"] > 0
    assert b["coco"]["AP"] == pytest.approx(a["coco"]["AP"], abs=1e-4)
    assert b["coco"]["AP50"] == pytest.approx(a["coco"]["AP50"], abs=1e-4)
    p = Predictor.from_checkpoint(trained["onnx"], score_thresh=0.5)
    full = Predictor.from_checkpoint(trained["onnx"])
    image = read_image(sorted((trained["data"] / "images" / "test").iterdir())[1])
    high, every = p(image), full(image)
    assert p.class_names == ["rectangle", "ellipse", "triangle"]
    np.testing.assert_array_equal(high["scores"], every["scores"][every["scores"] > 0.5])


def test_a_results_file_gets_the_checkpoint_runs_metrics_and_errors(trained, tmp_path):
    from detect.evaluation.report import write_report

    model, cfg = load_model(trained["checkpoint"])
    saved = {}

    def report(gt, results, metrics):
        saved.update(gt=gt, results=results)
        return write_report(tmp_path / "ckpt_report", gt, results, metrics)

    direct = evaluate(model, cfg, torch.device("cpu"), progress=False, report=report)
    (tmp_path / "gt.json").write_text(json.dumps(saved["gt"]))
    (tmp_path / "dets.json").write_text(json.dumps(saved["results"]))
    r = _run("eval.py", "--detections", tmp_path / "dets.json", "--ann-file", tmp_path / "gt.json", "--output-dir",
             tmp_path / "out", "--report")
    assert r.returncode == 0, r.stderr[-2000:]
    from_file = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert direct["coco"]["AP50"] > 0
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert from_file["coco"][key] == pytest.approx(direct["coco"][key], abs=1e-12), key
    assert from_file["voc"]["mAP"] == pytest.approx(direct["voc"]["mAP"], abs=1e-12)
    assert from_file["errors"]["counts"] == direct["errors"]["counts"]
    assert from_file["errors"]["dAP"] == pytest.approx(direct["errors"]["dAP"], abs=1e-12)
    assert from_file["confusion"]["matrix"] == direct["confusion"]["matrix"]


def _run(tool, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env={**os.environ, "CI": "true"})


def test_infer_tool_writes_the_same_detections_with_the_onnx_file(trained, tmp_path):
    folder = trained["data"] / "images" / "test"
    runs = {}
    for kind in ("checkpoint", "onnx"):
        r = _run("infer.py", "--checkpoint", trained[kind], "--input", folder, "--output-dir", tmp_path / kind,
                 "--workers", "0", "--no-save-images")
        assert r.returncode == 0, r.stderr[-2000:]
        runs[kind] = json.loads((tmp_path / kind / "detections.json").read_text())
    assert len(runs["onnx"]) == len(runs["checkpoint"]) > 0
    for a, b in zip(runs["checkpoint"], runs["onnx"]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=0.01)
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)


def test_a_model_prepared_for_cpu_inference_exports_the_plain_graph(trained, tmp_path):
    from detect.inference.runtime import prepare_for_inference
    from detect.ops.conv import nnpack_enabled

    model, cfg = load_model(trained["checkpoint"])
    prepare_for_inference(model, torch.device("cpu"))  # NNPACK convolutions, chunked RoIs: as Predictor runs it
    before = nnpack_enabled()
    export_onnx(model, cfg, tmp_path / "prepared.onnx")
    assert nnpack_enabled() == before  # the export did not switch NNPACK off for the rest of the process
    ops = {n.op_type for n in onnx.load(str(tmp_path / "prepared.onnx")).graph.node}
    assert "Conv" in ops and not any("nnpack" in op.lower() for op in ops)
    image = torch.rand(3, 128, 150)
    ref, got = _detections(model, image), _detections(load_model(tmp_path / "prepared.onnx")[0], image)
    assert len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)


def test_a_channels_last_backbone_exports_the_same_graph(trained, tmp_path):
    model, cfg = load_model(trained["checkpoint"])
    model.backbone.channels_last = True  # model.backbone.channels_last: true, as custom.yaml trains it
    image = torch.rand(3, 128, 150)
    ref = _detections(model, image)
    export_onnx(model, cfg, tmp_path / "cl.onnx")
    got = _detections(load_model(tmp_path / "cl.onnx")[0], image)
    assert len(ref["scores"]) > 0 and len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=0.01)


def test_test_flip_exports_with_both_views_in_the_graph(trained, tmp_path):
    model, cfg = load_model(trained["checkpoint"], overrides=["model.test_flip=true"])
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    image = torch.from_numpy(cv2.resize(read_image(path), (171, 128))).permute(2, 0, 1).float() / 255
    ref = _detections(model, image)
    export_onnx(model, cfg, tmp_path / "flip.onnx")
    onnx_model, onnx_cfg = load_model(tmp_path / "flip.onnx")
    assert onnx_cfg.model.test_flip
    got = _detections(onnx_model, image)
    assert len(ref["scores"]) > 0 and len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=0.01)
    plain = _detections(load_model(trained["checkpoint"], overrides=["model.test_flip=false"])[0], image)
    # the graph is not the single view's
    assert len(plain["scores"]) != len(got["scores"]) or not np.allclose(plain["scores"], got["scores"], atol=1e-4)


def test_test_scales_export_with_every_scale_in_the_graph(trained, tmp_path):
    # 171 px wide: 128.25 at 0.75, so the graph must round the resized side as PyTorch does
    overrides = ["model.test_scales=[0.75]", "model.test_flip=true"]
    model, cfg = load_model(trained["checkpoint"], overrides=overrides)
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    image = torch.from_numpy(cv2.resize(read_image(path), (171, 128))).permute(2, 0, 1).float() / 255
    ref = _detections(model, image)
    export_onnx(model, cfg, tmp_path / "scales.onnx")
    onnx_model, onnx_cfg = load_model(tmp_path / "scales.onnx")
    assert onnx_cfg.model.test_scales == [0.75]
    got = _detections(onnx_model, image)
    assert len(ref["scores"]) > 0 and len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=0.01)
    flip_only = _detections(load_model(trained["checkpoint"], overrides=["model.test_scales=[]", *overrides[1:]])[0],
                            image)
    assert len(flip_only["scores"]) != len(got["scores"]) or not np.allclose(flip_only["scores"], got["scores"], atol=1e-4)


def test_box_voting_exports_and_soft_nms_exports_as_nms_and_says_so(trained, tmp_path, caplog):
    # voting at 0.5: this barely trained model has few boxes at IoU 0.8 with those NMS keeps
    overrides = ["model.roi_head.box_vote_iou=0.5", "model.roi_head.soft_nms_sigma=0.5"]
    model, cfg = load_model(trained["checkpoint"], overrides=overrides)
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    image = torch.from_numpy(cv2.resize(read_image(path), (160, 128))).permute(2, 0, 1).float() / 255
    soft = _detections(model, image)
    with caplog.at_level("WARNING"):
        export_onnx(model, cfg, tmp_path / "voting.onnx")
    assert "Soft-NMS (model.roi_head.soft_nms_sigma=0.5) cannot be exported" in caplog.text
    onnx_model, onnx_cfg = load_model(tmp_path / "voting.onnx")
    assert (onnx_cfg.model.roi_head.soft_nms_sigma, onnx_cfg.model.roi_head.box_vote_iou) == (0.0, 0.5)
    # the graph equals the eager model with NMS and box voting, which differs from the Soft-NMS one
    ref = _detections(load_model(trained["checkpoint"], overrides=overrides[:1])[0], image)
    got = _detections(onnx_model, image)
    assert len(got["scores"]) == len(ref["scores"]) > 0
    assert soft["scores"].tolist() != ref["scores"].tolist()
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=0.01)
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-4)
    plain = _detections(load_model(trained["checkpoint"])[0], image)
    assert not torch.allclose(plain["boxes"], ref["boxes"])  # voting moved boxes


def test_fast_rcnn_exports_with_proposals_as_a_second_input(tmp_path):
    torch.manual_seed(0)
    cfg = load_config("configs/fast_rcnn/shapes.yaml", ["data.classes=[a,b,c]", "model.roi_head.score_thresh=0.0"])
    model = build_model(cfg).eval()
    export_onnx(model, cfg, tmp_path / "fast.onnx")
    assert "MaxRoiPool" in {n.op_type for n in onnx.load(str(tmp_path / "fast.onnx")).graph.node}  # Fast R-CNN's pool
    onnx_model, _ = load_model(tmp_path / "fast.onnx")
    image = torch.rand(3, 130, 170)
    proposals = torch.tensor([[10.0, 10, 60, 80], [50, 20, 160, 120], [0, 0, 30, 30], [5, 5, 5, 9]])  # one empty
    ref = _detections_with(model, image, proposals)
    got = onnx_model([image], proposals=[proposals])[0]
    assert len(got["scores"]) == len(ref["scores"]) > 0
    np.testing.assert_allclose(np.sort(got["scores"].numpy()), np.sort(ref["scores"].numpy()), atol=1e-4)
    with pytest.raises(CheckpointError, match="proposals"):
        onnx_model([image])


def _detections_with(model, image, proposals):
    with torch.no_grad():
        return model([image], proposals=[proposals])[0]


def test_int8_model_is_smaller_runs_everywhere_and_keeps_the_metadata(trained, tmp_path):
    predictor = Predictor.from_checkpoint(trained["onnx"])
    paths = sorted((trained["data"] / "images" / "train").iterdir())
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    q = quantize_onnx(trained["onnx"], tmp_path / "int8.onnx", calibration_images(predictor, [bad, *paths], 4))
    assert q["calibration_images"] == 4  # the unreadable file was skipped, not counted
    model = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and "NonMaxSuppression" in ops
    assert q["bytes"] < 0.5 * trained["onnx"].stat().st_size
    assert {p.key for p in model.metadata_props} >= {"detect.format", "detect.config", "detect.class_names"}
    out = Predictor.from_checkpoint(tmp_path / "int8.onnx")(read_image(paths[0]))
    assert out["boxes"].shape[1] == 4 and out["boxes"].dtype == np.float32


# ---------------------------------------------------------------- bad input


def test_rcnn_and_pyramid_fast_rcnn_are_refused_with_what_to_do():
    with pytest.raises(CheckpointError, match="R-CNN cannot be exported.*Fast R-CNN or Faster R-CNN"):
        check_exportable(load_config("configs/rcnn/shapes.yaml"))
    with pytest.raises(CheckpointError, match="pyramid_scales=\\[\\]"):
        check_exportable(load_config("configs/fast_rcnn/shapes.yaml", ["model.fast_rcnn.pyramid_scales=[0.5,1.0]"]))


def _save(model_proto, path, **meta):
    for key, value in meta.items():
        model_proto.metadata_props.add(key=key, value=value)
    onnx.save(model_proto, str(path))
    return path


def test_onnx_files_of_another_origin_or_version_are_refused_by_name(trained, tmp_path):
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 18)])
    with pytest.raises(CheckpointError, match=r"other\.onnx: not an ONNX model exported by detect.*producer"):
        load_model(_save(foreign, tmp_path / "other.onnx", producer="yolo"))
    old = onnx.load(str(trained["onnx"]))
    for p in old.metadata_props:
        if p.key == "detect.format":
            p.value = "detect-onnx/0"
    with pytest.raises(CheckpointError, match=r"old\.onnx: exported by detect .* in format detect-onnx/0"):
        load_model(_save(old, tmp_path / "old.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"junk\.onnx: not a readable ONNX model"):
        load_model(tmp_path / "junk.onnx")


def test_what_the_graph_fixes_cannot_be_overridden(trained):
    with pytest.raises(CheckpointError, match="score_thresh=0.05.*export again"):
        load_model(trained["onnx"], overrides=["model.roi_head.score_thresh=0.01"])
    with pytest.raises(CheckpointError, match="model.rpn is fixed in the exported graph"):
        load_model(trained["onnx"], overrides=["model.rpn.nms_thresh=0.5"])
    flip = load_model(trained["onnx"])[1].model.test_flip
    with pytest.raises(CheckpointError, match="model.test_flip is fixed in the exported graph"):
        load_model(trained["onnx"], overrides=[f"model.test_flip={str(not flip).lower()}"])
    load_model(trained["onnx"], overrides=["data.test.ann_file=elsewhere.json"])  # data keys are free


def test_an_image_below_the_graphs_smallest_side_is_padded_with_the_mean_colour(trained):
    """A strip thinner than the graph takes (``detect.min_side``) runs padded at the bottom: the same
    detections as PyTorch's on the strip padded so by hand, clipped to the strip."""
    torch_model, _ = load_model(trained["checkpoint"])
    onnx_model, _ = load_model(trained["onnx"])
    side = trained["summary"]["min_side"]
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    strip = cv2.resize(read_image(path), (200, side - 1), interpolation=cv2.INTER_LINEAR)
    strip = torch.from_numpy(strip).permute(2, 0, 1).float() / 255
    padded = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).repeat(1, side, 200)
    padded[:, :side - 1] = strip
    ref, got = _detections(torch_model, padded), _detections(onnx_model, strip)
    ref["boxes"][:, 1::2] = ref["boxes"][:, 1::2].clamp(max=side - 1)
    inside = (ref["boxes"][:, 3] > ref["boxes"][:, 1])
    assert 0 < len(got["scores"]) == int(inside.sum())
    assert got["boxes"][:, 3].max() <= side - 1
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"][inside].numpy(), atol=0.01)
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"][inside].numpy(), atol=1e-4)


def test_without_onnxruntime_the_message_names_the_extra(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(CheckpointError, match=r'pip install -e "\.\[deploy\]"'):
        load_model(trained["onnx"])


def test_export_tool_end_to_end_and_its_bad_input(trained, tmp_path):
    r = _run("export.py", "--checkpoint", trained["checkpoint"], "--output-dir", tmp_path / "m", "--int8",
             "--calibration", trained["data"] / "images" / "train", "--calibration-images", "2", "--check-images", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parity" in r.stdout and "MISMATCH" not in r.stdout
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.onnx", "model_int8.onnx"]
    # the spelling before 0.2, a file: the int8 model there, the float one beside it; with a note
    r = _run("export.py", "--checkpoint", trained["checkpoint"], "--output", tmp_path / "old.onnx", "--int8",
             "--calibration", trained["data"] / "images" / "train", "--calibration-images", "2", "--check-images", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: --output is now --output-dir (a folder); the old spelling works until detect 0.3" in r.stderr
    assert (tmp_path / "old.onnx").is_file() and (tmp_path / "old.fp32.onnx").is_file()
    # a second export into the same folder is refused and leaves the first untouched
    before = (tmp_path / "m" / "model.onnx").read_bytes()
    r = _run("export.py", "--checkpoint", trained["checkpoint"], "--output-dir", tmp_path / "m", "--check-images", "0")
    assert r.returncode == 2 and "already holds an export (model.onnx, model_int8.onnx)" in r.stderr
    assert (tmp_path / "m" / "model.onnx").read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jpg").write_bytes(b"broken")
    r = _run("export.py", "--checkpoint", trained["checkpoint"], "--output-dir", tmp_path / "n", "--int8",
             "--calibration", empty, "--check-images", "0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {empty}: no readable calibration image; int8 calibration " \
                                                "needs at least one"
    assert f"calibration image skipped: {empty / 'a.jpg'}" in r.stderr
    assert not (tmp_path / "n").exists()  # said before the export: nothing written
    r = _run("export.py", "--checkpoint", trained["onnx"], "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "already ONNX" in r.stderr


def test_calibration_starts_at_the_first_readable_image_and_none_is_an_error(tmp_path, caplog):
    from detect.errors import DatasetError
    from detect.export.int8 import from_first_readable

    (tmp_path / "a.jpg").write_bytes(b"broken")
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((8, 8, 3), np.uint8))
    paths = [tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "a.jpg"]
    assert from_first_readable(paths, "here") == paths[1:]
    assert f"calibration image skipped: {tmp_path / 'a.jpg'}" in caplog.text
    with pytest.raises(DatasetError, match="^there: no readable calibration image; int8 calibration needs at least one$"):
        from_first_readable(paths[:1], "there")


def test_deploy_benchmark_times_and_scores_each_backend_on_the_same_model(trained, tmp_path):
    from detect.benchmark.deploy import format_deploy, run_deploy_benchmark

    r = run_deploy_benchmark(trained["checkpoint"], tmp_path, num_images=2, rounds=2, calibration_count=2)
    rows = r["rows"]
    assert set(rows) == {"pytorch_fp32", "onnxruntime_fp32", "onnxruntime_int8"}  # tiny: no torchvision twin
    assert rows["pytorch_fp32"]["AP50"] > 0
    # the fp32 graph scores what the PyTorch model scores; int8 is a smaller file
    assert rows["onnxruntime_fp32"]["AP50"] == pytest.approx(rows["pytorch_fp32"]["AP50"], abs=1e-4)
    assert rows["onnxruntime_int8"]["bytes"] < 0.5 * rows["onnxruntime_fp32"]["bytes"]
    assert rows["pytorch_fp32"]["latency_vs_pytorch"] == 1.0
    for row in rows.values():
        assert row["ms"] > 0 and len(row["ms_per_round"]) == 2
    assert min(r["image_size"]) == 128 and r["int8"]["calibration_images"] == 2  # short side input.min_size_test
    assert "ONNX Runtime int8" in format_deploy(r) and "torchvision" not in format_deploy(r).splitlines()[2]


def test_deploy_benchmark_scores_the_checkpoint_as_shipped_and_the_graph_as_exported(trained, tmp_path):
    """With Soft-NMS the eager row keeps it (what the .pth gives) while the ONNX rows run NMS, as
    exported; exporting must not change the model the eager row times and scores."""
    from detect.benchmark.deploy import format_deploy, run_deploy_benchmark

    soft = ["model.roi_head.soft_nms_sigma=0.5"]
    r = run_deploy_benchmark(trained["checkpoint"], tmp_path, num_images=1, rounds=1, calibration_count=1,
                             overrides=soft)
    scores = {}
    for name, overrides in (("soft", soft), ("nms", [])):
        model, cfg = load_model(trained["checkpoint"], overrides=overrides)
        scores[name] = evaluate(model, cfg, torch.device("cpu"), progress=False)["coco"]["AP"]
    assert scores["soft"] != scores["nms"]
    assert r["rows"]["pytorch_fp32"]["AP"] == pytest.approx(scores["soft"], abs=1e-6)
    assert r["rows"]["onnxruntime_fp32"]["AP"] == pytest.approx(scores["nms"], abs=1e-4)
    assert format_deploy(r).splitlines()[-1].startswith("the checkpoint tests with Soft-NMS")


def test_onnx_runtime_gives_pytorchs_detections_with_tiles(trained):
    # sliced inference wraps either backend alike: 128 px tiles of a test image enlarged to 300 x 450
    # (tiles above the graph's smallest side, 65 px, which ONNX Runtime would pad)
    tiles = ["model.tiles.size=128", "model.tiles.overlap=0.25", "model.tiles.batch=3"]
    torch_p = Predictor.from_checkpoint(trained["checkpoint"], overrides=tiles)
    onnx_p = Predictor.from_checkpoint(trained["onnx"], overrides=tiles)
    path = sorted((trained["data"] / "images" / "test").iterdir())[0]
    image = cv2.resize(read_image(path), (450, 300), interpolation=cv2.INTER_LINEAR)
    ref, got = torch_p(image), onnx_p(image)
    assert len(ref["scores"]) > 0 and len(got["scores"]) == len(ref["scores"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=0.01)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    whole = Predictor.from_checkpoint(trained["checkpoint"])(image)
    assert len(whole["scores"]) != len(ref["scores"]) or not np.allclose(whole["boxes"], ref["boxes"])
