"""Running a detector over a dataset, with predictions mapped back to the original images."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from detect.data.collate import collate_detection
from detect.data.image_io import ImageReadError
from detect.data.transforms import boxes_to_original
from detect.data.workers import die_with_parent
from detect.inference.runtime import prepare_for_inference, run_model, timed_calls
from detect.models.external_proposals import ExternalProposals
from detect.ops.boxes import clip_boxes_np


def to_original(det: Dict[str, torch.Tensor], target: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Map one image's detections from the resized input back to the file's pixels (the one place
    this happens): undo the transform's scale, clip to the original size."""
    boxes = det["boxes"].detach().float().cpu().numpy()
    if "scale" in target:
        boxes = boxes_to_original(boxes, target["scale"])
    if target.get("orig_size") is not None:
        boxes = clip_boxes_np(boxes, tuple(target["orig_size"]))
    return {"boxes": boxes.astype(np.float32), "scores": det["scores"].detach().float().cpu().numpy(),
            "labels": det["labels"].detach().cpu().numpy().astype(np.int64)}


class ReadableItems(Dataset):
    """``dataset``'s items, with an image that cannot be read given as ``(None, {"image_id",
    "unreadable": message})``: the error is caught where the image is read (a DataLoader worker), so
    one bad file costs its own result, not the run, and reaches the user as one line naming it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except ImageReadError as e:
            return None, {"image_id": self.dataset.records[index].image_id, "unreadable": str(e)}


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 2,
                    num_workers: int = 0, progress: bool = True
                    ) -> Tuple[Dict[int, Dict[str, np.ndarray]], Dict[str, float], Dict[int, str]]:
    """Detections per image id (original pixels) for every readable item of ``dataset``, timings,
    and the images that could not be read (image id -> ``"path: reason"``).

    ``dataset`` yields ``(image, target)`` with the test transform (``scale`` in the target) and
    has ``records`` (a :class:`detect.data.detection_dataset.DetectionDataset`).
    """
    loader = DataLoader(ReadableItems(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_detection, persistent_workers=False,
                        worker_init_fn=die_with_parent)
    was_training = model.training
    prepare_for_inference(model.eval(), device)
    proposer = getattr(model, "proposer", None)
    searches: List[Tuple[float, Any]] = []  # selective search, when an external proposer runs it
    search_timer = timed_calls(proposer, "search", searches) if isinstance(proposer, ExternalProposals) \
        else contextlib.nullcontext()
    detections: Dict[int, Dict[str, np.ndarray]] = {}
    unreadable: Dict[int, str] = {}
    model_time = 0.0
    start = time.perf_counter()
    with search_timer:
        for images, targets in tqdm(loader, desc="inference", disable=not progress, leave=False):
            for target in targets:
                if "unreadable" in target:
                    unreadable[int(target["image_id"])] = target["unreadable"]
            targets = [t for t in targets if "unreadable" not in t]
            images = [im.to(device, non_blocking=True) for im in images if im is not None]
            if not images:
                continue
            t0 = time.perf_counter()
            given = [t["proposals"] for t in targets] if all("proposals" in t for t in targets) else None
            outputs = run_model(model, images, given)  # given: Fast R-CNN / R-CNN with a proposals file
            if device.type == "cuda":
                torch.cuda.synchronize()
            model_time += time.perf_counter() - t0
            for out, target in zip(outputs, targets):
                detections[int(target["image_id"])] = to_original(out, target)
    proposal_time = sum(seconds for seconds, _ in searches)
    model.train(was_training)
    total = time.perf_counter() - start
    n = max(len(detections), 1)
    return detections, {"images": len(detections), "seconds_per_image": total / n,
                        "model_seconds_per_image": model_time / n,
                        "proposal_seconds_per_image": proposal_time / n,
                        "network_seconds_per_image": (model_time - proposal_time) / n}, unreadable
