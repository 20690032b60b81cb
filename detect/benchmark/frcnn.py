"""Faster R-CNN against torchvision's ``FasterRCNN`` with the same backbone and input size, in one run.

Measured on the same images, on the same machine, in one process:

- inference latency per image, each library at its own defaults (torchvision tests with 1000
  proposals, ``detect`` with the paper's 300), and at equal proposal counts (the four settings take
  turns image by image over several rounds; medians);
- the backbone's own time (the floor both share), so the time outside it can be compared;
- training step time on the same batches (the two models take turns, median step);
- optionally, accuracy after training each from scratch for the same wall-clock budget, both
  evaluated by the same evaluator.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision

from detect.benchmark import ACCURACY_RUNS
from detect.config import Config, config_from_dict
from detect.data.build import build_dataset
from detect.data.collate import collate_detection
from detect.data.transforms import build_transforms
from detect.inference.runtime import prepare_for_inference
from detect.models import build_model
from detect.models.anchor_fit import settle_anchors

_TV_BUILDERS = {
    ("mobilenet_v3_large", True): "fasterrcnn_mobilenet_v3_large_fpn",
    ("resnet50", True): "fasterrcnn_resnet50_fpn",
}

LOG = logging.getLogger(__name__)


def torchvision_model(cfg: Config, proposals_test: int = 1000) -> torch.nn.Module:
    """torchvision's Faster R-CNN for the config's backbone, classes and input size, from random init."""
    key = (cfg.model.backbone.name, bool(cfg.model.backbone.fpn))
    if key not in _TV_BUILDERS:
        raise ValueError(f"no torchvision counterpart for backbone {key[0]} with fpn={key[1]}; "
                         f"choose one of {sorted(_TV_BUILDERS)}")
    builder = getattr(torchvision.models.detection, _TV_BUILDERS[key])
    return builder(weights=None, weights_backbone=None, num_classes=len(cfg.data.classes) + 1,
                   min_size=cfg.input.min_size_test, max_size=cfg.input.max_size,
                   rpn_post_nms_top_n_test=proposals_test, rpn_pre_nms_top_n_test=1000)


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def latencies(settings: Dict[str, Tuple[torch.nn.Module, Callable[[], None], Callable[[torch.Tensor], Any],
                                        Callable[[List[torch.Tensor]], torch.Tensor]]],
              images: List[torch.Tensor], rounds: int = 3) -> Dict[str, Dict[str, float]]:
    """Seconds per image of each setting's whole model and of its backbone alone (batch of one).

    ``settings``: name -> (model, apply the setting, backbone, batcher). The settings take turns
    image by image, ``rounds`` times, so that a change in the machine's load falls on all of them;
    each figure is the median over the rounds, averaged over the images.
    """
    total = {name: np.zeros((rounds, len(images))) for name in settings}
    back = {name: np.zeros((rounds, len(images))) for name in settings}
    for model, apply, backbone, batcher in settings.values():  # warm-up
        model.eval()
        apply()
        model([images[0]])
        backbone(batcher([images[0]]))
    batches = {name: [s[3]([im]) for im in images] for name, s in settings.items()}
    for r in range(rounds):
        for i, im in enumerate(images):
            for name, (model, apply, backbone, _) in settings.items():
                apply()
                total[name][r, i] = _seconds(lambda: model([im]))
                back[name][r, i] = _seconds(lambda: backbone(batches[name][i]))
    out = {}
    for name in settings:
        t = float(np.median(total[name], axis=0).mean())
        b = float(np.median(back[name], axis=0).mean())
        out[name] = {"total_s": t, "backbone_s": b, "outside_backbone_s": t - b}
    return out


def train_step_times(models: Dict[str, torch.nn.Module], batches: Sequence, lr: float = 0.01) -> Dict[str, float]:
    """Median seconds of forward + backward + SGD step of each model over ``batches`` (after one
    warm-up step each); the models take turns batch by batch."""
    optimizers = {}
    for name, model in models.items():
        model.train()
        optimizers[name] = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)

    def step(name, images, targets):
        losses = models[name](images, targets)
        optimizers[name].zero_grad()
        sum(losses.values()).backward()
        optimizers[name].step()

    for name in models:
        step(name, *batches[0])
    seconds = {name: [] for name in models}
    for images, targets in batches[1:]:
        for name in models:
            seconds[name].append(_seconds(lambda: step(name, images, targets)))
    return {name: float(np.median(v)) for name, v in seconds.items()}


def run_frcnn_benchmark(cfg: Config, num_images: int = 10, train_steps: int = 5, seed: int = 0,
                        rounds: int = 3) -> Dict[str, Any]:
    torch.manual_seed(seed)
    train_set = build_dataset(cfg, "train", transforms=build_transforms(cfg, train=True), class_names=cfg.data.classes)
    cfg = with_classes(cfg, train_set.class_names)
    settle_anchors(cfg, train_set)  # "auto" anchors: fitted as training would fit them
    test_set = build_dataset(cfg, "test", transforms=build_transforms(cfg, train=False), class_names=cfg.data.classes)
    images, _ = collate_detection([test_set[i] for i in range(min(num_images, len(test_set)))])
    train_batches = []
    for i in range(train_steps + 1):
        ims, tg = collate_detection([train_set[2 * i], train_set[2 * i + 1]])
        train_batches.append((ims, [{"boxes": t["boxes"], "labels": t["labels"]} for t in tg]))

    ours = prepare_for_inference(build_model(cfg))  # the inference runtime's CPU choices, as Predictor applies them
    theirs = torchvision_model(cfg)
    post_ours = cfg.model.rpn.post_nms_topk_test

    def tv_batch(ims):
        return theirs.transform(ims)[0].tensors

    def our_batch(ims):
        return ours.batcher(ims)[0]

    def proposals(model, k):
        def apply():  # the test-time post-NMS proposal count, in each library's own attribute
            if model is ours:
                ours.rpn.post_nms_topk = (ours.rpn.post_nms_topk[0], k)
            else:
                theirs.rpn._post_nms_top_n["testing"] = k
        return apply

    counts = {"detect_default": (ours, post_ours), "torchvision_default": (theirs, 1000),
              "detect_1000": (ours, 1000), "torchvision_equal": (theirs, post_ours)}
    settings = {name: (model, proposals(model, k), model.backbone, our_batch if model is ours else tv_batch)
                for name, (model, k) in counts.items()}
    rows: Dict[str, Any] = {"images": len(images), "image_size": list(images[0].shape[1:]), "rounds": rounds,
                            "backbone": cfg.model.backbone.name, "fpn": cfg.model.backbone.fpn}
    measured = latencies(settings, images, rounds)
    for name, (_, k) in counts.items():
        rows[name] = {"proposals": k, **measured[name]}
    proposals(ours, post_ours)()
    proposals(theirs, 1000)()
    rows["train_step_s"] = train_step_times({"detect": ours, "torchvision": theirs}, train_batches)
    rows["ratios"] = {
        "latency_defaults": rows["detect_default"]["total_s"] / rows["torchvision_default"]["total_s"],
        "outside_backbone_equal_300": rows["detect_default"]["outside_backbone_s"] / rows["torchvision_equal"]["outside_backbone_s"],
        "outside_backbone_equal_1000": rows["detect_1000"]["outside_backbone_s"] / rows["torchvision_default"]["outside_backbone_s"],
        "train_step": rows["train_step_s"]["detect"] / rows["train_step_s"]["torchvision"],
    }
    return rows


def format_frcnn(rows: Dict[str, Any]) -> str:
    h, w = rows["image_size"]
    lines = [f"Faster R-CNN, {rows['backbone']}{'-FPN' if rows['fpn'] else ''}, {rows['images']} images at {h}x{w}, "
             f"CPU, {torch.get_num_threads()} threads, random init, median of {rows['rounds']} interleaved rounds",
             f"{'setting':<22} {'proposals':>9} {'total ms':>9} {'backbone ms':>12} {'outside ms':>11}"]
    for key in ("detect_default", "torchvision_default", "detect_1000", "torchvision_equal"):
        r = rows[key]
        lines.append(f"{key:<22} {r['proposals']:>9} {1000 * r['total_s']:>9.1f} {1000 * r['backbone_s']:>12.1f} "
                     f"{1000 * r['outside_backbone_s']:>11.1f}")
    t = rows["train_step_s"]
    lines.append(f"train step (2 images): detect {1000 * t['detect']:.0f} ms, torchvision {1000 * t['torchvision']:.0f} ms")
    lines.append("ratios detect / torchvision: " + ", ".join(f"{k} {v:.2f}x" for k, v in rows["ratios"].items()))
    return "\n".join(lines)


def with_classes(cfg: Config, class_names: Sequence[str]) -> Config:
    """A copy of ``cfg`` whose ``data.classes`` is filled (from the training set when it was empty)."""
    data = cfg.to_dict()
    data["data"]["classes"] = list(cfg.data.classes) or list(class_names)
    return config_from_dict(data, source="benchmark")


# what a dataset's config decides of the recipe that fine-tunes on it; the augmentation stays the recipe's
DATASET_INPUT_KEYS = ("min_size", "min_size_test", "max_size")


def finetune_config(cfg: Config, recipe: Config) -> Config:
    """``recipe`` (e.g. ``configs/faster_rcnn/finetune.yaml``) on ``cfg``'s data: its ``data`` section
    and its image sizes (:data:`DATASET_INPUT_KEYS`) replaced by ``cfg``'s."""
    data, dataset = recipe.to_dict(), cfg.to_dict()
    data["data"] = dataset["data"]
    data["input"].update({k: dataset["input"][k] for k in DATASET_INPUT_KEYS})
    return config_from_dict(data, source="benchmark")


def accuracy_same_budget(cfg: Config, minutes: float, output_dir, finetune: Optional[Config] = None,
                         runs: Sequence[str] = ACCURACY_RUNS) -> Dict[str, Any]:
    """Train for the same wall-clock budget with the same data, then evaluate with the same evaluator:
    ``detect``'s model (``cfg``) and torchvision's from scratch with the same schedule and batch size,
    and ``detect_finetuned``: the recipe ``finetune`` (e.g. ``configs/faster_rcnn/finetune.yaml``)
    on the same data. ``runs``: which of :data:`ACCURACY_RUNS` train."""
    from pathlib import Path

    from detect.training.trainer import train

    data = with_classes(cfg, build_dataset(cfg, "train", check_files=False).class_names).to_dict()
    if cfg.train.eval_period > 0:  # validations would spend each run's budget differently
        LOG.warning("train.eval_period=%g is ignored: the same-budget runs train without validations",
                    cfg.train.eval_period)
    data["train"].update(max_minutes=float(minutes), max_iter=10 ** 9, eval_period=0)
    settings = {}
    for name in runs:
        if name == "detect_finetuned":
            if finetune is None:
                raise ValueError("the detect_finetuned run needs a fine-tuning recipe (finetune=)")
            tuned = finetune_config(config_from_dict(data, source="benchmark"), finetune).to_dict()
            tuned["train"].update(max_minutes=float(minutes), max_iter=10 ** 9, eval_period=0)
            settings[name] = tuned
        else:
            settings[name] = data
    results: Dict[str, Any] = {}
    for name, run_data in settings.items():
        run_cfg = config_from_dict(run_data, source="benchmark")  # each run fits its own copy (auto anchors)
        torch.manual_seed(run_cfg.train.seed)
        model = torchvision_model(run_cfg) if name == "torchvision" else None
        metrics = train(run_cfg, Path(output_dir) / name, progress=False, model=model)
        log = [json.loads(line) for line in (Path(output_dir) / name / "log.jsonl").read_text().splitlines()]
        iterations = max(r["iteration"] for r in log)
        results[name] = {"AP": metrics["coco"]["AP"], "AP50": metrics["coco"]["AP50"], "iterations": iterations,
                         "per_class_AP50": {k: v["AP50"] for k, v in metrics["coco"]["per_class"].items()}}
        results[name]["AP_per_iteration"] = results[name]["AP"] / max(iterations, 1)
    if "detect" in results and "torchvision" in results:
        results["AP50_ratio"] = results["detect"]["AP50"] / max(results["torchvision"]["AP50"], 1e-9)
    results["minutes"] = minutes
    return results


def format_accuracy(rows: Dict[str, Dict[str, Any]]) -> str:
    """One row per dataset and run of :func:`accuracy_same_budget` results (``{dataset: result}``)."""
    minutes = next(iter(rows.values()))["minutes"]
    labels = {"detect": "detect, from scratch", "detect_finetuned": "detect, fine-tuned",
              "torchvision": "torchvision, from scratch"}
    lines = [f"{minutes:g} min of training each on this machine, same data, batch size and evaluator",
             f"{'dataset':<12} {'run':<26} {'iters':>7} {'AP':>6} {'AP50':>6}"]
    for dataset, res in rows.items():
        for name in ACCURACY_RUNS:
            if name in res:
                r = res[name]
                lines.append(f"{dataset:<12} {labels[name]:<26} {r['iterations']:>7} {r['AP']:6.3f} {r['AP50']:6.3f}")
        if "AP50_ratio" in res:
            lines.append(f"{dataset:<12} {'AP50 detect / torchvision':<26} {res['AP50_ratio']:>21.2f}x")
    for dataset, res in rows.items():
        runs = [n for n in ACCURACY_RUNS if n in res]
        lines.append(f"{dataset} AP50 per class ({' / '.join(runs)}): " + ", ".join(
            f"{n} " + " / ".join(f"{res[run]['per_class_AP50'][n]:.3f}" for run in runs)
            for n in res[runs[0]]["per_class_AP50"]))
    return "\n".join(lines)
