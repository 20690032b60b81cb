"""An exported detector run by ONNX Runtime, in place of the PyTorch model: ``load_onnx(path)``.

``load_model`` (``detect.checkpoint.storage``) hands ``.onnx`` files here, so ``Predictor``,
``tools/infer.py`` and ``tools/eval.py`` run them as they run a ``.pth``: the same test transform
before the model, the same mapping to the original pixels after it. :class:`OnnxDetector` is an
``nn.Module`` without parameters whose ``forward`` has the detectors' contract (a list of ``3xHxW``
images in ``[0, 1]``, optionally Fast R-CNN's proposals; one dict per image), so the inference
runtime and the evaluation take it unchanged. ONNX Runtime runs on the CPU.

Needs the ``deploy`` extra (``pip install -e ".[deploy]"``).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from detect.errors import CheckpointError
from detect.ops import clip_boxes, nonempty_boxes

FORMAT = "detect-onnx/1"  # detect.export.onnx_export writes it; bump when inputs, outputs or metadata change meaning


def import_onnxruntime():
    """The ``onnxruntime`` module, or a one-line error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError('running an .onnx model needs ONNX Runtime: pip install -e ".[deploy]" '
                              '(or pip install onnxruntime)') from None
    return onnxruntime


class OnnxDetector(nn.Module):
    """An ONNX Runtime session with the detectors' ``forward``.

    Args:
        path: the ``.onnx`` file (made by ``tools/export.py``).
        session: its ``onnxruntime.InferenceSession``.
        meta: its ``detect.*`` metadata.
        score_thresh: detections scoring at or below it are dropped after the graph; it may only
            raise the threshold the graph was exported with (same detections as exporting with it:
            NMS never lets a lower-scored box suppress a higher-scored one).
    """

    def __init__(self, path: Union[str, Path], session, meta: Dict[str, str], score_thresh: float):
        super().__init__()
        self.path = str(path)
        self.session = session
        self.min_side = int(meta.get("detect.min_side", "1"))
        self.pixel_mean = json.loads(meta["detect.io"])["image"]["normalised_in_graph"]["mean"]
        self.score_thresh = score_thresh
        self.class_names = json.loads(meta["detect.class_names"])
        self.input_names = [i.name for i in session.get_inputs()]
        self.eval()

    def forward(self, images: List[torch.Tensor], targets=None,
                proposals: Optional[List[torch.Tensor]] = None) -> List[Dict[str, torch.Tensor]]:
        if self.training or targets is not None:
            raise CheckpointError(f"{self.path}: an ONNX model runs inference only; train from a .pth checkpoint")
        wants_proposals = "proposals" in self.input_names
        if wants_proposals and proposals is None:
            raise CheckpointError(f"{self.path}: this Fast R-CNN graph takes proposals as its second input; "
                                  f"give the test set a proposals file (data.test.proposals)")
        results = []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            image = pad_to_side(image.detach().cpu().float(), self.min_side, self.pixel_mean)
            feed = {"image": image[None].contiguous().numpy()}
            if wants_proposals:
                feed["proposals"] = proposals[i].detach().cpu().float().reshape(-1, 4).contiguous().numpy()
            boxes, scores, labels = (torch.from_numpy(x) for x in self.session.run(None, feed))
            keep = scores > self.score_thresh
            if image.shape[-2:] != (h, w):  # padded: boxes back inside the image, those left empty dropped
                boxes = clip_boxes(boxes, (h, w))
                keep &= nonempty_boxes(boxes)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].to(torch.int64)})
        return results


def pad_to_side(image: torch.Tensor, side: int, mean: Sequence[float]) -> torch.Tensor:
    """``3xHxW`` image in ``[0, 1]``, padded at the bottom and right to at least ``side`` px per side
    with ``mean``, the normalisation's mean colour: the graph normalises it to zero, the value the models pad
    with themselves (``detect.models.two_stage``), so the box coordinates keep their meaning. An
    exported graph accepts no side under ``detect.min_side`` (~2x the largest stride): an image the
    test transform made that thin (a long strip capped by ``input.max_size``) is padded, not refused."""
    h, w = image.shape[-2:]
    if min(h, w) >= side:
        return image
    padded = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1).repeat(1, max(h, side), max(w, side))
    padded[:, :h, :w] = image
    return padded


def open_session(path: Union[str, Path], threads: Optional[int] = None):
    """An ONNX Runtime CPU session of ``path`` (``threads``: intra-op threads, default PyTorch's); a
    CheckpointError when the file is not a model ONNX Runtime can load."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes for unreadable or invalid files
        raise CheckpointError(f"{path}: not a readable ONNX model ({' '.join(str(e).split())[:200]})") from None


def check_metadata(path: Union[str, Path], meta: Dict[str, str]) -> None:
    """A CheckpointError when ``meta`` was not written by this package's exporter, or in a format
    this version does not read."""
    found = meta.get("detect.format")
    if found is None:
        keys = ", ".join(sorted(meta)[:6]) or "none"
        raise CheckpointError(f"{path}: not an ONNX model exported by detect (no detect.format in its metadata; "
                              f"metadata keys: {keys}); export it with tools/export.py")
    if found != FORMAT:
        raise CheckpointError(f"{path}: exported by detect {meta.get('detect.version', '?')} in format {found}; "
                              f"this version reads {FORMAT}: export the checkpoint again with tools/export.py")
    if meta.get("detect.model_type") not in ("faster_rcnn", "fast_rcnn"):
        raise CheckpointError(f"{path}: detect.model_type {meta.get('detect.model_type')!r} is not a stage this "
                              f"version exports")


def _without_thresh(roi_head: Dict) -> Dict:
    return {k: v for k, v in roi_head.items() if k != "score_thresh"}


def load_onnx(path: Union[str, Path], config: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
              threads: Optional[int] = None):
    """``(OnnxDetector, cfg)`` from an exported model; ``cfg`` is the config stored in it with
    ``overrides`` applied. Overrides of data and test keys are free; of the model only
    ``model.roi_head.score_thresh``, upwards, and ``model.tiles`` (the rest is fixed in the graph)."""
    from detect.config import apply_overrides, config_from_dict

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model")
    session = open_session(path, threads)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    check_metadata(path, meta)
    if config is not None:
        raise CheckpointError(f"{path}: an ONNX model carries its config; pass overrides (key=value) instead of "
                              f"--config")
    stored = json.loads(meta["detect.config"])
    # the defaults first: a model exported before a key existed still takes that key as an override
    data = config_from_dict(copy.deepcopy(stored), source=f"config stored in {path}").to_dict()
    apply_overrides(data, list(overrides))
    cfg = config_from_dict(data, source=f"config stored in {path}")
    exported_thresh = float(stored["model"]["roi_head"]["score_thresh"])
    wanted = float(cfg.model.roi_head.score_thresh)
    if wanted < exported_thresh:
        raise CheckpointError(f"{path}: exported with model.roi_head.score_thresh={exported_thresh:g}, which the "
                              f"graph applies; export again with model.roi_head.score_thresh={wanted:g} for a lower one")
    model = cfg.to_dict()["model"]
    # sliced inference (model.tiles) wraps the graph from outside (detect.inference.tiling): free too
    changed = sorted(k for k in stored["model"] if k != "tiles" and model.get(k) != stored["model"][k]
                     and not (k == "roi_head" and _without_thresh(model[k]) == _without_thresh(stored["model"][k])))
    if changed:
        raise CheckpointError(f"{path}: model.{', model.'.join(changed)} is fixed in the exported graph; export "
                              f"the checkpoint again with the change")
    if not cfg.data.classes:
        cfg.data.classes = json.loads(meta["detect.class_names"])
    return OnnxDetector(path, session, meta, wanted), cfg
