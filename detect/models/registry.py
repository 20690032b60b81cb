"""The stages of the R-CNN family, in one place: ``model.type`` -> what the package needs to know.

The model builder, the trainer, the config check, the stage benchmark and the tools read this table;
a new stage is one model file and one entry here.

- ``build(cfg, backbone, class_names)`` makes the model from its config and the shared backbone;
- ``external_proposals``: trains and tests on proposals from outside the network (a proposals file,
  or selective search on the fly), so the datasets get ``data.<split>.proposals`` attached;
- ``fits_anchors``: has an RPN whose ``auto`` anchors are fitted to the training boxes at the start;
- ``after_training``: ``"module:function"`` run once on the trained model after the training loop
  (R-CNN: its SVMs and box regressors, in ``detect.training.rcnn_phases``); named, not imported, because it
  lives in the engine, above the models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

from detect.errors import ConfigError
from detect.models.parts import backbone_from_config, build_external_proposer, build_roi_head, build_rpn
from detect.models.fast_rcnn import FastRCNN
from detect.models.faster_rcnn import FasterRCNN
from detect.models.rcnn import RCNN


@dataclass(frozen=True)
class Stage:
    type: str
    name: str
    build: Callable
    external_proposals: bool
    fits_anchors: bool = False
    after_training: bool = False


def _build_rcnn(cfg, backbone, class_names: List[str]) -> RCNN:
    for key in ("test_flip", "test_scales"):
        if cfg.model[key]:
            raise ConfigError(f"model.{key}: R-CNN has no test-time views (its SVMs score each warped crop); "
                              f"Fast R-CNN and Faster R-CNN have")
    r = cfg.model.rcnn
    return RCNN(backbone, class_names, crop_size=r.crop_size, context=r.context, fc_dim=r.fc_dim,
                batch_rois=r.batch_rois, fg_fraction=r.fg_fraction, fg_iou=r.fg_iou,
                crops_per_chunk=r.crops_per_chunk, nms_thresh=r.nms_thresh,
                detections_per_image=r.detections_per_image, bbox_reg=r.bbox_reg,
                proposer=build_external_proposer(cfg))


def _build_fast_rcnn(cfg, backbone, class_names: List[str]) -> FastRCNN:
    f = cfg.model.fast_rcnn
    if f.pyramid_scales and cfg.model.test_scales:
        raise ConfigError(f"model.test_scales={cfg.model.test_scales} and model.fast_rcnn.pyramid_scales="
                          f"{f.pyramid_scales}: choose one multi-scale test (pyramid: each RoI pooled from the "
                          f"scale that suits its size; test_scales: every scale's view averaged)")
    return FastRCNN(backbone, build_roi_head(cfg, backbone, len(class_names)), class_names,
                    proposer=build_external_proposer(cfg), pyramid_scales=f.pyramid_scales,
                    pyramid_roi_size=f.pyramid_roi_size, test_flip=cfg.model.test_flip,
                    test_scales=cfg.model.test_scales)


def _build_faster_rcnn(cfg, backbone, class_names: List[str]) -> FasterRCNN:
    return FasterRCNN(backbone, build_rpn(cfg, backbone), build_roi_head(cfg, backbone, len(class_names)),
                      class_names, test_flip=cfg.model.test_flip, test_scales=cfg.model.test_scales)


# in the order the papers came, which is the order the stage benchmark shows them in
STAGES: Dict[str, Stage] = {s.type: s for s in (
    Stage("rcnn", "R-CNN", _build_rcnn, external_proposals=True,
          after_training="detect.training.rcnn_phases:fit_svms_and_regressors"),
    Stage("fast_rcnn", "Fast R-CNN", _build_fast_rcnn, external_proposals=True),
    Stage("faster_rcnn", "Faster R-CNN", _build_faster_rcnn, external_proposals=False, fits_anchors=True),
)}


def stage_of(cfg) -> Stage:
    """The entry of ``cfg.model.type``; an unknown type is a ConfigError naming the known ones."""
    try:
        return STAGES[cfg.model.type]
    except KeyError:
        raise ConfigError(f"model.type {cfg.model.type!r} is not a stage; one of {list(STAGES)}") from None


def build_model(cfg, backbone_weights: bool = True):
    """Build the detector ``cfg.model.type`` names, for the classes in ``cfg.data.classes``.
    ``backbone_weights=False``: the same model without reading ``model.backbone.pretrained`` (a
    checkpoint's weights replace them; nothing is downloaded or needed to run a trained model)."""
    stage = stage_of(cfg)
    class_names = list(cfg.data.classes)
    if not class_names:
        raise ValueError("data.classes is empty: the model needs the class names (the training tool fills "
                         "them from the dataset; set data.classes=[a,b,...] otherwise)")
    return stage.build(cfg, backbone_from_config(cfg, load_weights=backbone_weights), class_names)
