import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from detect.proposals import selective_search
from detect.errors import ProposalError
from detect.proposals.cache import compute_proposals, search_settings
from detect.proposals.files import image_keys, load_proposals, proposals_for_records, write_proposals
from detect.proposals.recall import best_overlaps, evaluate_proposal_recall, format_recall


def test_best_overlaps_by_hand_and_by_budget():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    props = np.zeros((400, 4), np.float32)
    props[:] = [100, 100, 110, 110]  # misses
    props[0] = [0, 0, 10, 5]  # IoU 0.5
    props[150] = [0, 0, 10, 8]  # IoU 0.8
    best = best_overlaps(props, gt, counts=(100, 300))
    np.testing.assert_allclose(best, [[0.5, 0.8, 0.8]], atol=1e-6)


def test_recall_ar_and_mabo_by_hand():
    gt_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([[0, 0, 4, 4]], np.float32)]
    gt_labels = [np.array([1, 2]), np.array([1])]
    proposals = [np.array([[0, 0, 10, 5], [20, 20, 30, 30]], np.float32),  # IoU 0.5 and 1.0
                 np.array([[0, 0, 4, 3]], np.float32)]  # IoU 0.75
    r = evaluate_proposal_recall(proposals, gt_boxes, gt_labels, ["a", "b"], counts=(1, 2))
    assert r["num_gt"] == 3 and r["counts"] == ["1", "2", "all"]
    one = r["overall"]["1"]  # first proposal only: best overlaps 0.5, 0, 0.75
    assert one["recall@0.5"] == pytest.approx(2 / 3) and one["recall@0.7"] == pytest.approx(1 / 3)
    # AR over 0.5:0.95: box 1 counts at t=0.5 only, box 3 at t=0.5..0.75 (6 thresholds)
    assert one["AR"] == pytest.approx((1 + 6) / (3 * 10))
    assert r["per_class"]["a"]["1"]["ABO"] == pytest.approx((0.5 + 0.75) / 2)
    assert r["per_class"]["b"]["1"]["ABO"] == pytest.approx(0.0)
    assert one["MABO"] == pytest.approx((0.625 + 0.0) / 2)
    two = r["overall"]["2"]
    assert two["recall@0.7"] == pytest.approx(2 / 3) and two["MABO"] == pytest.approx((0.625 + 1.0) / 2)
    assert "MABO" in format_recall(r)


def test_ignored_boxes_are_not_counted():
    r = evaluate_proposal_recall([np.array([[0, 0, 10, 10]], np.float32)],
                                 [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)],
                                 [np.array([1, 1])], ["a"], counts=(10,), gt_ignore=[np.array([False, True])])
    assert r["num_gt"] == 1 and r["overall"]["10"]["recall@0.7"] == 1.0


@dataclass
class Record:
    path: Path
    image_id: int


def _images(folder: Path, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = np.full((40, 56, 3), 30, np.uint8)
        x, y = rng.integers(2, 30), rng.integers(2, 20)
        image[y:y + 15, x:x + 20] = (200, 60 + 40 * i, 60)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), image[:, :, ::-1])
        records.append(Record(path, i + 1))
    return records


def test_compute_resumes_from_partial_shards_and_refuses_other_settings(tmp_path):
    records = _images(tmp_path / "images")
    out = tmp_path / "props.npz"
    summary = compute_proposals(records, out, mode="single", workers=1, progress=False)
    assert summary["computed"] == 3 and not summary["failed"]
    full = load_proposals(out)
    assert list(full.keys) == ["img0.png", "img1.png", "img2.png"] and full.meta["settings"]["mode"] == "single"
    image = cv2.imread(str(records[1].path))[:, :, ::-1]
    np.testing.assert_array_equal(full.get("img1.png")[0], selective_search(image, mode="single"))

    # an interrupted run: one image finished (with a marker box), then the process died
    out2 = tmp_path / "resumed.npz"
    partial = tmp_path / "resumed.npz.partial"
    partial.mkdir()
    (partial / "meta.json").write_text(json.dumps({"settings": search_settings("single", 0, None)}))
    marker = np.array([[1, 2, 3, 4]], np.float32)
    write_proposals(partial / "shard_000000.npz", ["img0.png"], [1], [marker], {})
    summary = compute_proposals(records, out2, mode="single", workers=1, progress=False)
    assert summary["computed"] == 2 and summary["reused"] == 1
    resumed = load_proposals(out2)
    np.testing.assert_array_equal(resumed.get("img0.png")[0], marker)  # not recomputed
    for key in ("img1.png", "img2.png"):
        np.testing.assert_array_equal(resumed.get(key)[0], full.get(key)[0])
    assert not partial.exists()

    with pytest.raises(ProposalError, match="other settings"):
        compute_proposals(records, out, mode="fast", workers=1, progress=False)
    # a stale partial folder of a run with other settings is refused, not mixed in
    out2.unlink()
    partial.mkdir()
    (partial / "meta.json").write_text(json.dumps({"settings": search_settings("single", 5, None)}))
    with pytest.raises(ProposalError, match="other settings"):
        compute_proposals(records, out2, mode="single", workers=1, progress=False)


def test_unreadable_image_is_reported_and_the_others_processed(tmp_path):
    records = _images(tmp_path / "images", n=2)
    bad = tmp_path / "images" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records.append(Record(bad, 3))
    out = tmp_path / "props.npz"
    summary = compute_proposals(records, out, mode="single", workers=2, progress=False)
    assert [f["key"] for f in summary["failed"]] == ["broken.jpg"] and summary["computed"] == 2
    props = load_proposals(out)
    assert len(props) == 2 and "broken.jpg" in props.meta["failed"]
    with pytest.raises(ProposalError, match="broken.jpg: no proposals for this image.*tools/proposals.py"):
        proposals_for_records(props, records, command_hint="python tools/proposals.py compute ...")
    # a rerun knows the image is unreadable and does not call the file incomplete
    assert compute_proposals(records, out, mode="single", workers=1, progress=False)["computed"] == 0


def test_user_json_proposals_and_malformed_files(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps([{"image_id": 7, "boxes": [[0, 0, 5, 5], [1, 1, 4, 4]], "scores": [0.9, 0.1]}]))
    props = load_proposals(f)
    boxes, scores = props.get(image_id=7)
    assert boxes.tolist() == [[0, 0, 5, 5], [1, 1, 4, 4]] and scores.tolist() == pytest.approx([0.9, 0.1])
    assert props.get("nothing.jpg", 8) is None
    bad = tmp_path / "bad.npz"
    np.savez(bad, boxes=np.zeros((3, 4)), offsets=np.array([0, 2]), keys=np.array(["a"]))
    with pytest.raises(ProposalError, match="offsets"):
        load_proposals(bad)
    with pytest.raises(ProposalError, match="not found"):
        load_proposals(tmp_path / "missing.npz")


def test_image_keys_are_relative_to_the_common_folder(tmp_path):
    keys = image_keys([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"])
    assert keys == ["a/x.jpg", "b/x.jpg"]
    assert image_keys([tmp_path / "a" / "x.jpg"]) == ["x.jpg"]


def test_json_keyed_by_file_name_attaches_and_other_settings_are_named(shapes_with_proposals, tmp_path, caplog):
    from detect.config import load_config
    from detect.data.build import build_dataset
    from detect.proposals.attach import attach_proposals

    data = shapes_with_proposals
    train = json.loads((data / "train.json").read_text())
    mine = [{"file_name": img["file_name"], "boxes": [[i, i, i + 10, i + 12], [0, 0, 5, 5]]}
            for i, img in enumerate(train["images"])]
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    cfg = load_config("configs/fast_rcnn/shapes.yaml", [
        f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/images",
        f"data.train.proposals={tmp_path}/mine.json"])
    dataset = build_dataset(cfg, "train")
    assert attach_proposals(dataset, cfg, "train", topk=1, required=True)
    assert "/" in train["images"][0]["file_name"]  # e.g. train/000000.jpg: relative to the image folder
    order = {img["file_name"]: i for i, img in enumerate(train["images"])}
    for k, record in enumerate(dataset.records):
        i = order[record.path.relative_to(data / "images").as_posix()]
        assert dataset.proposals(k).tolist() == [[i, i, i + 10, i + 12]]  # by name, best first, top 1
    assert "other selective search settings" not in caplog.text  # a user's file has no settings to compare

    made = tmp_path / "fast.npz"  # as tools/proposals.py compute writes it, with its settings
    write_proposals(made, image_keys([r.path for r in dataset.records]), [r.image_id for r in dataset.records],
                    [np.array([[0, 0, 5, 5]], np.float32)] * len(dataset), {"settings": search_settings("fast", 0, None)})
    cfg.data.train.proposals = str(made)
    attach_proposals(dataset, cfg, "train", topk=5, required=True)
    assert "other selective search settings" not in caplog.text  # the config's own settings (fast, seed 0)
    cfg.model.proposals.mode = "quality"
    attach_proposals(dataset, cfg, "train", topk=5, required=True)
    assert (f"data.train.proposals: {made} was computed with other selective search settings "
            f"(mode 'fast', seed 0, max_side None") in caplog.text and "model.proposals (mode 'quality'" in caplog.text


def test_pickled_npz_is_refused_without_loading_it(tmp_path):
    bad = tmp_path / "pickled.npz"
    np.savez(bad, boxes=np.zeros((1, 4)), offsets=np.array([0, 1]), keys=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ProposalError) as e:
        load_proposals(bad)
    assert str(e.value).startswith(f"{bad}: not a readable .npz proposals file (Object arrays cannot be loaded when "
                                   f"allow_pickle=False)")
