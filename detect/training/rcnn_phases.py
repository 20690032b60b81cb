"""R-CNN phases 2 and 3 after fine-tuning: feature cache, per-class SVMs, box regressors.

Phase 2 extracts the features of every training proposal (the best ``model.rcnn.svm_proposals`` per
image) and of every ground-truth box into a memory-mapped cache in the run folder, image by image;
the cache records which images are done and which weights made it, so a killed run resumes with
the images left and a cache made by other weights is recomputed, never mixed in. Then one linear
SVM per class: positives are the class's ground-truth boxes, negatives the proposals overlapping
no box of the class by 0.3 IoU or more, with hard negative mining (``detect/training/svm.py``).
Phase 3 fits, per class, a ridge regression from features to the ``BoxCoder`` deltas that move
each proposal with IoU >= 0.6 onto its ground-truth box (the paper's lambda: 1000).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from tqdm import tqdm

from detect.data.build import build_dataset
from detect.data.collate import collate_detection
from detect.data.transforms import build_transforms
from detect.training.svm import ridge_regression, train_svm_with_hard_negatives
from detect.ops import box_iou, nonempty_boxes
from detect.proposals.attach import attach_proposals
from detect.utils.atomic import write_text_atomic

LOG = logging.getLogger(__name__)
NEGATIVE_IOU = 0.3  # SVM negatives: below this IoU with every box of the class
REGRESSION_IOU = 0.6
FEATURE_NORM = 20.0  # features are scaled to this mean L2 norm before the SVMs (as in the R-CNN code)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the weights the features come from (the cache is only valid for them)."""
    h = hashlib.sha1()
    for name, p in sorted(model.state_dict().items()):
        if name.startswith(("backbone.", "fc.")):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Rows ``[start_i, start_i + count_i)`` of image ``i``: its proposals then its ground truth.

    Arrays (``.npy`` memory maps in ``folder``): ``features (rows, D)``, ``boxes (rows, 4)``,
    ``gt_label (rows,)`` (class of a ground-truth row, 0 for a proposal), ``class_iou (rows, C)``
    (best IoU with a box of each class), ``best_box (rows, 4)``, ``best_label`` and ``best_iou``
    (the ground-truth box each row overlaps most). ``index.json`` holds the layout, the settings
    and the images done; it is rewritten atomically after every image.
    """

    ARRAYS = {"boxes": (4, np.float32), "gt_label": (0, np.int64), "class_iou": (-1, np.float32),
              "best_box": (4, np.float32), "best_label": (0, np.int64), "best_iou": (0, np.float32)}

    def __init__(self, folder: Path, capacity: np.ndarray, dim: int, num_classes: int, dtype: str,
                 settings: Dict[str, Any]):
        self.folder = Path(folder)
        self.index_file = self.folder / "index.json"
        starts = np.concatenate([[0], np.cumsum(capacity)]).astype(np.int64)
        layout = {"starts": starts.tolist(), "dim": dim, "num_classes": num_classes, "dtype": dtype}
        index = json.loads(self.index_file.read_text()) if self.index_file.is_file() else None
        fresh = index is None or index.get("settings") != settings or index.get("layout") != layout
        if fresh and index is not None:
            LOG.warning("%s: made by other weights or settings; recomputing the features", self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = int(starts[-1])
        mode = "w+" if fresh else "r+"
        self.features = np.lib.format.open_memmap(self.folder / "features.npy", mode=mode,
                                                  dtype=np.dtype(dtype), shape=(rows, dim))
        self.arrays = {}
        for name, (width, dt) in self.ARRAYS.items():
            shape = (rows,) if width == 0 else (rows, num_classes if width < 0 else width)
            self.arrays[name] = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode=mode, dtype=dt, shape=shape)
        self.starts = starts
        self.index = {"settings": settings, "layout": layout, "done": {}} if fresh else index
        if fresh:
            self._write_index()

    def done(self, i: int) -> bool:
        return str(i) in self.index["done"]

    def put(self, i: int, features: np.ndarray, **arrays: np.ndarray) -> None:
        start = int(self.starts[i])
        n = len(features)
        if start + n > self.starts[i + 1]:
            raise ValueError(f"image {i}: {n} rows exceed its {self.starts[i + 1] - start} reserved rows")
        self.features[start:start + n] = features
        for name, value in arrays.items():
            self.arrays[name][start:start + n] = value
        self.features.flush()
        for a in self.arrays.values():
            a.flush()
        self.index["done"][str(i)] = n  # only after the rows are on disk
        self._write_index()

    def rows(self) -> np.ndarray:
        """Indices of all written rows."""
        return np.concatenate([np.arange(self.starts[int(i)], self.starts[int(i)] + n)
                               for i, n in self.index["done"].items()] or [np.zeros(0, np.int64)])

    def _write_index(self) -> None:
        write_text_atomic(self.index_file, json.dumps(self.index))


@torch.no_grad()
def extract_features(model, cfg, folder: Path, device: torch.device, progress: bool = True,
                     limit: Optional[int] = None) -> FeatureCache:
    """Phase 2's cache over the training split (test-time resize, no flip). ``limit`` stops after
    that many new images (for tests of the resume)."""
    r = cfg.model.rcnn
    dataset = build_dataset(cfg, "train", transforms=build_transforms(cfg, train=False), class_names=cfg.data.classes)
    attach_proposals(dataset, cfg, "train", r.svm_proposals, required=True)
    capacity = np.array([len(dataset.proposals(i)) + len(dataset.records[i].boxes) for i in range(len(dataset))])
    settings = {"weights": weights_fingerprint(model), "svm_proposals": r.svm_proposals,
                "input": [cfg.input.min_size_test, cfg.input.max_size], "proposals": str(cfg.data.train.proposals)}
    cache = FeatureCache(folder, capacity, model.fc.out_features, len(cfg.data.classes), r.feature_dtype, settings)
    model.eval()
    todo = [i for i in range(len(dataset)) if not cache.done(i)]
    for count, i in enumerate(tqdm(todo, desc="R-CNN features", disable=not progress)):
        if limit is not None and count >= limit:
            break
        image, target = collate_detection([dataset[i]])
        image = image[0].to(device)
        t = target[0]
        props = t["proposals"].to(device)
        props = props[nonempty_boxes(props)]
        gt = t["boxes"].to(device)
        boxes = torch.cat([props, gt])
        feats = model.box_features([image], [boxes]).cpu().numpy()
        gt_label = np.r_[np.zeros(len(props), np.int64), t["labels"].numpy()]
        class_iou = np.zeros((len(boxes), len(cfg.data.classes)), np.float32)
        best_box = np.zeros((len(boxes), 4), np.float32)
        best_label = np.zeros(len(boxes), np.int64)
        best_iou = np.zeros(len(boxes), np.float32)
        if len(gt):
            iou = box_iou(boxes, gt).cpu().numpy()  # (rows, G)
            labels = t["labels"].numpy()
            for c in range(1, len(cfg.data.classes) + 1):
                if (labels == c).any():
                    class_iou[:, c - 1] = iou[:, labels == c].max(axis=1)
            j = iou.argmax(axis=1)
            best_box = gt.cpu().numpy()[j]
            best_label = labels[j]
            best_iou = iou[np.arange(len(boxes)), j]
        cache.put(i, feats, boxes=boxes.cpu().numpy(), gt_label=gt_label, class_iou=class_iou,
                  best_box=best_box, best_label=best_label, best_iou=best_iou)
    return cache


def fit_svms_and_regressors(model, cfg, output_dir, device: torch.device, progress: bool = True) -> Dict[str, Any]:
    """Phases 2 and 3 on a fine-tuned ``RCNN``; fills its SVM and regressor buffers in place."""
    r = cfg.model.rcnn
    cache = extract_features(model, cfg, Path(output_dir) / "rcnn_features", device, progress)
    rows = cache.rows()
    feats = np.asarray(cache.features[rows], np.float32)
    a = {k: np.asarray(v[rows]) for k, v in cache.arrays.items()}
    scale = FEATURE_NORM / max(float(np.linalg.norm(feats, axis=1).mean()), 1e-6)
    feats *= scale
    report: Dict[str, Any] = {"rows": int(len(rows)), "feature_scale": scale, "classes": {}}
    num_classes = len(cfg.data.classes)
    weight = np.zeros((num_classes, feats.shape[1]), np.float32)
    bias = np.zeros(num_classes, np.float32)
    bbox = np.zeros((num_classes, feats.shape[1] + 1, 4), np.float32)
    is_proposal = a["gt_label"] == 0
    for c in range(1, num_classes + 1):
        name = cfg.data.classes[c - 1]
        pos = feats[a["gt_label"] == c]
        neg = feats[is_proposal & (a["class_iou"][:, c - 1] < NEGATIVE_IOU)]
        svm = train_svm_with_hard_negatives(pos, neg, c=r.svm_C, positive_weight=r.svm_positive_weight,
                                            passes=r.svm_passes, seed=cfg.train.seed)
        weight[c - 1], bias[c - 1] = svm["weight"], svm["bias"]
        sel = (a["best_label"] == c) & (a["best_iou"] >= REGRESSION_IOU)
        if sel.any():
            targets = model.box_coder.encode(torch.from_numpy(a["boxes"][sel]), torch.from_numpy(a["best_box"][sel]))
            bbox[c - 1] = ridge_regression(feats[sel], targets.numpy(), r.bbox_reg_lambda)
        report["classes"][name] = {"positives": int(len(pos)), "negatives": int(len(neg)),
                                   "mining": svm["passes"], "regression_examples": int(sel.sum())}
        LOG.info("R-CNN %s: SVM on %d positives / %d negatives (%s), box regression on %d proposals", name,
                 len(pos), len(neg), svm["passes"], int(sel.sum()))
    with torch.no_grad():
        model.svm_weight.copy_(torch.from_numpy(weight) * scale)  # scale folded in: raw features at test time
        model.svm_bias.copy_(torch.from_numpy(bias))
        bbox_raw = bbox.copy()
        bbox_raw[:, :-1] *= scale
        model.bbox_weight.copy_(torch.from_numpy(bbox_raw))
        model.svm_fitted.fill_(True)
        model.bbox_fitted.fill_(True)
    (Path(output_dir) / "rcnn_fit.json").write_text(json.dumps(report, indent=2))
    return report


# What runs once after the training loop, by model.type: the stages whose registry entry says
# ``after_training`` (detect.models.registry). The trainer and the pruning runs call it.
AFTER_TRAINING = {"rcnn": fit_svms_and_regressors}


def run_after_training(stage, model, cfg, output_dir, device: torch.device, progress: bool = True) -> None:
    """The stage's after-training phases on ``model`` (nothing for a stage without them)."""
    if stage.after_training:
        AFTER_TRAINING[stage.type](model, cfg, output_dir, device, progress)
