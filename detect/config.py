"""Configuration: defaults in code, YAML files that may extend a base file, command-line overrides.

    cfg = load_config("configs/faster_rcnn/bccd.yaml", ["train.max_iter=2000", "input.min_size=[480,512]"])
    cfg.train.max_iter   # 2000

- Every key has a default in :data:`DEFAULTS`; a file or an override only changes known keys. An
  unknown key or a value of the wrong type is a :class:`ConfigError` naming the key, where it came
  from (file or command line) and the nearest valid key.
- A file may name the file it extends with ``_base_: relative/path.yaml`` (or a list, applied in
  order); the base is read first and the file's keys override it.
- Override values are parsed as YAML scalars or lists (``a.b=3``, ``a.b=[1,2]``, ``a.b=null``).
"""
from __future__ import annotations

import copy
import math
import difflib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from detect.errors import ConfigError

BASE_KEY = "_base_"


def _dataset_defaults() -> Dict[str, Any]:
    return {
        "format": "coco",     # coco | voc
        "root": None,         # voc: folder with Annotations/, JPEGImages/, ImageSets/Main/
        "split": None,        # voc: name of ImageSets/Main/<split>.txt
        "ann_file": None,     # coco: annotation json
        "img_dir": None,      # coco: folder the json's file_name are relative to
        "proposals": None,    # Fast R-CNN / R-CNN: proposals file of this split (tools/proposals.py)
    }


DEFAULTS: Dict[str, Any] = {
    "model": {
        "type": "faster_rcnn",
        "backbone": {
            "name": "resnet50",    # torchvision model name (vgg16, resnet18, resnet50, mobilenet_v3_large) or tiny
            "pretrained": None,    # torchvision weights name ("DEFAULT", "IMAGENET1K_V1"), a local file, or null
            "fpn": False,
            "fpn_channels": 256,
            "fpn_strides": [],     # strides of the stages the FPN reads; empty: the backbone's default
            "width": 1.0,          # channel multiplier (tiny, mobilenet_v3_large from scratch)
            "norm": "auto",        # frozen_bn | bn | gn; auto: frozen_bn with pretrained weights, else gn
            "freeze_at": -1,       # stages without gradients; -1: 2 with pretrained weights, else 0
            "channels_last": False,  # run the backbone on channels-last maps (faster for MobileNetV3 on a CPU)
        },
        "weights": None,           # a detection checkpoint to start from (transfer learning)
        "test_flip": False,        # inference also scores each image's mirror image and averages the two
                                   # (Fast / Faster R-CNN; about twice the time; detect.models.two_stage)
        "test_scales": [],         # inference also scores the RoIs on the images resized by these factors
                                   # (e.g. [0.75]) and averages all views (Fast / Faster R-CNN)
        "rpn": {
            "anchor_sizes": [],    # one list per level; empty: [32..512] on one map, 8 x stride per FPN level;
            "aspect_ratios": [0.5, 1.0, 2.0],  # auto: fitted to the training boxes when training starts
            "sizes_per_level": 0,  # auto sizes per level; 0: as many as the defaults (1 per FPN level, 5 on one map)
            "fg_iou": 0.7,
            "bg_iou": 0.3,
            "batch_size_per_image": 256,
            "positive_fraction": 0.5,
            "pre_nms_topk_train": 2000,   # per level
            "pre_nms_topk_test": 1000,
            "post_nms_topk_train": 2000,
            "post_nms_topk_test": 300,    # the paper tests with 300 proposals
            "nms_thresh": 0.7,
        },
        "roi_head": {
            "pooler": "pool",      # pool (RoI max pooling, the papers) | align
            "resolution": 7,
            "sampling_ratio": 2,   # RoI align only
            "canonical_size": 224.0,  # FPN: RoIs of this size pool from stride 16 (x2 size: next level)
            "box_head": "fc",      # fc (two fully connected layers) | res5 (ResNet C4 backbones)
            "fc_dim": 1024,
            "fg_iou": 0.5,
            "bg_iou_low": 0.0,     # Fast R-CNN: 0.1 (background from [0.1, 0.5))
            "batch_size_per_image": 512,
            "positive_fraction": 0.25,
            "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
            "smooth_l1_beta": 1.0,
            "score_thresh": 0.05,
            "nms_thresh": 0.5,
            "detections_per_image": 100,
            "box_vote_iou": 0.0,   # > 0: refine each detection by box voting at this IoU (0: off)
            "soft_nms_sigma": 0.0,  # > 0: Gaussian Soft-NMS with this sigma instead of NMS (0: NMS)
            "svd_ranks": [],       # [fc6, fc7] ranks of a truncated-SVD compressed head (tools/compress.py)
            "fc_units": [],        # [fc6, fc7] widths left by unit pruning (tools/compress.py prune); [] = fc_dim
        },
        "proposals": {             # Fast R-CNN / R-CNN: external proposals (data.<split>.proposals)
            "mode": "fast",        # selective search mode when computed on the fly (no proposals file)
            "max_side": 0,         # on the fly: search a copy downscaled to this side; 0 keeps the size
            "seed": 0,
            "topk_train": 2000,    # best-ranked proposals used per image
            "topk_test": 2000,
        },
        "rcnn": {
            "crop_size": 227,      # warped proposal side (the paper: 227)
            "context": 16,         # context pixels around the proposal at the warped size (the paper: 16)
            "fc_dim": 512,         # feature size read by the SVMs and box regressors
            "batch_rois": 128,     # fine-tuning crops per batch (all images), 25% foreground
            "fg_fraction": 0.25,
            "fg_iou": 0.5,
            "crops_per_chunk": 256,  # crops per network call when extracting features / testing
            "nms_thresh": 0.3,     # the paper's per-class NMS at test time
            "detections_per_image": 100,
            "bbox_reg": True,      # apply the class-specific box regressors at test time
            "svm_proposals": 2000,  # best proposals per training image whose features train the SVMs
            "feature_dtype": "float16",  # the on-disk feature cache: float16 | float32
            "svm_C": 0.001,
            "svm_positive_weight": 2.0,
            "svm_passes": 3,       # hard negative mining passes
            "bbox_reg_lambda": 1000.0,
        },
        "fast_rcnn": {
            "pyramid_scales": [],  # multi-scale testing: image scale factors; each RoI is pooled from the
            "pyramid_roi_size": 224,  # scale where its area is closest to pyramid_roi_size^2 (the paper)
        },
    },
    "input": {
        "min_size": 600,           # short side when training; a list draws one per image (multi-scale)
        "min_size_test": 600,
        "max_size": 1000,          # cap on the long side
        "flip_prob": 0.5,
        "color_jitter": 0.0,
        "crop_prob": 0.0,          # random crop keeping every box whole, before the resize (zooms in)
    },
    "data": {
        "train": _dataset_defaults(),
        "test": _dataset_defaults(),
        "classes": [],             # class names in label order; empty: from the training annotations
        "category_map": {},        # rename annotation names, {name: class} or {name: null} to drop
        "num_workers": 2,
        "max_unreadable": 0.01,    # share of training images that may fail to read (each replaced) before the run stops
    },
    "train": {
        "max_iter": 1000,
        "max_minutes": 0.0,        # wall-clock budget; > 0 scales the schedule to it (max_iter still caps)
        "batch_size": 2,           # images per step, over all processes
        "optimizer": "sgd",        # sgd (momentum) | adamw (momentum is its beta1)
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0001,
        "lr_schedule": "step",     # step | cosine
        "steps": [0.67, 0.89],     # fractions of the run where the step schedule multiplies lr by gamma
        "gamma": 0.1,
        "warmup_iters": 100,
        "warmup_factor": 0.001,
        "grad_clip": 10.0,         # max gradient norm; 0 disables
        "ema": 0.0,                # decay of a moving average of the weights that is evaluated and saved; 0: off
        "amp": True,               # mixed precision on CUDA (ignored on CPU)
        "eval_period": 0,          # 0: only at the end
        "checkpoint_period": 500,
        "log_period": 20,
        "seed": 0,
    },
    "test": {
        "batch_size": 2,
    },
    "device": "auto",              # auto | cpu | cuda | cuda:N
}

# Keys whose type cannot be read off their default.
_TYPES: Dict[str, Tuple[type, ...]] = {
    "input.min_size": (int, list),
    "input.min_size_test": (int,),
    "data.category_map": (dict,),
    "model.backbone.pretrained": (str, type(None)),
    "model.weights": (str, type(None)),
    "model.rpn.anchor_sizes": (list, str),
    "model.rpn.aspect_ratios": (list, str),
}
_LIST_ITEMS: Dict[str, type] = {"input.min_size": int, "model.backbone.fpn_strides": int, "data.classes": str,
                                 "model.rpn.anchor_sizes": list,
                                 "model.rpn.aspect_ratios": float, "model.roi_head.bbox_reg_weights": float,
                                 "train.steps": float, "model.roi_head.svd_ranks": int, "model.roi_head.fc_units": int,
                                 "model.fast_rcnn.pyramid_scales": float, "model.test_scales": float}
_CHOICES: Dict[str, Sequence[str]] = {
    "model.rpn.anchor_sizes": ("auto",),   # or a list
    "model.rpn.aspect_ratios": ("auto",),  # or a list
    "model.rcnn.feature_dtype": ("float16", "float32"),
    "model.proposals.mode": ("single", "fast", "quality"),
    "train.lr_schedule": ("step", "cosine"),
    "train.optimizer": ("sgd", "adamw"),
    "model.backbone.name": ("vgg16", "resnet18", "resnet50", "mobilenet_v3_large", "tiny"),
    "model.backbone.norm": ("auto", "frozen_bn", "bn", "gn"),
    "model.roi_head.pooler": ("pool", "align"),
    "model.roi_head.box_head": ("fc", "res5"),
    "data.train.format": ("coco", "voc"),
    "data.test.format": ("coco", "voc"),
}
# Numbers outside these closed ranges are mistakes (a negative max_iter used to train one iteration).
_RANGES: Dict[str, Tuple[float, float]] = {
    "train.max_iter": (1, math.inf), "train.max_minutes": (0, math.inf), "train.batch_size": (1, math.inf),
    "train.lr": (0, math.inf), "train.warmup_iters": (0, math.inf), "train.checkpoint_period": (0, math.inf),
    "train.log_period": (1, math.inf), "train.eval_period": (0, math.inf), "train.ema": (0, 0.999999),
    "train.grad_clip": (0, math.inf), "train.weight_decay": (0, math.inf), "train.gamma": (0, math.inf),
    "test.batch_size": (1, math.inf), "data.num_workers": (0, math.inf), "data.max_unreadable": (0, 1),
    "input.min_size": (1, math.inf), "input.min_size_test": (1, math.inf), "input.max_size": (1, math.inf),
    "input.flip_prob": (0, 1), "input.crop_prob": (0, 1), "input.color_jitter": (0, math.inf),
    "model.test_scales": (0.1, 4),
}
_TYPE_NAMES = {bool: "true/false", int: "integer", float: "number", str: "string", list: "list",
               dict: "mapping", type(None): "null"}


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
        if isinstance(v, dict) and full not in _TYPES:
            keys.extend(_all_keys(v, full + "."))
    return keys


def _merge(cfg: Dict[str, Any], data: Dict[str, Any], source: str, prefix: str) -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            raise ConfigError(f"{source}: unknown key {full!r}{_nearest_hint(full)}")
        current = cfg[key]
        if isinstance(current, dict) and full not in _TYPES:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full!r} is a section (keys: {', '.join(current)}), "
                                  f"got the value {value!r}")
            _merge(current, value, source, prefix=full + ".")
        else:
            # Types come from the defaults, not from the value a file already put there.
            cfg[key] = _check_value(full, value, _default_of(full), source)


def _default_of(dotted: str) -> Any:
    node: Any = DEFAULTS
    for part in dotted.split("."):
        node = node[part]
    return node


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


def _check_value(key: str, value: Any, default: Any, source: str) -> Any:
    allowed = _TYPES.get(key)
    if allowed is None:
        allowed = (str, type(None)) if default is None else (type(default),)
    if float in allowed and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    ok = any(_is_instance(value, t) for t in allowed)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
        wanted = ("an " if wanted[0] in "aeiou" else "a ") + wanted if not wanted.startswith(("true", "null")) else wanted
        raise ConfigError(f"{source}: {key!r} must be {wanted}, got {value!r} ({type(value).__name__})")
    item_type = _LIST_ITEMS.get(key)
    if isinstance(value, list) and item_type and not all(_is_instance(v, item_type) for v in value):
        raise ConfigError(f"{source}: {key!r} must be a list of {_TYPE_NAMES[item_type]}s, got {value!r}")
    if key in _CHOICES and not isinstance(value, list) and value not in _CHOICES[key]:
        also = " or a list" if list in allowed else ""
        raise ConfigError(f"{source}: {key!r} must be one of {list(_CHOICES[key])}{also}, got {value!r}")
    if key in _RANGES:
        low, high = _RANGES[key]
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not (low <= v <= high and v == v):
                within = f">= {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
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
        out[k] = _to_config(v, full + ".") if isinstance(v, dict) and full not in _TYPES else v
    return out
