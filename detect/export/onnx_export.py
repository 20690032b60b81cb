"""Export a trained detector to ONNX: ``export_onnx(checkpoint, output)`` (``tools/export.py``).

The graph is the model's own ``forward`` (``detect.models.two_stage``), captured by PyTorch's
``dynamo=True`` exporter (``torch.export`` then onnxscript): one image of any height and width in,
its detections out, with normalisation, padding, the RPN, NMS (ONNX ``NonMaxSuppression``), RoI
pooling (``RoiAlign`` / ``MaxRoiPool``) and box decoding inside.

    inputs   image      float32 (1, 3, H, W), RGB in [0, 1], already resized as the config's
                        test transform does (short side input.min_size_test, long side at most
                        input.max_size); the graph normalises and pads it itself
             proposals  float32 (R, 4) xyxy in the image's pixels (Fast R-CNN only)
    outputs  boxes (N, 4) xyxy in the input image's pixels, scores (N,), labels (N,) int64 in 1..C

The ONNX file carries what inference needs in its metadata (``detect.*`` keys: the format version,
the package version, the stage, the class names, the resolved config, the input contract and the
smallest side the graph takes), so ``Predictor.from_checkpoint("model.onnx")``, ``tools/infer.py``
and ``tools/eval.py`` need nothing else (``detect.inference.onnx_backend``).

Soft-NMS does not export (its loop depends on the scores): a model that uses it is exported with
NMS, and says so (:func:`hard_nms_instead_of_soft`). What the models do for this (and nothing else
changes in eager mode): the ops take torchvision's
kernels while exporting (``torch.compiler.is_compiling()``, behind the ops' own API), sizes stay
symbolic (no ``int()`` on a shape, ``torch.sym_min`` for top-k), and padding rounds up with positive
integer division (ONNX divides integers towards zero).
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

import detect
from detect.inference.onnx_backend import FORMAT
from detect.errors import CheckpointError
from detect.models.registry import stage_of

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # onnxscript's torchvision translations (NonMaxSuppression, RoiAlign) are written for 18
EXPORTABLE = ("faster_rcnn", "fast_rcnn")


class ExportedDetector(nn.Module):
    """The graph's signature around a detector: a ``(1, 3, H, W)`` image (and Fast R-CNN's proposals)
    in, ``boxes``, ``scores`` and ``labels`` of that image out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, proposals: Optional[torch.Tensor] = None):
        given = None if proposals is None else [proposals]
        det = self.model([image[0]], proposals=given)[0]
        return det["boxes"], det["scores"], det["labels"]


def _roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """``torchvision::roi_pool`` as ONNX ``MaxRoiPool`` (same Caffe rounding of the RoI to the
    grid). onnxscript's own translation takes the op's arguments in another order and fails, and
    the op returns ``(output, argmax)``: argmax, unused at inference, is a cast of the output."""
    from onnxscript import opset18 as op

    out = op.MaxRoiPool(input, rois, pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale)
    return out, op.Cast(out, to=7)  # 7: INT64


@contextlib.contextmanager
def quiet_libraries():
    """The exporter, onnxscript's optimiser and ONNX Runtime's quantizer log hundreds of INFO lines and
    warnings about their own internals; inside the block only their errors show (this package's
    loggers keep their level)."""
    root = logging.getLogger()
    ours = logging.getLogger("detect")
    saved = root.level, ours.level
    ours.setLevel(ours.getEffectiveLevel())
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


def check_exportable(cfg) -> None:
    """A CheckpointError saying why a model of ``cfg`` cannot be exported, and what to do instead."""
    if cfg.model.type not in EXPORTABLE:
        raise CheckpointError(
            f"{stage_of(cfg).name} cannot be exported to ONNX: its SVM scores and per-crop network are "
            f"not one graph; export a Fast R-CNN or Faster R-CNN model (model.type={'|'.join(EXPORTABLE)})")
    if cfg.model.type == "fast_rcnn" and cfg.model.fast_rcnn.pyramid_scales:
        raise CheckpointError("Fast R-CNN with multi-scale testing (model.fast_rcnn.pyramid_scales) cannot be "
                              "exported: export with model.fast_rcnn.pyramid_scales=[] (single scale)")


def hard_nms_instead_of_soft(model: nn.Module, cfg) -> None:
    """Soft-NMS (``model.roi_head.soft_nms_sigma``) picks its boxes in a loop whose length depends on
    the scores, which an ONNX graph cannot hold: the exported graph runs NMS at
    ``model.roi_head.nms_thresh`` instead. The model and ``cfg`` are changed to match (the config stored
    in the ONNX file, the parity check and every tool reading the file then agree), and a warning says it."""
    head = getattr(model, "roi_head", None)
    if head is None or not getattr(head, "soft_nms_sigma", 0):
        return
    logger.warning("Soft-NMS (model.roi_head.soft_nms_sigma=%g) cannot be exported: the ONNX graph runs NMS "
                   "at IoU %g instead (model.roi_head.nms_thresh); expect a slightly lower AP than the checkpoint's",
                   head.soft_nms_sigma, head.nms_thresh)
    head.soft_nms_sigma = 0.0
    cfg.model.roi_head.soft_nms_sigma = 0.0


def _input_min_side(exported_program) -> int:
    """The smallest height and width the exported graph accepts (torch.export's range of the input's
    symbolic sides; the backbone's contiguity checks make it ~2x the largest stride)."""
    lowest = 1
    for node in exported_program.graph.nodes:
        if node.op == "placeholder" and node.name == "image":
            for side in node.meta["val"].shape[2:]:
                expr = getattr(side, "node", None)
                if expr is not None:
                    vr = exported_program.range_constraints.get(expr.expr)
                    if vr is not None:
                        lowest = max(lowest, int(vr.lower))
    return lowest


def metadata(cfg, min_side: int, mean: List[float], std: List[float]) -> Dict[str, str]:
    """The ``detect.*`` metadata of an exported model (strings, as ONNX stores them); ``mean`` and
    ``std``: the pixel statistics the graph normalises with (the backbone's)."""
    contract = {"image": {"shape": ["1", "3", "H", "W"], "dtype": "float32", "channels": "RGB", "range": [0, 1],
                          "resize": {"min_size": cfg.input.min_size_test, "max_size": cfg.input.max_size},
                          "normalised_in_graph": {"mean": list(mean), "std": list(std)}},
                "outputs": {"boxes": "(N, 4) xyxy, input pixels", "scores": "(N,)", "labels": "(N,) int64, 1..C"}}
    if cfg.model.type == "fast_rcnn":
        contract["proposals"] = {"shape": ["R", "4"], "dtype": "float32", "boxes": "xyxy, input pixels"}
    return {"detect.format": FORMAT, "detect.version": detect.__version__, "detect.model_type": cfg.model.type,
            "detect.class_names": json.dumps(list(cfg.data.classes)), "detect.config": json.dumps(cfg.to_dict()),
            "detect.io": json.dumps(contract), "detect.min_side": str(min_side)}


def export_onnx(model: nn.Module, cfg, output: Union[str, Path], opset: int = DEFAULT_OPSET,
                sample_size: Optional[List[int]] = None) -> Dict[str, Any]:
    """Write ``model`` (built from ``cfg``, weights loaded; moved to the CPU) to ``output`` as ONNX;
    returns a summary (path, opset, size in bytes, smallest side). The sample image only drives the
    capture: height and width stay dynamic."""
    check_exportable(cfg)
    if not hasattr(getattr(torch.export, "Dim", None), "DYNAMIC"):
        raise CheckpointError(f"exporting to ONNX needs torch 2.6 or newer (this is {torch.__version__})")
    try:
        import onnxscript  # noqa: F401  (the dynamo=True exporter writes the graph through it)
    except ImportError:
        raise CheckpointError('exporting to ONNX needs onnx and onnxscript: pip install -e ".[deploy]"') from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    hard_nms_instead_of_soft(model, cfg)
    # an odd sample size, so that the capture sees padding (a multiple of the stride pads nothing)
    h, w = sample_size or [int(cfg.input.min_size_test) + 3, int(cfg.input.max_size) - 5]
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    wrapper = ExportedDetector(model).eval()
    dims = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    if cfg.model.type == "fast_rcnn":
        proposals = torch.tensor([[0.1 * w, 0.1 * h, 0.6 * w, 0.7 * h], [0.3 * w, 0.2 * h, 0.9 * w, 0.9 * h]])
        args, shapes, names = (image, proposals), {"image": dims, "proposals": {0: torch.export.Dim.DYNAMIC}}, \
            ["image", "proposals"]
    else:
        args, shapes, names = (image,), {"image": dims}, ["image"]
    with torch.no_grad(), quiet_libraries():
        captured = torch.export.export(wrapper, args, dynamic_shapes=shapes, strict=False)
        min_side = _input_min_side(captured)
        program = torch.onnx.export(captured, args, dynamo=True, opset_version=opset, input_names=names,
                                    output_names=["boxes", "scores", "labels"],
                                    custom_translation_table={torch.ops.torchvision.roi_pool.default: _roi_pool},
                                    verbose=False)
    program.model.metadata_props.update(metadata(cfg, min_side, model.batcher.mean.flatten().tolist(),
                                                 model.batcher.std.flatten().tolist()))
    tmp = output.with_name(output.name + ".tmp")
    program.save(str(tmp))
    tmp.replace(output)  # never a half-written model under the final name
    return {"path": str(output), "opset": opset, "bytes": output.stat().st_size, "min_side": min_side}


def compare_outputs(reference: Dict[str, torch.Tensor], other: Dict[str, Any]) -> Dict[str, float]:
    """How far ``other``'s detections are from ``reference``'s (one image): counts, and the largest
    box and score differences between detections paired in order (both are sorted by score)."""
    n_ref, n_other = len(reference["scores"]), len(other["scores"])
    n = min(n_ref, n_other)
    ref_boxes, ref_scores = np.asarray(reference["boxes"])[:n], np.asarray(reference["scores"])[:n]
    boxes, scores = np.asarray(other["boxes"])[:n], np.asarray(other["scores"])[:n]
    return {"count": n_ref, "count_other": n_other,
            "box_diff": float(np.abs(ref_boxes - boxes).max()) if n else 0.0,
            "score_diff": float(np.abs(ref_scores - scores).max()) if n else 0.0,
            "labels_equal": bool((np.asarray(reference["labels"])[:n] == np.asarray(other["labels"])[:n]).all())}


def parity_report(model: nn.Module, cfg, onnx_path: Union[str, Path], num_images: int = 4) -> str:
    """ONNX Runtime against PyTorch on up to ``num_images`` of ``cfg``'s test images (a random image
    when the test set cannot be read): counts and largest differences, as lines of text."""
    from detect.data.build import build_dataset
    from detect.data.image_io import read_image
    from detect.inference.predictor import Predictor

    eager = Predictor(model, cfg, torch.device("cpu"))
    exported = Predictor.from_checkpoint(onnx_path, device="cpu")
    try:
        images = [(str(r.path), read_image(r.path)) for r in build_dataset(cfg, "test").records[:num_images]]
    except Exception as e:  # no test set here (paths of another machine): the check still runs
        logger.info("parity check on a random image (test set unavailable: %s)", e)
        rng = np.random.default_rng(0)
        images = [("random 333x517 image", rng.integers(0, 256, (333, 517, 3), dtype=np.uint8))]
    lines = ["parity, ONNX Runtime against PyTorch (detections above the score threshold):"]
    for name, image in images:
        c = compare_outputs(eager(image), exported(image))
        same = c["count"] == c["count_other"] and c["labels_equal"]
        lines.append(f"  {Path(name).name}: {c['count']} / {c['count_other']} detections, boxes within "
                     f"{c['box_diff']:.2g} px, scores within {c['score_diff']:.2g}{'' if same else '  MISMATCH'}")
    return "\n".join(lines)
