"""Configuration: defaults in code, YAML files that may extend a base file, command-line overrides.

    cfg = load_config("configs/faster_rcnn/bccd.yaml", ["train.max_iter=2000", "input.min_size=[480,512]"])
    cfg.train.max_iter   # 2000

- Every key is described once, in :data:`KEYS`: its default, what it accepts (type, list items,
  choices, bounds) and one line of doc; validation, :data:`DEFAULTS` and the commands' ``--help``
  (:func:`format_keys`) all read that table. A file or an override only changes known keys; an
  unknown key or a value it does not accept is a :class:`ConfigError` naming the key, where it came
  from (file or command line) and the nearest valid key.
- A file may name the file it extends with ``_base_: relative/path.yaml`` (or a list, applied in
  order); the base is read first and the file's keys override it.
- Override values are parsed as YAML scalars or lists (``a.b=3``, ``a.b=[1,2]``, ``a.b=null``).
"""
from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import yaml

from detect.errors import ConfigError

BASE_KEY = "_base_"


@dataclass(frozen=True)
class Key:
    """One config key: its dotted name, default, one line of doc, and what it accepts.

    ``types`` default to the default's own type (a ``None`` default: a string or null); ``items`` is
    the type of a list's items; ``choices`` the strings allowed (a list is allowed besides them when
    ``list`` is among the types); ``bounds`` a closed range for numbers (each item of a list too);
    ``test_time``: the key changes only inference, so any checkpoint takes it (``detect eval`` /
    ``detect infer`` ``key=value``).
    """

    name: str
    default: Any
    doc: str
    types: Tuple[type, ...] = ()
    items: Optional[type] = None
    choices: Tuple[str, ...] = ()
    bounds: Optional[Tuple[float, float]] = None
    test_time: bool = False

    def accepted(self) -> Tuple[type, ...]:
        if self.types:
            return self.types
        return (str, type(None)) if self.default is None else (type(self.default),)


INF = math.inf
POSITIVE = (1, INF)
NONNEGATIVE = (0, INF)
FRACTION = (0, 1)
BACKBONES = ("vgg16", "resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_lite1",
             "efficientnet_lite2", "tiny")  # detect.models.backbones builds each
DATA_FORMATS = ("coco", "voc", "yolo")


def _dataset_keys(subset: str, what: str) -> List[Key]:
    """The keys of one ``data.<subset>`` section (train, test)."""
    p = f"data.{subset}."
    return [
        Key(p + "format", "coco", f"format of the {what}", choices=DATA_FORMATS, test_time=subset == "test"),
        Key(p + "root", None, "voc: folder with Annotations/, JPEGImages/, ImageSets/Main/; yolo: data.yaml or the "
                              "dataset folder; coco: a Roboflow export (a folder per split)", test_time=subset == "test"),
        Key(p + "split", None, "voc: name of ImageSets/Main/<split>.txt; yolo: train, val or test; coco: the split's "
                               "folder in root", test_time=subset == "test"),
        Key(p + "ann_file", None, "coco: the annotation json", test_time=subset == "test"),
        Key(p + "img_dir", None, "coco: the folder the json's file_name are relative to", test_time=subset == "test"),
        Key(p + "proposals", None, "Fast R-CNN / R-CNN: proposals file of this split (detect proposals compute)",
            test_time=subset == "test"),
    ]


KEYS: List[Key] = [
    # the model
    Key("model.type", "faster_rcnn", "the stage: rcnn, fast_rcnn or faster_rcnn (detect.models.registry)"),
    Key("model.weights", None, "a detection checkpoint to start from (matching layers load)",
        types=(str, type(None))),
    Key("model.test_flip", False, "inference also scores each image's mirror image and averages the two "
                                  "(Fast / Faster R-CNN)", test_time=True),
    Key("model.test_scales", [], "inference also scores the RoIs on the images resized by these factors "
                                 "(e.g. [0.75]) and averages all views", items=float, bounds=(0.1, 4), test_time=True),
    Key("model.backbone.name", "resnet50", "torchvision model name, EfficientNet-Lite, or tiny", choices=BACKBONES),
    Key("model.backbone.pretrained", None, "torchvision weights name (DEFAULT, IMAGENET1K_V1; downloaded), imagenet "
                                           "(EfficientNet-Lite: installed from the package registry), a local file, "
                                           "or null", types=(str, type(None))),
    Key("model.backbone.fpn", False, "a feature pyramid over the backbone's stages"),
    Key("model.backbone.fpn_channels", 256, "the FPN's width", bounds=POSITIVE),
    Key("model.backbone.fpn_norm", "none", "none (torchvision's FPN) or gn: GroupNorm after each FPN convolution",
        choices=("none", "gn")),
    Key("model.backbone.fpn_strides", [], "strides of the stages the FPN reads; []: the backbone's default",
        items=int, bounds=POSITIVE),
    Key("model.backbone.width", 1.0, "channel multiplier (tiny, mobilenet_v3_large from scratch)", bounds=(0.05, 8)),
    Key("model.backbone.norm", "auto", "auto: frozen_bn with pretrained weights, else gn",
        choices=("auto", "frozen_bn", "bn", "gn")),
    Key("model.backbone.freeze_at", -1, "backbone stages without gradients; -1: 2 with pretrained weights, else 0",
        bounds=(-1, INF)),
    Key("model.backbone.channels_last", False, "run the backbone on channels-last maps (faster for MobileNetV3 "
                                               "on a CPU)"),
    Key("model.rpn.anchor_sizes", [], "one list per level; []: [32..512] on one map, 8 x stride per FPN level; "
                                      "auto: fitted to the training boxes when training starts",
        types=(list, str), items=list, choices=("auto",)),
    Key("model.rpn.aspect_ratios", [0.5, 1.0, 2.0], "anchor heights / widths; auto: fitted to the training boxes",
        types=(list, str), items=float, choices=("auto",)),
    Key("model.rpn.sizes_per_level", 0, "auto anchor sizes per level; 0: as many as the defaults", bounds=NONNEGATIVE),
    Key("model.rpn.anchor_offset", 0.5, "where anchors sit in their cell, in strides: 0.5 its centre; 0 its top-left "
                                        "corner (torchvision's, detectron2's)", bounds=FRACTION),
    Key("model.rpn.round_anchors", False, "round each cell anchor's corners to whole pixels (torchvision)"),
    Key("model.rpn.anchor_spacing", "stride", "anchors of a level spaced by its stride, or by the padded image's side "
                                              "over the map's (image: torchvision's rule)", choices=("stride", "image")),
    Key("model.rpn.fg_iou", 0.7, "an anchor at this IoU with a box is positive", bounds=FRACTION),
    Key("model.rpn.bg_iou", 0.3, "an anchor under this IoU with every box is negative", bounds=FRACTION),
    Key("model.rpn.batch_size_per_image", 256, "anchors sampled per image for the RPN's loss", bounds=POSITIVE),
    Key("model.rpn.positive_fraction", 0.5, "share of positives among them", bounds=FRACTION),
    Key("model.rpn.pre_nms_topk_train", 2000, "proposals per level before NMS, training", bounds=POSITIVE),
    Key("model.rpn.pre_nms_topk_test", 1000, "proposals per level before NMS, testing", bounds=POSITIVE,
        test_time=True),
    Key("model.rpn.post_nms_topk_train", 2000, "proposals per image after NMS, training", bounds=POSITIVE),
    Key("model.rpn.post_nms_topk_test", 300, "proposals per image after NMS, testing (the paper: 300)",
        bounds=POSITIVE, test_time=True),
    Key("model.rpn.nms_thresh", 0.7, "the RPN's NMS IoU", bounds=FRACTION, test_time=True),
    Key("model.rpn.score_thresh", 0.0, "proposals with an objectness probability under this are dropped "
                                       "(torchvision's MobileNetV3 detectors: 0.05)", bounds=FRACTION, test_time=True),
    Key("model.roi_head.pooler", "pool", "RoI max pooling (the papers) or RoI align", choices=("pool", "align")),
    Key("model.roi_head.resolution", 7, "pooled grid side", bounds=POSITIVE),
    Key("model.roi_head.sampling_ratio", 2, "RoI align: samples per bin side", bounds=NONNEGATIVE),
    Key("model.roi_head.aligned", True, "RoI align: shift by half a pixel (Mask R-CNN's correction; torchvision's "
                                        "Faster R-CNN: false)"),
    Key("model.roi_head.canonical_size", 224.0, "FPN: RoIs of this size pool from stride 16 (x2 size: next level)",
        bounds=POSITIVE),
    Key("model.roi_head.box_head", "fc", "two fully connected layers, or res5 (ResNet C4 backbones)",
        choices=("fc", "res5")),
    Key("model.roi_head.fc_dim", 1024, "width of the fc layers", bounds=POSITIVE),
    Key("model.roi_head.fg_iou", 0.5, "a RoI at this IoU with a box is foreground", bounds=FRACTION),
    Key("model.roi_head.bg_iou_low", 0.0, "background RoIs from [bg_iou_low, fg_iou) (Fast R-CNN: 0.1)",
        bounds=FRACTION),
    Key("model.roi_head.batch_size_per_image", 512, "RoIs sampled per image for the head's loss", bounds=POSITIVE),
    Key("model.roi_head.positive_fraction", 0.25, "share of foreground among them", bounds=FRACTION),
    Key("model.roi_head.bbox_reg_weights", [10.0, 10.0, 5.0, 5.0], "BoxCoder weights (x, y, w, h)", items=float),
    Key("model.roi_head.smooth_l1_beta", 1.0, "smooth L1 beta of the box loss", bounds=NONNEGATIVE),
    Key("model.roi_head.score_thresh", 0.05, "detections scoring under this are dropped", bounds=FRACTION,
        test_time=True),
    Key("model.roi_head.nms_thresh", 0.5, "per-class NMS IoU", bounds=FRACTION, test_time=True),
    Key("model.roi_head.detections_per_image", 100, "detections kept per image", bounds=POSITIVE, test_time=True),
    Key("model.roi_head.box_vote_iou", 0.0, "> 0: each detection becomes the score-weighted mean of the boxes "
                                            "that overlap it at this IoU", bounds=FRACTION, test_time=True),
    Key("model.roi_head.soft_nms_sigma", 0.0, "> 0: Gaussian Soft-NMS with this sigma instead of NMS",
        bounds=NONNEGATIVE, test_time=True),
    Key("model.roi_head.svd_ranks", [], "[fc6, fc7] ranks of a truncated-SVD head (detect compress svd)", items=int,
        bounds=NONNEGATIVE),
    Key("model.roi_head.fc_units", [], "[fc6, fc7] widths left by unit pruning; []: fc_dim", items=int,
        bounds=POSITIVE),
    Key("model.proposals.mode", "fast", "selective search mode when computed on the fly",
        choices=("single", "fast", "quality"), test_time=True),
    Key("model.proposals.max_side", 0, "on the fly: search a copy downscaled to this side; 0 keeps the size",
        bounds=NONNEGATIVE, test_time=True),
    Key("model.proposals.seed", 0, "selective search's seed"),
    Key("model.proposals.topk_train", 2000, "best-ranked external proposals used per training image",
        bounds=POSITIVE),
    Key("model.proposals.topk_test", 2000, "best-ranked external proposals used per test image", bounds=POSITIVE,
        test_time=True),
    Key("model.rcnn.crop_size", 227, "R-CNN: warped proposal side (the paper: 227)", bounds=POSITIVE),
    Key("model.rcnn.context", 16, "R-CNN: context pixels around the proposal at the warped size", bounds=NONNEGATIVE),
    Key("model.rcnn.fc_dim", 512, "R-CNN: feature size read by the SVMs and box regressors", bounds=POSITIVE),
    Key("model.rcnn.batch_rois", 128, "R-CNN: fine-tuning crops per batch (all images)", bounds=POSITIVE),
    Key("model.rcnn.fg_fraction", 0.25, "R-CNN: share of foreground crops", bounds=FRACTION),
    Key("model.rcnn.fg_iou", 0.5, "R-CNN: a crop at this IoU with a box is foreground", bounds=FRACTION),
    Key("model.rcnn.crops_per_chunk", 256, "R-CNN: crops per network call (features, testing)", bounds=POSITIVE),
    Key("model.rcnn.nms_thresh", 0.3, "R-CNN: per-class NMS IoU at test time (the paper: 0.3)", bounds=FRACTION,
        test_time=True),
    Key("model.rcnn.detections_per_image", 100, "R-CNN: detections kept per image", bounds=POSITIVE, test_time=True),
    Key("model.rcnn.bbox_reg", True, "R-CNN: apply the class-specific box regressors at test time", test_time=True),
    Key("model.rcnn.svm_proposals", 2000, "R-CNN: best proposals per training image whose features train the SVMs",
        bounds=POSITIVE),
    Key("model.rcnn.feature_dtype", "float16", "R-CNN: the on-disk feature cache's type",
        choices=("float16", "float32")),
    Key("model.rcnn.svm_C", 0.001, "R-CNN: the SVMs' regularisation", bounds=(0, INF)),
    Key("model.rcnn.svm_positive_weight", 2.0, "R-CNN: weight of positives in the SVM loss", bounds=(0, INF)),
    Key("model.rcnn.svm_passes", 3, "R-CNN: hard negative mining passes", bounds=POSITIVE),
    Key("model.rcnn.bbox_reg_lambda", 1000.0, "R-CNN: ridge regression's lambda (the paper: 1000)",
        bounds=NONNEGATIVE),
    Key("model.tiles.size", 0, "sliced inference: tiles of this side, cut at model.tiles.scale of the native "
                               "resolution; 0: off", bounds=NONNEGATIVE, test_time=True),
    Key("model.tiles.overlap", 0.2, "the share of a tile its neighbours share", bounds=(0, 0.9), test_time=True),
    Key("model.tiles.full_image", True, "also run the whole image at the test size (for objects larger than a "
                                        "tile)", test_time=True),
    Key("model.tiles.scale", 1.0, "the scale of the image the tiles are cut from (1: its native resolution)",
        bounds=(0.1, 4), test_time=True),
    Key("model.tiles.batch", 4, "tiles per call of the detector", bounds=POSITIVE, test_time=True),
    Key("model.fast_rcnn.pyramid_scales", [], "Fast R-CNN multi-scale testing: image scale factors", items=float,
        bounds=(0.1, 4), test_time=True),
    Key("model.fast_rcnn.pyramid_roi_size", 224, "each RoI pooled from the scale where its area is closest to "
                                                 "this squared (the paper)", bounds=POSITIVE, test_time=True),
    # the input
    Key("input.min_size", 600, "short side when training; a list draws one per image (multi-scale)",
        types=(int, list), items=int, bounds=POSITIVE),
    Key("input.min_size_test", 600, "short side when testing", types=(int,), bounds=POSITIVE, test_time=True),
    Key("input.max_size", 1000, "cap on the long side", bounds=POSITIVE, test_time=True),
    Key("input.scale_jitter", 0.0, "multi-scale training: each image's resize times a gain drawn from "
                                   "[1 - j, 1 + j] (slower steps on a CPU: docs/recipe.md)", bounds=(0, 0.9)),
    Key("input.flip_prob", 0.5, "horizontal flip probability in training", bounds=FRACTION),
    Key("input.color_jitter", 0.0, "colour jitter strength in training", bounds=NONNEGATIVE),
    Key("input.crop_prob", 0.0, "random crop keeping every box whole, before the resize (zooms in)",
        bounds=FRACTION),
    Key("input.tile_crop_prob", 0.0, "share of training images seen as a model.tiles.size crop at "
                                     "model.tiles.scale (native resolution) holding an object, not resized whole",
        bounds=FRACTION),
    # the data
    *_dataset_keys("train", "training set"),
    *_dataset_keys("test", "test set"),
    *_dataset_keys("val", "validation set (evaluations during training; unset: the test set)"),
    Key("data.classes", [], "class names in label order; []: from the training annotations", items=str),
    Key("data.category_map", {}, "rename annotation names, {name: class}, or {name: null} to drop",
        types=(dict,)),
    Key("data.num_workers", 2, "image-decoding worker processes in training", bounds=NONNEGATIVE),
    Key("data.max_unreadable", 0.01, "share of training images that may fail to read (each replaced) before the "
                                     "run stops", bounds=FRACTION),
    # the training run
    Key("train.max_iter", 1000, "iterations (with max_minutes: a cap)", bounds=POSITIVE),
    Key("train.max_minutes", 0.0, "wall-clock budget; > 0 scales the schedule to it", bounds=NONNEGATIVE),
    Key("train.batch_size", 2, "images per step, over all processes", bounds=POSITIVE),
    Key("train.optimizer", "sgd", "sgd (momentum) or adamw (momentum is its beta1)", choices=("sgd", "adamw")),
    Key("train.lr", 0.01, "base learning rate", bounds=NONNEGATIVE),
    Key("train.momentum", 0.9, "SGD momentum (AdamW's beta1)", bounds=FRACTION),
    Key("train.weight_decay", 0.0001, "weight decay (not on norm layers and biases)", bounds=NONNEGATIVE),
    Key("train.lr_schedule", "step", "step or cosine decay over the run", choices=("step", "cosine")),
    Key("train.steps", [0.67, 0.89], "fractions of the run where the step schedule multiplies lr by gamma",
        items=float, bounds=FRACTION),
    Key("train.gamma", 0.1, "the step schedule's factor", bounds=NONNEGATIVE),
    Key("train.warmup_iters", 100, "linear warm-up iterations", bounds=NONNEGATIVE),
    Key("train.warmup_factor", 0.001, "lr factor at the first iteration", bounds=FRACTION),
    Key("train.grad_clip", 10.0, "max gradient norm; 0 disables", bounds=NONNEGATIVE),
    Key("train.ema", 0.0, "decay of a moving average of the weights that is evaluated and saved; 0: off",
        bounds=(0, 0.999999)),
    Key("train.amp", True, "mixed precision on CUDA (ignored on CPU)"),
    Key("train.eval_period", 0, "evaluate on data.val (else data.test) every this many iterations, or minutes "
                                "under max_minutes; 0: only the test split at the end", types=(float,),
        bounds=NONNEGATIVE),
    Key("train.eval_images", 0, "evaluations during training use the split's first this many images; 0: all (the "
                                "final evaluation always uses all)", bounds=NONNEGATIVE),
    Key("train.best_metric", "AP", "the metric model_best.pth is kept by", choices=("AP", "AP50", "AP75", "APs", "APm",
                                                                                      "APl")),
    Key("train.patience", 0, "stop after this many evaluations without a better best_metric; 0: never",
        bounds=NONNEGATIVE),
    Key("train.loggers", [], "records besides log.jsonl and results.csv: [tensorboard]", items=str),
    Key("train.checkpoint_period", 500, "write model_<iter>.pth every this many iterations; 0: only the last",
        bounds=NONNEGATIVE),
    Key("train.log_period", 20, "log the losses every this many iterations", bounds=POSITIVE),
    Key("train.seed", 0, "seed of the data order, augmentation and initialisation"),
    Key("test.batch_size", 2, "images per evaluation batch", bounds=POSITIVE, test_time=True),
    Key("device", "auto", "auto | cpu | cuda | cuda:N", test_time=True),
]
KEYS_BY_NAME: Dict[str, Key] = {k.name: k for k in KEYS}


def _nested_defaults() -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for key in KEYS:
        node = tree
        *sections, leaf = key.name.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = copy.deepcopy(key.default)
    return tree


DEFAULTS: Dict[str, Any] = _nested_defaults()
_TYPE_NAMES = {bool: "true/false", int: "integer", float: "number", str: "string", list: "list",
               dict: "mapping", type(None): "null"}


def describe_key(key: Key) -> str:
    """``name  default  (what it accepts)  doc`` on one line: what ``--help`` prints for a key."""
    accepts = []
    if key.choices:
        accepts.append(" | ".join(key.choices) + (" | a list" if list in key.accepted() else ""))
    if key.bounds is not None:
        low, high = key.bounds
        accepts.append(f">= {low:g}" if high == INF else f"{low:g}..{high:g}")
    default = json.dumps(key.default) if not isinstance(key.default, str) else key.default
    return f"{key.name}={default}" + (f"  ({'; '.join(accepts)})" if accepts else "") + f"  {key.doc}"


def format_keys(test_time_only: bool = False) -> str:
    """Every key (or only the test-time ones), one per line, grouped by section: ``--help``'s list."""
    lines, section = [], None
    for key in KEYS:
        if test_time_only and not key.test_time:
            continue
        top = key.name.rpartition(".")[0] or "(top)"
        if top != section:
            lines.append(f"{top}:")
            section = top
        lines.append("  " + describe_key(key))
    return "\n".join(lines)


class Config(dict):
    """A nested dict with attribute access (``cfg.train.lr``); leaves are plain values."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            nearest = difflib.get_close_matches(name, list(self.keys()), n=1)
            hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
            raise AttributeError(f"config has no key {name!r}{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> Dict[str, Any]:
        """A plain-dict deep copy (for YAML, JSON and checkpoints)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def load_config(path: Optional[Union[str, Path]] = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the file (after its bases), then ``overrides`` (``"key.sub=value"`` strings)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        for source, data in _read_with_bases(Path(path), ()):
            _merge(cfg, data, source, prefix="")
    apply_overrides(cfg, overrides)
    return _to_config(cfg)


def config_from_dict(data: Dict[str, Any], source: str = "checkpoint") -> Config:
    """Validate a plain dict (e.g. the config stored in a checkpoint) against the defaults."""
    cfg = copy.deepcopy(DEFAULTS)
    _merge(cfg, {k: v for k, v in data.items() if k != BASE_KEY}, source, prefix="")
    return _to_config(cfg)


def _yaml_problem(error: Exception) -> str:
    """PyYAML's error on one line: what is wrong and where (its own text spans several lines)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> None:
    """Apply ``"a.b.c=value"`` strings in place; values are parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: cannot parse the value of {key!r} ({raw!r}): {_yaml_problem(e)}") from None
        nested: Dict[str, Any] = {}
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _merge(cfg, nested, "command line", prefix="")


def save_config(cfg: Dict[str, Any], path: Union[str, Path]) -> None:
    """Write the fully resolved config as YAML (readable back with :func:`load_config`)."""
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def _read_with_bases(path: Path, chain: Tuple[Path, ...]) -> List[Tuple[str, Dict[str, Any]]]:
    path = path.resolve() if path.is_absolute() else Path.cwd() / path
    if path in chain:
        raise ConfigError(f"{path}: base files form a cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    layers: List[Tuple[str, Dict[str, Any]]] = []
    for base in bases:
        layers.extend(_read_with_bases(path.parent / base, chain + (path,)))
    layers.append((str(path), data))
    return layers


def _all_keys(tree: Dict[str, Any], prefix: str = "") -> List[str]:
    keys = []
    for k, v in tree.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, dict) and full not in KEYS_BY_NAME:
            keys.extend(_all_keys(v, full + "."))
    return keys


def _merge(cfg: Dict[str, Any], data: Dict[str, Any], source: str, prefix: str) -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            raise ConfigError(f"{source}: unknown key {full!r}{_nearest_hint(full)}")
        current = cfg[key]
        if isinstance(current, dict) and full not in KEYS_BY_NAME:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full!r} is a section (keys: {', '.join(current)}), "
                                  f"got the value {value!r}")
            _merge(current, value, source, prefix=full + ".")
        else:
            # Types come from the defaults, not from the value a file already put there.
            cfg[key] = _check_value(KEYS_BY_NAME[full], value, source)


def _nearest_hint(full: str) -> str:
    candidates = _all_keys(DEFAULTS)
    parent, _, leaf = full.rpartition(".")
    siblings = [k for k in candidates if k.rpartition(".")[0] == parent]
    initials = lambda name: "".join(w[0] for w in name.split("_") if w)
    # An abbreviation of a sibling, or the other way round: "learning_rate" for "lr".
    nearest = [k for k in siblings if initials(leaf) == k.rpartition(".")[2] or
               initials(k.rpartition(".")[2]) == leaf]
    nearest = nearest or difflib.get_close_matches(full, candidates, n=1, cutoff=0.5)
    nearest = nearest or difflib.get_close_matches(full, siblings, n=1, cutoff=0.0)
    return f" (nearest valid key: {nearest[0]!r})" if nearest else ""


def _check_value(spec: Key, value: Any, source: str) -> Any:
    """``value`` checked against ``spec`` (type, list items, choices, bounds); integers become floats
    where a number is expected."""
    key, allowed = spec.name, spec.accepted()
    if float in allowed and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    if not any(_is_instance(value, t) for t in allowed):
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
        wanted = ("an " if wanted[0] in "aeiou" else "a ") + wanted if not wanted.startswith(("true", "null")) else wanted
        raise ConfigError(f"{source}: {key!r} must be {wanted}, got {value!r} ({type(value).__name__})")
    if isinstance(value, list) and spec.items and not all(_is_instance(v, spec.items) for v in value):
        raise ConfigError(f"{source}: {key!r} must be a list of {_TYPE_NAMES[spec.items]}s, got {value!r}")
    if spec.choices and not isinstance(value, list) and value not in spec.choices:
        also = " or a list" if list in allowed else ""
        raise ConfigError(f"{source}: {key!r} must be one of {list(spec.choices)}{also}, got {value!r}")
    if spec.bounds is not None:
        low, high = spec.bounds
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (low <= v <= high and v == v):
                within = f">= {low:g}" if high == INF else f"between {low:g} and {high:g}"
                raise ConfigError(f"{source}: {key!r} must be {within}, got {v!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        value = float(value)
    return copy.deepcopy(value)


def _is_instance(value: Any, t: type) -> bool:
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def _to_config(tree: Dict[str, Any], prefix: str = "") -> Config:
    out = Config()
    for k, v in tree.items():
        full = f"{prefix}{k}"
        out[k] = _to_config(v, full + ".") if isinstance(v, dict) and full not in KEYS_BY_NAME else v
    return out
