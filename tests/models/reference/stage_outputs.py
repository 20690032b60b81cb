"""The three stages' detections on fixed inputs, to hold their behaviour still through refactors.

``outputs()`` builds R-CNN, Fast R-CNN and Faster R-CNN from their shapes configs with seeded random
weights, runs each in eval mode on two fixed images (Fast R-CNN and R-CNN on fixed proposals), and
returns the boxes, scores and labels per stage and image. ``stages.npz`` beside this file holds them
as made by the code of 2026-11-29 (before the two-stage-detector redesign):

    python -m tests.models.reference.stage_outputs   # rewrites stages.npz: only when a change is meant
"""
from pathlib import Path
from typing import Dict

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parent / "stages.npz"
REPO = Path(__file__).resolve().parents[3]


def images():
    """Two images, 3xHxW in [0, 1]: a textured background with filled rectangles, of two sizes."""
    rng = np.random.default_rng(7)
    out = []
    for h, w in ((96, 128), (112, 80)):
        image = (rng.random((h, w, 3)) * 60).astype(np.float32)
        for _ in range(4):
            y, x = rng.integers(0, h - 24), rng.integers(0, w - 24)
            image[y:y + rng.integers(12, 24), x:x + rng.integers(12, 24)] = rng.integers(100, 255, 3)
        out.append(torch.from_numpy(image / 255.0).permute(2, 0, 1).contiguous())
    return out


def proposals(size):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    h, w = size
    x1, y1 = rng.uniform(0, w - 8, 60), rng.uniform(0, h - 8, 60)
    bw, bh = rng.uniform(6, w / 2, 60), rng.uniform(6, h / 2, 60)
    return torch.from_numpy(np.stack([x1, y1, np.minimum(x1 + bw, w), np.minimum(y1 + bh, h)], 1).astype(np.float32))


def outputs() -> Dict[str, np.ndarray]:
    from detect.config import load_config
    from detect.models import build_model

    common = ["data.classes=[rectangle,ellipse,triangle]", "input.min_size_test=96", "input.max_size=128",
              "model.roi_head.score_thresh=0.0", "device=cpu"]
    # the RoI head as the shapes config had it when the reference was stored (RoI max pool on a 7x7 grid, FPN's 224,
    # NMS without box voting, one view at test time): the reference holds the models' code to its results, whatever the
    # config ships since
    extra = {"faster_rcnn": ["model.rpn.anchor_sizes=[[16,32],[32,64],[64,128],[128,256]]",
                             "model.rpn.aspect_ratios=[0.5,1.0,2.0]", "model.rpn.post_nms_topk_test=50",
                             "model.roi_head.pooler=pool", "model.roi_head.resolution=7", "model.roi_head.canonical_size=224",
                             "model.roi_head.soft_nms_sigma=0", "model.roi_head.box_vote_iou=0",
                             "model.test_flip=false", "model.test_scales=[]"],
             "fast_rcnn": ["model.proposals.topk_test=60"],
             "rcnn": ["model.proposals.topk_test=60", "model.rcnn.crop_size=32", "model.rcnn.context=2",
                      "model.rcnn.fc_dim=64"]}
    result = {}
    torch.set_num_threads(1)  # one thread: the same sums in the same order every run
    for stage in ("rcnn", "fast_rcnn", "faster_rcnn"):
        cfg = load_config(REPO / "configs" / stage / "shapes.yaml", common + extra[stage])
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            for i, image in enumerate(images()):
                given = None if stage == "faster_rcnn" else [proposals(tuple(image.shape[1:]))]
                det = model([image], proposals=given)[0] if given else model([image])[0]
                for key in ("boxes", "scores", "labels"):
                    result[f"{stage}/{i}/{key}"] = det[key].numpy()
    return result


if __name__ == "__main__":
    np.savez(REFERENCE, **outputs())
    print(f"wrote {REFERENCE}")
