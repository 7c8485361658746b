"""The preset zoo, as data: each preset is a ResNetSpec, variants made with dataclasses.replace."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from . import families  # noqa: F401  (registers the block kinds the presets use)
from .spec import (
    BlockSettings,
    BlockSpec,
    HeadSpec,
    InitSpec,
    NormSpec,
    ResNetSpec,
    ShortcutSpec,
    StageSpec,
    StemSpec,
    make_divisible,
)


def _stages(depths, channels=(64, 128, 256, 512), strides=(1, 2, 2, 2)) -> tuple[StageSpec, ...]:
    return tuple(StageSpec(depth=d, channels=c, stride=s) for d, c, s in zip(depths, channels, strides))


BASIC = BlockSpec(kind="basic")
BOTTLENECK = BlockSpec(kind="bottleneck")

# torchvision.models.resnet: 7x7/2 stem + max-pool, 1x1 conv + BN projection, kaiming fan_out.
_resnet18 = ResNetSpec(name="resnet18", stages=_stages((2, 2, 2, 2)), block=BASIC)
_resnet50 = ResNetSpec(name="resnet50", stages=_stages((3, 4, 6, 3)), block=BOTTLENECK)

_RESNETS: dict[str, ResNetSpec] = {
    "resnet18": _resnet18,
    "resnet34": replace(_resnet18, name="resnet34", stages=_stages((3, 4, 6, 3))),
    "resnet50": _resnet50,
    "resnet101": replace(_resnet50, name="resnet101", stages=_stages((3, 4, 23, 3))),
    "resnet152": replace(_resnet50, name="resnet152", stages=_stages((3, 8, 36, 3))),
    "wide_resnet50_2": replace(_resnet50, name="wide_resnet50_2", block=replace(BOTTLENECK, width_per_group=128)),
    "resnext50_32x4d": replace(_resnet50, name="resnext50_32x4d",
                               block=replace(BOTTLENECK, groups=32, width_per_group=4)),
    # timm resnet50d / PaddleClas ResNet50_vd: deep 3x3 stem, avg-pool shortcut.
    "resnet50d": replace(_resnet50, name="resnet50d", stem=StemSpec(widths=(32, 32, 64), kernel_size=3, stride=2),
                         shortcut=ShortcutSpec(kind="avgpool_conv_bn")),
    # PaddleOCR ppocr/modeling/backbones/rec_resnet_45.py: 3x3/1 stem to 32, no pool, 1x1-3x3 blocks,
    # no head, 512 output channels, KaimingNormal (fan_in) on convs; Paddle's BatchNorm stores the
    # biased batch variance in train mode.
    "resnet45": ResNetSpec(
        name="resnet45",
        stages=_stages((3, 4, 6, 6, 3), channels=(32, 64, 128, 256, 512), strides=(2, 1, 2, 1, 1)),
        block=BlockSpec(kind="basic_1x1"),
        stem=StemSpec(widths=(32,), kernel_size=3, stride=1, pool=False),
        head=None,
        init=InitSpec(conv="kaiming_normal_fan_in"),
        norm=NormSpec(running_var="biased"),
    ),
    # d2l.ai chapter "Residual Networks": conv biases, 1x1-conv shortcut without BN,
    # 1 input channel (Fashion-MNIST), 10 classes, PyTorch default init.
    "d2l_resnet18": replace(_resnet18, name="d2l_resnet18", in_channels=1, conv_bias=True,
                            shortcut=ShortcutSpec(kind="conv"), head=HeadSpec(num_classes=10),
                            init=InitSpec(conv="torch_default")),
}



# --------------------------------------------------------------------------- DenseNet


def _dense(name, growth_rate, depths, init_features) -> ResNetSpec:
    """torchvision.models.densenet: 7x7/2 stem + BN-ReLU + max-pool, bn_size 4, transitions halve
    the channels and pool 2x2, final BN-ReLU, Linear head; convs kaiming_normal_ (fan_in), the
    Linear's bias zeros."""
    return ResNetSpec(
        name=name,
        stages=tuple(StageSpec(depth=d, stride=1 if i == 0 else 2) for i, d in enumerate(depths)),
        block=BlockSpec(kind="dense", growth_rate=growth_rate),
        stem=StemSpec(widths=(init_features,), kernel_size=7, stride=2, pool=True),
        init=InitSpec(conv="kaiming_normal_fan_in", linear_bias="zeros"),
    )


_DENSENETS = {
    "densenet121": _dense("densenet121", 32, (6, 12, 24, 16), 64),
    "densenet161": _dense("densenet161", 48, (6, 12, 36, 24), 96),
    "densenet169": _dense("densenet169", 32, (6, 12, 32, 32), 64),
    "densenet201": _dense("densenet201", 32, (6, 12, 48, 32), 64),
    # d2l.ai chapter "Densely Connected Networks (DenseNet)": no 1x1 bottleneck, conv biases,
    # 1 input channel (Fashion-MNIST), 4 blocks of 4 layers, 10 classes, PyTorch default init.
    "d2l_densenet": replace(
        _dense("d2l_densenet", 32, (4, 4, 4, 4), 64), block=BlockSpec(kind="dense", growth_rate=32, bn_size=0),
        in_channels=1, conv_bias=True, head=HeadSpec(num_classes=10), init=InitSpec(conv="torch_default")),
}

# --------------------------------------------------------------------------- GhostNet

# timm.models.ghostnet cfgs: per stage, per block (dw kernel, expansion (mid) width, out width, SE ratio, stride).
_GHOST_CFGS = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)


def _ghost(name, width) -> ResNetSpec:
    """timm's GhostNet at a width multiplier: every width is make_divisible(w * width, 4); the head
    is global pool, conv_head 1x1 (bias) to 1280 + ReLU, dropout 0.2, classifier; torch default init."""
    def scaled(channels):
        return make_divisible(channels * width, 4)

    stages = tuple(
        StageSpec(blocks=tuple(BlockSettings(channels=scaled(c), mid_channels=scaled(e), kernel_size=k, stride=s,
                                             se_ratio=float(se)) for k, e, c, se, s in cfg))
        for cfg in _GHOST_CFGS)
    return ResNetSpec(
        name=name, stages=stages, block=BlockSpec(kind="ghost"),
        stem=StemSpec(widths=(scaled(16),), kernel_size=3, stride=2, pool=False),
        head=HeadSpec(num_classes=1000, dropout=0.2, hidden_channels=1280),
        init=InitSpec(conv="torch_default"),
    )


_GHOSTNETS = {name: _ghost(name, width) for name, width in
              (("ghostnet_050", 0.5), ("ghostnet_100", 1.0), ("ghostnet_130", 1.3))}

_VGG_DEPTHS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
"""Convs per VGG block (torchvision's cfgs A, B, D, E; blocks of 64, 128, 256, 512, 512 channels)."""


def _vgg(name: str, batch_norm: bool) -> ResNetSpec:
    first, *rest = _VGG_DEPTHS[name]
    return ResNetSpec(
        name=name + ("_bn" if batch_norm else ""),
        block=BlockSpec(kind="vgg", batch_norm=batch_norm),
        stem=StemSpec(widths=(64,) * first, kernel_size=3, stride=1, pool=False),
        stages=tuple(StageSpec(depth=d, channels=c, stride=2) for d, c in zip(rest, (128, 256, 512, 512))),
        head=HeadSpec(num_classes=1000, dropout=0.5, hidden_channels=4096),
        conv_bias=True,
    )


_VGGS = {spec.name: spec for name in _VGG_DEPTHS for spec in (_vgg(name, False), _vgg(name, True))}

_CONVNEXTS_CFG = {"convnext_tiny": ((3, 3, 9, 3), 96, 0.1), "convnext_small": ((3, 3, 27, 3), 96, 0.4),
                  "convnext_base": ((3, 3, 27, 3), 128, 0.5), "convnext_large": ((3, 3, 27, 3), 192, 0.5)}
"""torchvision's ConvNeXts: depths, the first stage's width (doubled per stage), stochastic depth."""


def _convnext(name: str) -> ResNetSpec:
    depths, width, drop_path = _CONVNEXTS_CFG[name]
    return ResNetSpec(
        name=name,
        block=BlockSpec(kind="convnext", drop_path_rate=drop_path, layer_scale=1e-6),
        stem=StemSpec(widths=(width,), kernel_size=4, stride=4, pool=False),
        stages=tuple(StageSpec(depth=d, channels=width * 2 ** i, stride=1 if i == 0 else 2)
                     for i, d in enumerate(depths)),
        norm=NormSpec(eps=1e-6),
        init=InitSpec(conv="trunc_normal", linear_bias="zeros"),
    )


_CONVNEXTS = {name: _convnext(name) for name in _CONVNEXTS_CFG}

_HORNET_WIDTHS = {"tiny": 64, "small": 96, "base": 128}
_HORNET_FILTERS = {"7x7": (None, None, None, None), "gf": (None, None, (14, 8), (7, 4))}
"""The official HorNets: depths (2, 3, 18, 2), gnconv orders 2..5, base width; the _gf presets put the
global filter (its weight's h, w) in stages 3 and 4."""


def _hornet(size: str, spatial: str) -> ResNetSpec:
    width = _HORNET_WIDTHS[size]
    return ResNetSpec(
        name=f"hornet_{size}_{spatial}",
        block=BlockSpec(kind="hornet", layer_scale=1e-6),
        stem=StemSpec(widths=(width,), kernel_size=4, stride=4, pool=False),
        stages=tuple(StageSpec(depth=d, channels=width * 2 ** i, stride=1 if i == 0 else 2, order=i + 2,
                               global_filter=gf)
                     for i, (d, gf) in enumerate(zip((2, 3, 18, 2), _HORNET_FILTERS[spatial]))),
        norm=NormSpec(eps=1e-6),
        init=InitSpec(conv="trunc_normal", linear_bias="zeros"),
    )


_HORNETS = {spec.name: spec for size in _HORNET_WIDTHS for spec in (_hornet(size, "7x7"), _hornet(size, "gf"))}

_PRESETS: dict[str, ResNetSpec] = {**_RESNETS, **_DENSENETS, **_GHOSTNETS, **_VGGS, **_CONVNEXTS, **_HORNETS}


def list_specs(pattern: str = "*") -> list[str]:
    """Names of the presets matching a shell-style ``pattern``.

    Example:
        >>> rm.list_specs("resnet1*")
        ['resnet18', 'resnet101', 'resnet152']
    """
    return [name for name in _PRESETS if fnmatch.fnmatchcase(name, pattern)]


def get_spec(name: str) -> ResNetSpec:
    """The preset called ``name`` (see ``list_specs()``)."""
    try:
        return _PRESETS[name]
    except KeyError:
        close = fnmatch.filter(_PRESETS, f"*{name[:6]}*") or list(_PRESETS)
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(close)}") from None


def resolve_spec(spec) -> ResNetSpec:
    """A ResNetSpec from a spec, a preset name, a spec file path or a dict."""
    import os
    from pathlib import Path

    from .spec import load_spec

    if isinstance(spec, ResNetSpec):
        return spec
    if isinstance(spec, dict):
        return ResNetSpec.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, str) and spec in _PRESETS:
            return _PRESETS[spec]
        if Path(spec).suffix.lower() in (".json", ".yaml", ".yml"):
            return load_spec(spec)
        if Path(spec).suffix or os.sep in str(spec) or Path(spec).exists():  # a file, not a preset name
            from .spec import SpecError

            raise SpecError(f"{spec}: a spec file's name ends in .json, .yaml or .yml (and no preset has this name)")
        return get_spec(str(spec))
    raise TypeError(f"spec: expected a ResNetSpec, preset name, spec file or dict, got {type(spec).__name__}")
