"""One report comparing the ways to shrink a checkpoint's fully connected layers
(``tools/compress.py report``): truncated SVD, weight, unit and Fisher pruning at several
sparsities, one shot and (optionally) fine-tuned, each evaluated on the checkpoint's test set.

"Sparsity" is each method's own knob: the share of weights zeroed (weight), of units removed (unit,
Fisher), of fc6 / fc7 parameters removed by the SVD ranks (svd). ``fc_removed`` puts them on one
axis: the share of fc6 / fc7 parameters gone (unit pruning at 0.75 removes 75% of fc6's and 94% of
fc7's). Latency: the box head and predictor on ``num_rois`` RoIs (best of five), and the whole
network per test image as the evaluator measured it over the test set (after a warm-up evaluation of
the original). Size: the checkpoint's weights as saved.
"""
from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from detect.checkpoint.storage import pack_sparse
from detect.inference.loading import load_model
from detect.compression.svd_checkpoint import time_box_head
from detect.utils.device import resolve_device
from detect.evaluation.metrics import evaluate
from detect.compression.pruning_runs import PruneSpec, prune_model
from detect.compression import REPORT_METHODS
from detect.errors import ConfigError
from detect.models.pruning import unit_layers
from detect.models.svd import compress_box_head

logger = logging.getLogger(__name__)

COLOURS = {"none": "black", "svd": "tab:blue", "weight": "tab:orange", "unit": "tab:green", "fisher": "tab:red"}


def svd_ranks_for(box_head: torch.nn.Module, sparsity: float) -> List[int]:
    """fc6 / fc7 ranks removing about ``sparsity`` of each layer's parameters (``t (u + v)`` of ``u v``)."""
    ranks = []
    for layer in (box_head.fc6, box_head.fc7):
        u, v = layer.out_features, layer.in_features
        ranks.append(max(1, min(u, v, int((1.0 - sparsity) * u * v / (u + v)))))
    return ranks


def _fc_parameters(model: torch.nn.Module) -> int:
    """Weights of fc6 / fc7 (R-CNN: fc), factorised or not, zeros not counted."""
    head = getattr(getattr(model, "roi_head", None), "box_head", None)
    modules = [head.fc6, head.fc7] if head is not None and hasattr(head, "fc6") else [getattr(model, "fc")]
    return sum(int((p != 0).sum()) for m in modules for p in m.parameters() if p.ndim > 1)


def _saved_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(pack_sparse(model.state_dict()), buffer)
    return buffer.tell()


def _measure(model, cfg, device, num_rois: int) -> Dict[str, Any]:
    metrics = evaluate(model.to(device).eval(), cfg, device, output_dir=None, progress=False)
    row = {"AP": metrics["coco"]["AP"], "AP50": metrics["coco"]["AP50"],
           "model_ms": 1000.0 * metrics["timing"]["network_seconds_per_image"],
           "parameters": sum(int((p != 0).sum()) for p in model.parameters()),
           "fc_parameters": _fc_parameters(model), "bytes": _saved_bytes(model)}
    if hasattr(model, "roi_head"):
        row["head_ms"] = 1000.0 * time_box_head(model.to("cpu"), num_rois)
        model.to(device)
    return row


def compression_report(checkpoint, output, sparsities: Sequence[float] = (0.5, 0.75, 0.9),
                       methods: Sequence[str] = REPORT_METHODS, finetune_minutes: float = 0.0, overrides=(),
                       num_rois: int = 2000) -> Dict[str, Any]:
    """Run every method at every sparsity on ``checkpoint``; write ``report.json``, ``report.md``,
    ``ap_vs_sparsity.png`` and ``latency_vs_sparsity.png`` into ``output``. Returns the rows."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    base, cfg = load_model(checkpoint, overrides=overrides)
    device = resolve_device(cfg.device)
    if not unit_layers(base):
        raise ConfigError(f"{checkpoint}: no unfactorised fully connected head to compress (svd_ranks "
                          f"{list(cfg.model.roi_head.svd_ranks)}, box head {cfg.model.roi_head.box_head})")
    _measure(base, cfg, device, num_rois)  # warm-up: the first evaluation of a process runs slower
    reference = {"method": "none", "sparsity": 0.0, "finetune_minutes": 0.0, **_measure(base, cfg, device, num_rois)}
    rows = [reference]
    for method in methods:
        if method == "svd" and not hasattr(base, "roi_head"):
            logger.info("truncated SVD applies to fc6 / fc7 of Fast / Faster R-CNN: left out for %s", cfg.model.type)
            continue
        for sparsity in sparsities:
            for minutes in ([0.0] if method == "svd" or finetune_minutes <= 0 else [0.0, finetune_minutes]):
                model, c = copy.deepcopy(base).cpu(), copy.deepcopy(cfg)
                if method == "svd":
                    ranks = svd_ranks_for(model.roi_head.box_head, sparsity)
                    compress_box_head(model.roi_head.box_head, ranks)
                    extra = {"ranks": ranks}
                else:
                    info = prune_model(model, c, PruneSpec(method, sparsity, finetune_minutes=minutes), checkpoint)
                    extra = {"iterations": info.get("finetune", {}).get("iterations", 0)}
                row = {"method": method, "sparsity": sparsity, "finetune_minutes": minutes,
                       **_measure(model, c, device, num_rois), **extra}
                row["fc_removed"] = 1.0 - row["fc_parameters"] / reference["fc_parameters"]
                logger.info("%s %.2f%s: AP50 %.4f", method, sparsity, f" + {minutes:g} min" if minutes else "", row["AP50"])
                rows.append(row)
    reference["fc_removed"] = 0.0
    result = {"checkpoint": str(checkpoint), "num_rois": num_rois, "rows": rows, "markdown": _markdown(rows)}
    (output / "report.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1))
    (output / "report.md").write_text(result["markdown"] + "\n")
    _plot(rows, output, num_rois)
    return result


def _markdown(rows: List[Dict[str, Any]]) -> str:
    ref = rows[0]
    lines = ["| method | sparsity | fine-tune min | fc params removed | AP | AP50 | AP50 change | box head ms "
             "| head vs original | network ms / image | size MB | size vs original |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"{r['head_ms']:.1f} | {r['head_ms'] / ref['head_ms']:.2f}x" if "head_ms" in r else "- | -"
        lines.append(f"| {r['method']} | {r['sparsity']:g} | {r['finetune_minutes']:g} | {r['fc_removed']:.1%} | "
                     f"{r['AP']:.4f} | {r['AP50']:.4f} | {r['AP50'] - ref['AP50']:+.4f} | {head} | "
                     f"{r['model_ms']:.1f} | {r['bytes'] / 1e6:.1f} | {r['bytes'] / ref['bytes']:.2f}x |")
    return "\n".join(lines)


def _plot(rows: List[Dict[str, Any]], output: Path, num_rois: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = rows[0]
    series: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows[1:]:
        series.setdefault((r["method"], r["finetune_minutes"]), []).append(r)

    def draw(ax, x_key, y_key, scale=1.0, reference_x=0.0):
        for (method, minutes), rs in series.items():
            rs = sorted(rs, key=lambda r: r[x_key])
            ax.plot([reference_x] + [r[x_key] * scale for r in rs], [ref[y_key]] + [r[y_key] for r in rs],
                    marker="o", color=COLOURS[method], linestyle="--" if minutes else "-",
                    label=f"{method}" + (f" + {minutes:g} min fine-tune" if minutes else ""))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    draw(axes[0], "sparsity", "AP50")
    axes[0].set(xlabel="sparsity (each method's share removed)", ylabel="AP50", title="AP50 against sparsity")
    for (method, minutes), rs in series.items():
        axes[1].plot([r["parameters"] / 1e6 for r in rs], [r["AP50"] for r in rs], marker="o", color=COLOURS[method],
                     linestyle="--" if minutes else "-")
    axes[1].scatter([ref["parameters"] / 1e6], [ref["AP50"]], color="black", zorder=3, label="original")
    axes[1].set(xlabel="nonzero parameters (M), whole model", ylabel="AP50", title="AP50 against parameters")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "ap_vs_sparsity.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if "head_ms" in ref:
        draw(axes[0], "sparsity", "head_ms")
    axes[0].set(xlabel="sparsity", ylabel="ms", title=f"box head + predictor on {num_rois} RoIs")
    draw(axes[1], "sparsity", "model_ms")
    axes[1].set(xlabel="sparsity", ylabel="ms / image", title="whole network per test image")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "latency_vs_sparsity.png", dpi=100)
    plt.close(fig)
