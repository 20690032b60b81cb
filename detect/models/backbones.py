"""The one backbone builder: torchvision's classification networks (or a tiny net for tests) cut
into stages, returning one feature map (C4 / conv5, stride 16, as in the R-CNN papers) or an FPN.

=====================  ==================================  ========================================
name                   single map (``fpn: false``)          FPN (``fpn: true``), + max-pooled level
=====================  ==================================  ========================================
vgg16                  conv5_3, stride 16, 512 ch           conv3 / conv4 / conv5 at 8 / 16 / 32
resnet18, resnet50     C4 (layer3), stride 16; layer4 is    C2-C5 at 4-32 (torchvision / detectron2)
                       left for the res5 RoI head
mobilenet_v3_large     stride-16 block output (112 ch)      stride 16 / 32 blocks (as cheap as
                                                            torchvision's, one level finer)
efficientnet_lite0-2   stride-16 block output (112 ch)      stride 8 / 16 / 32 (the last with the
                                                            1x1 head conv, 1280 ch)
tiny                   4 conv blocks, stride 16, 64 ch      stride 8 / 16 / 32
=====================  ==================================  ========================================

``pretrained`` is a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``: downloaded by
torchvision where a network exists), ``imagenet`` for EfficientNet-Lite (weights installed from the
package registry, :mod:`detect.models.efficientnet_lite`), a local state-dict file, or ``None``
(random initialisation). Each backbone names the pixel statistics its weights expect
(``pixel_mean``, ``pixel_std``, on [0, 1] values), which the detector normalises with.

``channels_last`` runs the stages on channels-last maps (the FPN's outputs come back in NCHW for the
heads). On a CPU, oneDNN's depthwise and 1x1 convolutions reorder an NCHW input and output at every
call, which dominates MobileNetV3 over 480x640 images; GroupNorm follows the layout through
:class:`detect.ops.GroupNorm`.
"""
from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detect.config import BACKBONES
from detect.models import efficientnet_lite
from detect.ops import GroupNorm


logger = logging.getLogger(__name__)

FPN_CHANNELS = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights (and the tiny net, by convention)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Stage(nn.Sequential):
    """A run of layers ending at a given stride with a given number of channels."""

    def __init__(self, layers: Sequence[nn.Module], stride: int, channels: int):
        super().__init__(*layers)
        self.stride = stride
        self.channels = channels


class Backbone(nn.Module):
    """Stages run in order; the outputs of ``return_stages`` (optionally through an FPN) come back
    as a list of maps, finest first.

    Attributes:
        strides: stride of each returned map (with FPN, the extra max-pooled level last).
        roi_strides: the maps RoI heads pool from (FPN's extra level is for the RPN only).
        out_channels: channels of every returned map.
        res5: ResNet's last stage when it is not part of the backbone (for the res5 RoI head).
        pixel_mean, pixel_std: the RGB statistics (on [0, 1] values) the weights expect images
            normalised with.
    """

    def __init__(self, stages: Sequence[Stage], return_stages: Sequence[int], fpn: bool,
                 res5: Optional[nn.Module] = None, fpn_channels: int = FPN_CHANNELS, channels_last: bool = False,
                 pixel_mean: Sequence[float] = IMAGENET_MEAN, pixel_std: Sequence[float] = IMAGENET_STD,
                 fpn_norm: str = "none"):
        super().__init__()
        self.channels_last = channels_last
        self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
        last = max(return_stages)
        self.stages = nn.ModuleList(stages[: last + 1])
        self.return_stages = list(return_stages)
        self.res5 = res5
        strides = [stages[i].stride for i in return_stages]
        if fpn:
            self.fpn = FeaturePyramidNetwork([stages[i].channels for i in return_stages], fpn_channels,
                                             extra_blocks=LastLevelMaxPool(), norm_layer=_fpn_norm_layer(fpn_norm))
            self.out_channels = fpn_channels
            self.roi_strides = strides
            self.strides = strides + [strides[-1] * 2]
        else:
            if len(return_stages) != 1:
                raise ValueError("without FPN a backbone returns one feature map")
            self.fpn = None
            self.out_channels = stages[return_stages[0]].channels
            self.roi_strides = self.strides = strides

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``(B, 3, H, W)`` normalised images -> maps ``(B, C, H / s, W / s)`` for each stride s."""
        # an exported graph (torch.compiler.is_compiling(), as the ops test it) has no memory formats
        convert = self.channels_last and not torch.compiler.is_compiling()
        if convert:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_stages:
                outputs[str(i)] = x
        maps = list(outputs.values()) if self.fpn is None else list(self.fpn(outputs).values())
        return [m.contiguous() for m in maps] if convert else maps

    def freeze(self, num_stages: int) -> List[str]:
        """Stop gradients in the first ``num_stages`` stages; returns the frozen parameter names."""
        frozen = []
        for i, stage in enumerate(self.stages[:num_stages]):
            for name, p in stage.named_parameters():
                p.requires_grad_(False)
                frozen.append(f"stages.{i}.{name}")
        return frozen


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups (Wu & He 2018) where the channels allow it, else groups of at least 4 channels.
    groups = 32 if channels % 32 == 0 else max(g for g in range(1, 33) if channels % g == 0 and channels // g >= 4)
    return GroupNorm(groups, channels)


def _norm_layer(norm: str, bn_eps: float = 1e-5):
    """``frozen_bn`` for pretrained weights (statistics from ImageNet, batches too small to re-estimate),
    ``gn`` from scratch (independent of the batch: detection batches are a few images), ``bn`` as is.
    ``bn_eps``: the epsilon the weights' BatchNorm statistics were computed with."""
    if norm == "frozen_bn":
        return functools.partial(FrozenBatchNorm2d, eps=bn_eps)
    if norm == "bn":
        return functools.partial(nn.BatchNorm2d, eps=bn_eps)
    if norm == "gn":
        return _group_norm
    raise ValueError(f"model.backbone.norm must be frozen_bn, bn or gn, got {norm!r}")


def _torchvision_model(name: str, pretrained: Optional[str], **kwargs) -> nn.Module:
    """A torchvision classification model, with weights by torchvision name or from a local file."""
    if pretrained and not Path(pretrained).is_file():
        try:
            weights = torchvision.models.get_model_weights(name)[pretrained] if pretrained != "DEFAULT" \
                else torchvision.models.get_model_weights(name).DEFAULT
        except KeyError:
            names = [w.name for w in torchvision.models.get_model_weights(name)]
            raise ValueError(f"model.backbone.pretrained={pretrained!r} is neither a file nor a torchvision "
                             f"weights name for {name} ({', '.join(['DEFAULT'] + names)})") from None
        logger.info("loading %s weights %s through torchvision (downloads them if not cached)", name, weights)
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if pretrained:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        logger.info("loaded %s from %s (%d missing, %d unexpected keys)", name, pretrained, len(missing),
                    len(unexpected))
    return model


def _resnet_stages(name: str, pretrained: Optional[str], norm: str) -> List[Stage]:
    m = _torchvision_model(name, pretrained, norm_layer=_norm_layer(norm))
    widths = [64, 128, 256, 512] if name == "resnet18" else [256, 512, 1024, 2048]
    return [Stage([m.conv1, m.bn1, m.relu, m.maxpool], 4, 64),
            Stage([m.layer1], 4, widths[0]), Stage([m.layer2], 8, widths[1]),
            Stage([m.layer3], 16, widths[2]), Stage([m.layer4], 32, widths[3])]


def _vgg_stages(pretrained: Optional[str], fpn: bool) -> List[Stage]:
    f = _torchvision_model("vgg16", pretrained).features
    # conv5_3 keeps stride 16 (the last max-pool is dropped) as in Fast / Faster R-CNN; FPN keeps it.
    last = list(f[24:31]) if fpn else list(f[24:30])
    return [Stage(f[0:5], 2, 64), Stage(f[5:10], 4, 128), Stage(f[10:17], 8, 256),
            Stage(f[17:24], 16, 512), Stage(last, 32 if fpn else 16, 512)]


def _out_channels(blocks: nn.Module) -> int:
    return [m for m in blocks.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _mobilenet_stages(pretrained: Optional[str], norm: str, width: float) -> List[Stage]:
    kwargs = {"width_mult": width} if width != 1.0 else {}
    f = _torchvision_model("mobilenet_v3_large", pretrained, norm_layer=_norm_layer(norm), **kwargs).features
    return [Stage(f[a:b], stride, _out_channels(f[a:b]))
            for (a, b), stride in zip([(0, 2), (2, 4), (4, 7), (7, 13), (13, 17)], [2, 4, 8, 16, 32])]


def _lite_stages(name: str, pretrained: Optional[str], norm: str) -> List[Stage]:
    if pretrained and pretrained != "imagenet" and not Path(pretrained).is_file():
        raise ValueError(f"model.backbone.pretrained={pretrained!r}: {name} takes imagenet (the weights installed "
                         f"from the package registry) or a local file of them")
    stages = [Stage(layers, stride, channels)
              for stride, channels, layers in efficientnet_lite.lite_layers(name, _norm_layer(norm, efficientnet_lite.BN_EPS))]
    if pretrained:
        efficientnet_lite.load_imagenet_weights(nn.ModuleList(stages), name,
                                                None if pretrained == "imagenet" else pretrained)
        logger.info("loaded %s ImageNet weights (%s)", name, pretrained)
    return stages


def _fpn_norm_layer(fpn_norm: str):
    """The FPN's norm: ``gn`` GroupNorm after each lateral and output convolution (detectron2's GN
    FPN), ``none`` torchvision's FPN (convolutions with biases)."""
    if fpn_norm == "gn":
        return _group_norm
    if fpn_norm == "none":
        return None
    raise ValueError(f"model.backbone.fpn_norm must be none or gn, got {fpn_norm!r}")


def _conv_block(cin: int, cout: int, norm: str) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), _norm_layer(norm)(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm_layer(norm)(cout), nn.ReLU(inplace=True)]


def _tiny_stages(norm: str, width: float) -> List[Stage]:
    """A small CNN for tests and quick experiments (about 0.3 M parameters at width 1)."""
    c = [max(8, int(round(n * width / 8)) * 8) for n in (16, 32, 48, 64, 96)]
    return [Stage(_conv_block(3, c[0], norm) + _conv_block(c[0], c[1], norm)[:3], 4, c[1]),
            Stage(_conv_block(c[1], c[2], norm), 8, c[2]), Stage(_conv_block(c[2], c[3], norm), 16, c[3]),
            Stage(_conv_block(c[3], c[4], norm), 32, c[4])]


def _split_repeated_strides(stages: List[Stage], fpn_strides: Sequence[int], name: str) -> List[Stage]:
    """A stride named twice in ``fpn_strides`` makes the FPN read the first block of that stride too
    (torchvision's MobileNetV3 detectors read the first stride-32 block and the last layer): its
    stage is split after its first layer."""
    repeated = {s for s in fpn_strides if list(fpn_strides).count(s) > 1}
    if any(list(fpn_strides).count(s) > 2 for s in repeated):
        raise ValueError(f"model.backbone.fpn_strides {list(fpn_strides)}: a stride can be named at most twice")
    last = {stage.stride: i for i, stage in enumerate(stages)}
    out = []
    for i, stage in enumerate(stages):
        if stage.stride in repeated and i == last[stage.stride] and len(stage) > 1:
            layers = list(stage)
            out += [Stage(layers[:1], stage.stride, _out_channels(nn.Sequential(layers[0]))),
                    Stage(layers[1:], stage.stride, stage.channels)]
        else:
            out.append(stage)
    missing = [s for s in repeated if sum(st.stride == s for st in out) < 2]
    if missing:
        raise ValueError(f"model.backbone.fpn_strides {list(fpn_strides)}: {name}'s stride {missing[0]} is one layer")
    return out


def build_backbone(name: str, pretrained: Optional[str] = None, fpn: bool = False, norm: str = "bn",
                   freeze_at: int = 0, fpn_channels: int = FPN_CHANNELS, fpn_strides: Sequence[int] = (),
                   width: float = 1.0, channels_last: bool = False, fpn_norm: str = "none") -> Backbone:
    """Build a backbone by torchvision model name (or ``tiny``); see the module docstring.

    ``width`` multiplies the channels of ``tiny`` and ``mobilenet_v3_large`` (torchvision's
    ``width_mult``; ImageNet weights exist at 1.0 only).
    ``fpn_strides`` chooses the stages the FPN reads by their stride (e.g. ``[8, 16, 32]`` for
    MobileNetV3 adds its stride-8 stage, for small objects); empty: the table above.
    ``fpn_norm``: ``none`` (torchvision's FPN) or ``gn`` (GroupNorm after each FPN convolution).
    """
    _fpn_norm_layer(fpn_norm)  # a bad value fails before any weights are read
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if width != 1.0 and (name not in ("tiny", "mobilenet_v3_large") or pretrained or width <= 0):
        raise ValueError(f"model.backbone.width={width}: only tiny and mobilenet_v3_large take a positive width "
                         f"other than 1, and without pretrained weights")
    res5 = None
    if name.startswith("resnet"):
        stages = _resnet_stages(name, pretrained, norm)
        returned = [1, 2, 3, 4] if fpn else [3]
        if not fpn:
            res5 = stages[4]
    elif name == "vgg16":
        stages = _vgg_stages(pretrained, fpn)
        returned = [2, 3, 4] if fpn else [4]
    elif name == "mobilenet_v3_large":
        stages = _mobilenet_stages(pretrained, norm, width)
        returned = [3, 4] if fpn else [3]
    elif name in efficientnet_lite.VARIANTS:
        stages = _lite_stages(name, pretrained, norm)
        returned = [2, 3, 4] if fpn else [3]
    else:
        if pretrained:
            raise ValueError("the tiny backbone has no pretrained weights")
        stages = _tiny_stages(norm, width)
        returned = [1, 2, 3] if fpn else [2]
    if fpn and fpn_strides:
        stages = _split_repeated_strides(stages, fpn_strides, name)
        by_stride = {stage.stride: i for i, stage in enumerate(stages)}  # the last stage of each stride
        unknown = [s for s in fpn_strides if s not in by_stride]
        if unknown:
            raise ValueError(f"model.backbone.fpn_strides {list(fpn_strides)}: {name} has no stage of stride "
                             f"{unknown}; its stages end at strides {sorted(by_stride)}")
        first = {}
        for i, stage in enumerate(stages):
            first.setdefault(stage.stride, i)
        repeated = {s for s in fpn_strides if list(fpn_strides).count(s) > 1}
        returned = sorted({by_stride[s] for s in fpn_strides} | {first[s] for s in repeated})
    pixels = ((efficientnet_lite.PIXEL_MEAN, efficientnet_lite.PIXEL_STD) if name in efficientnet_lite.VARIANTS
              else (IMAGENET_MEAN, IMAGENET_STD))
    backbone = Backbone(stages, returned, fpn, res5=res5, fpn_channels=fpn_channels, channels_last=channels_last,
                        pixel_mean=pixels[0], pixel_std=pixels[1], fpn_norm=fpn_norm)
    if freeze_at:
        backbone.freeze(freeze_at)
    return backbone
