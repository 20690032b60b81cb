"""Pruning of a detector's layers: individual weights (magnitude), or whole units of its fully
connected layers (weight norm, mean activation, or Fisher information), with the gradual schedule of
Zhu & Gupta (2017).

Weight pruning keeps ``nn.Linear`` / ``nn.Conv2d`` shapes and zeroes the smallest weights (a mask,
re-applied after every optimiser step while fine-tuning). Unit pruning removes neurons physically:
unit ``j`` of a layer is row ``j`` of its weight and bias, and column ``j`` of every tensor that
reads the layer's output (the next layer, the class scores and box deltas, R-CNN's SVMs and box
regressors), so the pruned model computes what the model with those units zeroed computes.

Units (``U`` per layer, ``R`` RoIs) are scored, higher kept:

- ``l1`` / ``l2``: norm of the unit's incoming weights;
- ``activation``: mean of the unit's ReLU output over training RoIs;
- ``fisher``: Theis et al. (2018): the loss increase from removing unit ``k`` is about
  ``1/(2N) sum_n g_nk^2`` with ``g_nk`` the gradient of data point ``n``'s loss with respect to a
  mask ``m_k`` on the unit's output. The box head treats every RoI on its own, so each RoI is a data
  point and ``g_rk = a_rk * dL/da_rk`` (activation times its gradient) is that RoI's own gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detect.errors import ConfigError

@dataclass
class UnitLayer:
    """A fully connected layer whose units can be removed, and the tensors that read its output.

    ``readers``: ``(module, attribute, dim, extra)``: ``getattr(module, attribute)`` indexes the
    layer's units along ``dim``, followed by ``extra`` entries that stay (R-CNN's box regressors hold
    a bias row after the units).
    """

    alias: str
    path: str
    layer: nn.Linear
    readers: List[Tuple[nn.Module, str, int, int]]  # (module, attribute, dim, extra entries after the units)


def unit_layers(model: nn.Module) -> Dict[str, UnitLayer]:
    """The layers of ``model`` whose units can be removed, by the name the tools use.

    Fast / Faster R-CNN's two-fc box head: ``fc6`` (read by fc7) and ``fc7`` (read by the class
    scores and box deltas). R-CNN's crop network: ``fc`` (read by the fine-tuning classifier, the
    SVMs and the box regressors). A head factorised by truncated SVD has none.
    """
    out: Dict[str, UnitLayer] = {}
    head = getattr(getattr(model, "roi_head", None), "box_head", None)
    if head is not None and isinstance(getattr(head, "fc6", None), nn.Linear) and isinstance(head.fc7, nn.Linear):
        pred = model.roi_head.predictor
        out["fc6"] = UnitLayer("fc6", "roi_head.box_head.fc6", head.fc6, [(head.fc7, "weight", 1, 0)])
        out["fc7"] = UnitLayer("fc7", "roi_head.box_head.fc7", head.fc7,
                               [(pred.cls_score, "weight", 1, 0), (pred.bbox_pred, "weight", 1, 0)])
    elif isinstance(getattr(model, "svm_weight", None), torch.Tensor) and isinstance(getattr(model, "fc", None), nn.Linear):
        out["fc"] = UnitLayer("fc", "fc", model.fc, [(model.cls_score, "weight", 1, 0), (model, "svm_weight", 1, 0),
                                                     (model, "bbox_weight", 1, 1)])
    return out


@torch.no_grad()
def remove_units(unit: UnitLayer, keep: torch.Tensor) -> None:
    """Keep only the units ``keep`` (indices, any order: sorted here) of ``unit``'s layer, in place."""
    keep = torch.sort(keep.to(torch.int64)).values
    layer = unit.layer
    if keep.numel() == 0:
        raise ConfigError(f"pruning would remove every unit of {unit.alias} ({layer.out_features})")
    layer.weight = nn.Parameter(layer.weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone())
    layer.out_features = keep.numel()
    for module, attribute, dim, extra in unit.readers:
        tensor = getattr(module, attribute)
        index = keep
        if extra:
            tail = torch.arange(tensor.shape[dim] - extra, tensor.shape[dim])
            index = torch.cat([keep, tail])
        sliced = tensor.index_select(dim, index.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(module, attribute, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            setattr(module, attribute, sliced)  # a registered buffer stays one
        if isinstance(module, nn.Linear) and attribute == "weight":
            module.in_features = sliced.shape[1]


class UnitMasks:
    """Zero (and optionally score) units of fully connected layers while the model runs.

    ``masks[alias]`` is a ``(U,)`` 0 / 1 float tensor on the unit's output; with ``score`` set
    (``"activation"`` or ``"fisher"``) each forward pass in grad mode adds the units' statistics
    over its RoIs to ``scores[alias]`` (``activation``: sum of ReLU outputs and RoI count;
    ``fisher``: sum over RoIs of ``(a * dL/da)^2``, complete once backward has run).
    """

    def __init__(self, units: Dict[str, UnitLayer], score: Optional[str] = None):
        if score not in (None, "activation", "fisher"):
            raise ValueError(f"UnitMasks scores 'activation' or 'fisher', not {score!r}")
        self.units = units
        self.score = score
        self.masks = {a: torch.ones(u.layer.out_features, device=u.layer.weight.device) for a, u in units.items()}
        self.scores = {a: torch.zeros(u.layer.out_features, dtype=torch.float64) for a, u in units.items()}
        self.count = {a: 0 for a in units}
        self._handles = []

    def __enter__(self) -> "UnitMasks":
        for alias, unit in self.units.items():
            self._handles.append(unit.layer.register_forward_hook(self._hook(alias)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset_scores(self) -> None:
        for alias in self.scores:
            self.scores[alias].zero_()
            self.count[alias] = 0

    def mean_scores(self, alias: str) -> torch.Tensor:
        return self.scores[alias] / max(self.count[alias], 1)

    def _hook(self, alias: str):
        def hook(module, inputs, output):
            # relu(m * z) = m * relu(z) for m in {0, 1}: masking before the ReLU zeroes the unit's output
            output = output * self.masks[alias].to(output.dtype)
            if self.score is None or not torch.is_grad_enabled():
                return output
            acts = F.relu(output.detach()).flatten(0, -2)
            self.count[alias] += acts.shape[0]
            if self.score == "activation":
                self.scores[alias] += acts.sum(0).double().cpu()
            elif output.requires_grad:
                def collect(grad: torch.Tensor) -> None:
                    # where z <= 0 the activation is 0, so relu(z) * dL/dz = a * dL/da everywhere
                    g = (acts * grad.detach().flatten(0, -2)).double()
                    self.scores[alias] += g.pow(2).sum(0).cpu()
                output.register_hook(collect)
            return output
        return hook


def weight_norm_scores(unit: UnitLayer, p: int) -> torch.Tensor:
    """``(U,)`` L1 or L2 norm of each unit's incoming weights (bias included)."""
    w = unit.layer.weight.detach()
    if unit.layer.bias is not None:
        w = torch.cat([w, unit.layer.bias.detach()[:, None]], dim=1)
    return w.norm(p=p, dim=1).double().cpu()


def lowest(scores: torch.Tensor, count: int, alive: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices of the ``count`` lowest ``scores`` among the ``alive`` entries (ties: lower index first)."""
    s = scores.clone().double()
    if alive is not None:
        s[~alive.bool().cpu()] = math.inf
    order = torch.sort(s, stable=True).indices
    return order[:count]


# ---------------------------------------------------------------------------- weight pruning


def weight_targets(model: nn.Module, layers: Sequence[str]) -> Dict[str, nn.Module]:
    """The modules named by ``layers`` (unit aliases like ``fc6`` or module paths) whose weights
    weight pruning may zero; an unknown name is refused with the names that exist."""
    aliases = {a: u.path for a, u in unit_layers(model).items()}
    modules = dict(model.named_modules())
    prunable = {n: m for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))}
    out = {}
    for name in layers:
        path = aliases.get(name, name)
        if path not in prunable:
            examples = ", ".join(list(prunable)[:4])
            raise ConfigError(f"no prunable layer {name!r} in this model: prunable layers are "
                              f"{', '.join(aliases) or '(no fully connected head)'} and any of its "
                              f"{len(prunable)} Linear / Conv2d modules by path (e.g. {examples})")
        out[path] = prunable[path]
    return out


@torch.no_grad()
def magnitude_masks(weights: Dict[str, torch.Tensor], sparsity: float, scope: str = "layer") -> Dict[str, torch.Tensor]:
    """0 / 1 masks zeroing exactly ``round(sparsity * n)`` of the smallest-magnitude weights:
    in each tensor (``scope="layer"``) or among all of them together (``"global"``). Ties break by
    position, so the count is exact even where many weights are already zero."""
    if scope not in ("layer", "global"):
        raise ConfigError(f"weight pruning scope is 'layer' or 'global', not {scope!r}")
    groups = [[n] for n in weights] if scope == "layer" else [list(weights)]
    masks = {}
    for names in groups:
        flat = torch.cat([weights[n].detach().abs().flatten().float().cpu() for n in names])
        k = int(round(sparsity * flat.numel()))
        mask = torch.ones_like(flat)
        mask[torch.sort(flat, stable=True).indices[:k]] = 0.0
        offset = 0
        for n in names:
            size = weights[n].numel()
            masks[n] = mask[offset:offset + size].view_as(weights[n]).to(weights[n].device)
            offset += size
    return masks


def cubic_sparsity(progress: float, final: float, initial: float = 0.0, end: float = 0.75, steps: int = 10) -> float:
    """Zhu & Gupta's gradual schedule, ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``, over a
    run's progress in [0, 1]: ``steps`` pruning steps spread over ``[0, end]``, each reached at its
    step (the first at 0), the final sparsity held after ``end`` while fine-tuning goes on."""
    if progress >= end:
        return final
    t = math.floor(progress / end * steps + 1e-9) / steps  # the last pruning step reached (1e-9: 0.075 / 0.75 * 10 < 1)
    return final + (initial - final) * (1.0 - t) ** 3
