"""torchvision's Faster R-CNN detectors as detect checkpoints: the same network, the same detections.

    import_torchvision("fasterrcnn_mobilenet_v3_large_fpn", "COCO_V1", "runs/imported")   # with a network
    import_torchvision("fasterrcnn_resnet50_fpn", "state_dict.pth", "runs/imported")      # a local file

A state dict of one of :data:`ARCHITECTURES` (a file, or torchvision's weights name where a network
is available) is loaded into torchvision's own model first, which checks it is that architecture;
then each tensor goes to the detect module built for the same place, through the module pairs
of both models (every tensor is used, every detect tensor filled: an error names the keys
otherwise). The RPN head's outputs are reordered: torchvision orders a cell's anchors ratio by
ratio, detect size by size.

The config reproduces torchvision's choices wherever detect has its own default: anchors at the
cells' corners, rounded to whole pixels and spaced by the image's side over the map's, RoI align without the half-pixel shift, torchvision's
proposal counts and thresholds, the test size (``configs/faster_rcnn/torchvision_<arch>.yaml`` hold
the same settings as :data:`ARCHITECTURES`; a test keeps them equal). The checkpoint then runs in
every command: eval, infer, export, compress, and ``model.weights=`` for fine-tuning on new classes.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from detect.checkpoint.storage import save_checkpoint
from detect.config import Config, config_from_dict
from detect.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

_COMMON: Dict[str, Any] = {
    "model": {
        "type": "faster_rcnn",
        "backbone": {"fpn": True, "fpn_channels": 256, "norm": "frozen_bn", "freeze_at": 0},
        "rpn": {"anchor_offset": 0.0, "round_anchors": True, "anchor_spacing": "image", "aspect_ratios": [0.5, 1.0, 2.0],
                "pre_nms_topk_train": 2000, "post_nms_topk_train": 2000, "pre_nms_topk_test": 1000,
                "post_nms_topk_test": 1000, "nms_thresh": 0.7, "fg_iou": 0.7, "bg_iou": 0.3,
                "batch_size_per_image": 256, "positive_fraction": 0.5},
        "roi_head": {"pooler": "align", "resolution": 7, "sampling_ratio": 2, "aligned": False, "canonical_size": 224.0,
                     "fc_dim": 1024, "batch_size_per_image": 512, "positive_fraction": 0.25, "fg_iou": 0.5,
                     "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0], "score_thresh": 0.05, "nms_thresh": 0.5,
                     "detections_per_image": 100, "smooth_l1_beta": 1.0 / 9, "soft_nms_sigma": 0.0,
                     "box_vote_iou": 0.0},
    },
}
# torchvision's detector name -> what differs from _COMMON (torchvision.models.detection's builders)
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "fasterrcnn_resnet50_fpn": {
        "model": {"backbone": {"name": "resnet50"},
                  "rpn": {"anchor_sizes": [[32.0], [64.0], [128.0], [256.0], [512.0]]}},
        "input": {"min_size": 800, "min_size_test": 800, "max_size": 1333}},
    "fasterrcnn_mobilenet_v3_large_fpn": {
        "model": {"backbone": {"name": "mobilenet_v3_large", "fpn_strides": [32, 32]},
                  "rpn": {"anchor_sizes": [[32.0, 64.0, 128.0, 256.0, 512.0] for _ in range(3)], "score_thresh": 0.05}},
        "input": {"min_size": 800, "min_size_test": 800, "max_size": 1333}},
    "fasterrcnn_mobilenet_v3_large_320_fpn": {
        "model": {"backbone": {"name": "mobilenet_v3_large", "fpn_strides": [32, 32]},
                  "rpn": {"anchor_sizes": [[32.0, 64.0, 128.0, 256.0, 512.0] for _ in range(3)], "score_thresh": 0.05,
                          "pre_nms_topk_test": 150, "post_nms_topk_test": 150}},
        "input": {"min_size": 320, "min_size_test": 320, "max_size": 640}},
}


def _merged(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def architecture_config(arch: str, class_names: Sequence[str]) -> Config:
    """The detect config of torchvision's ``arch`` for ``class_names`` (labels 1..C)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch {arch!r} is not a torchvision detector the importer knows; it knows "
                          f"{', '.join(ARCHITECTURES)}")
    return config_from_dict(_merged(_merged(_COMMON, ARCHITECTURES[arch]), {"data": {"classes": list(class_names)}}),
                            source=f"torchvision {arch}")


def torchvision_model(arch: str, num_classes: int) -> nn.Module:
    """torchvision's ``arch`` with random weights and no download (its structure, to load a state dict into)."""
    import torchvision

    return getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None, num_classes=num_classes)


def read_state_dict(arch: str, weights: str) -> Tuple[Dict[str, torch.Tensor], Optional[List[str]]]:
    """``(state dict, class names or None)`` from a file, or from torchvision's weights name (``DEFAULT``,
    ``COCO_V1``: downloaded by torchvision where a network exists; its class names come with it)."""
    if Path(weights).is_file():
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated zip, a pickle of objects, not a PyTorch file
            raise CheckpointError(f"{weights}: not a readable state dict ({' '.join(str(e).split())[:160]})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{weights}: holds a {type(state).__name__}, not a state dict of tensors")
        return state, None
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError):
        raise ConfigError(f"--weights {weights!r}: neither a file nor a torchvision weights name of {arch}") from None
    logger.info("downloading %s through torchvision (cached after the first time)", chosen)
    return chosen.get_state_dict(progress=True), list(chosen.meta["categories"][1:])


def _unique(names: Sequence[str]) -> List[str]:
    """COCO's 90 category slots include unused ``N/A`` ones: each gets a name of its own."""
    seen: Dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _anchor_order(num_sizes: int, num_ratios: int) -> torch.Tensor:
    """For each detect anchor of a cell (sizes outer, ratios inner) the index of the same anchor in
    torchvision's order (ratios outer, sizes inner)."""
    return torch.tensor([r * num_sizes + s for s in range(num_sizes) for r in range(num_ratios)])


def convert_state_dict(tv_model: nn.Module, model: nn.Module, cfg: Config) -> Dict[str, torch.Tensor]:
    """detect's state dict for ``model`` from torchvision's ``tv_model`` (weights loaded), module for
    module; raises a CheckpointError naming any tensor left over on either side."""
    ours: Dict[str, torch.Tensor] = {}
    # the backbone: torchvision's body children in order are detect's stages' layers in order
    body = list(tv_model.backbone.body.named_children())
    layers = [(f"backbone.stages.{s}.{j}", layer) for s, stage in enumerate(model.backbone.stages)
              for j, layer in enumerate(stage)]
    if len(body) != len(layers):
        raise CheckpointError(f"torchvision's backbone has {len(body)} layers, detect's {len(layers)}")
    for (tv_name, tv_layer), (prefix, layer) in zip(body, layers):
        for key, tensor in tv_layer.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                ours[f"{prefix}.{key}"] = tensor
    for key, tensor in tv_model.backbone.fpn.state_dict().items():  # the same FeaturePyramidNetwork module
        ours[f"backbone.fpn.{key}"] = tensor
    head = tv_model.rpn.head
    conv = head.conv[0][0] if isinstance(head.conv, nn.Sequential) else head.conv
    ours["rpn.head.conv.weight"], ours["rpn.head.conv.bias"] = conv.weight, conv.bias
    order = _anchor_order(len(cfg.model.rpn.anchor_sizes[0]), len(cfg.model.rpn.aspect_ratios))
    deltas = (order[:, None] * 4 + torch.arange(4)[None, :]).reshape(-1)
    ours["rpn.head.objectness.weight"] = head.cls_logits.weight[order]
    ours["rpn.head.objectness.bias"] = head.cls_logits.bias[order]
    ours["rpn.head.deltas.weight"] = head.bbox_pred.weight[deltas]
    ours["rpn.head.deltas.bias"] = head.bbox_pred.bias[deltas]
    for tv_name, name in (("box_head.fc6", "box_head.fc6"), ("box_head.fc7", "box_head.fc7"),
                          ("box_predictor.cls_score", "predictor.cls_score"),
                          ("box_predictor.bbox_pred", "predictor.bbox_pred")):
        module = tv_model.roi_heads.get_submodule(tv_name)
        ours[f"roi_head.{name}.weight"], ours[f"roi_head.{name}.bias"] = module.weight, module.bias
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(ours)), sorted(set(ours) - expected)
    shapes = [k for k in expected & set(ours) if ours[k].shape != model.state_dict()[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"the converted weights do not fit detect's model: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}, other shapes {shapes[:4]}")
    return {k: v.detach().clone() for k, v in ours.items()}


def import_torchvision(arch: str, weights: str, output: Union[str, Path],
                       class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write ``output`` (a ``.pth`` checkpoint): torchvision's ``arch`` with ``weights`` as a detect
    model. Class names: ``class_names``, else the weights' own (COCO's for the released ones), else
    ``class_1`` ... Returns ``{"checkpoint", "config", "classes"}``."""
    from detect.models import build_model

    if arch not in ARCHITECTURES:
        architecture_config(arch, [])  # the error listing the known ones
    state, names = read_state_dict(arch, weights)
    predictor = state.get("roi_heads.box_predictor.cls_score.weight")
    if predictor is None:
        found = ", ".join(list(state)[:3])
        raise CheckpointError(f"{weights}: not a torchvision Faster R-CNN state dict (no "
                              f"roi_heads.box_predictor.cls_score; it starts {found}); the importer knows "
                              f"{', '.join(ARCHITECTURES)}")
    num_classes = predictor.shape[0]  # background included
    tv_model = torchvision_model(arch, num_classes)
    try:
        tv_model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: not the weights of torchvision's {arch} ({' '.join(str(e).split())[:240]})"
                              f"; the importer knows {', '.join(ARCHITECTURES)}") from None
    if class_names is not None and len(class_names) != num_classes - 1:
        raise ConfigError(f"--classes names {len(class_names)} classes; the weights have {num_classes - 1}")
    chosen = _unique(class_names or names or [f"class_{i}" for i in range(1, num_classes)])
    cfg = architecture_config(arch, chosen)
    model = build_model(cfg, backbone_weights=False)
    weights_out = convert_state_dict(tv_model.eval(), model, cfg)
    save_checkpoint(output, {"model": weights_out, "config": cfg.to_dict(), "class_names": chosen,
                             "imported_from": {"library": "torchvision", "arch": arch, "weights": str(weights)}})
    return {"checkpoint": Path(output), "config": cfg, "classes": chosen}
