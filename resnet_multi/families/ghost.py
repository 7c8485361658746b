"""The ghost family: timm's GhostNets, set per block (``stages[i].blocks[j]``, timm's cfgs).

Names: timm's (``blocks.3.0.ghost1.primary_conv.0``, ``conv_head``, ``classifier``).
"""

from __future__ import annotations

import math

from ..ir import INPUT, Act, Add, Concat, GraphBuilder, Part, Slice, Stage
from ..spec import (BlockFamily, BlockSettings, ResNetSpec, check, check_odd_stem_kernel, check_positive_int,
                    is_number, make_divisible)
from .layers import ParamBuilder, classifier_head, single_conv_stem

KINDS = ("ghost",)
"""ghost: GhostNet bottlenecks (timm), set per block."""


# --------------------------------------------------------------------------- settings


def validate(spec: ResNetSpec) -> None:
    """A GhostNet's per-block settings (see ``spec.BlockSettings``)."""
    check_odd_stem_kernel(spec)
    check(spec.block.se_ratio == 0, "block.se_ratio",
          "must be 0 for 'ghost' blocks: set it per block (stages[i].blocks[j].se_ratio)", spec.block.se_ratio)
    for i, stage in enumerate(spec.stages):
        p = f"stages[{i}]"
        check(stage.stride == 1, f"{p}.stride", "must be 1 for 'ghost' blocks: set it per block (blocks[j].stride)",
              stage.stride)
        check(isinstance(stage.blocks, tuple) and len(stage.blocks) >= 1, f"{p}.blocks",
              "must be a non-empty list of per-block settings for 'ghost' blocks", stage.blocks)
        for j, settings in enumerate(stage.blocks):
            q = f"{p}.blocks[{j}]"
            check(isinstance(settings, BlockSettings), q, "must be block settings", settings)
            check_positive_int(settings.channels, f"{q}.channels")
            check_positive_int(settings.mid_channels, f"{q}.mid_channels")
            check_positive_int(settings.kernel_size, f"{q}.kernel_size")
            check(settings.kernel_size % 2 == 1, f"{q}.kernel_size", "must be odd (symmetric padding)",
                  settings.kernel_size)
            check_positive_int(settings.stride, f"{q}.stride")
            check(is_number(settings.se_ratio) and 0.0 <= settings.se_ratio <= 1.0, f"{q}.se_ratio",
                  "must be a number in [0, 1]", settings.se_ratio)


# --------------------------------------------------------------------------- plan


# --------------------------------------------------------------------------- GhostNet


def _ghost_module(b: ParamBuilder, g: GraphBuilder, name: str, x: str, in_c: int, out_c: int, relu: bool) -> str:
    """timm's GhostModule (ratio 2, dw 3): a 1x1 conv to ceil(out/2) channels + BN [+ ReLU], a
    depthwise 3x3 of that + BN [+ ReLU], both concatenated and sliced to ``out_c``."""
    init = math.ceil(out_c / 2)
    act = (lambda seq: [Act("relu", f"{name}.{seq}.2")]) if relu else (lambda seq: [])
    x1 = g.chain([b.conv(f"{name}.primary_conv.0", in_c, init, 1), b.bn(f"{name}.primary_conv.1", init),
                  *act("primary_conv")], x)
    x2 = g.chain([b.conv(f"{name}.cheap_operation.0", init, init, 3, groups=init),
                  b.bn(f"{name}.cheap_operation.1", init), *act("cheap_operation")], x1)
    out = g.add(Concat(), x1, x2)
    return g.add(Slice(0, out_c), out) if 2 * init != out_c else out


def _ghost_bottleneck(b: ParamBuilder, name: str, in_c: int, settings) -> Part:
    mid, out_c, k, stride = settings.mid_channels, settings.channels, settings.kernel_size, settings.stride
    g = GraphBuilder(name, name + ".", in_c)
    x = _ghost_module(b, g, f"{name}.ghost1", INPUT, in_c, mid, relu=True)
    if stride > 1:
        x = g.chain([b.conv(f"{name}.conv_dw", mid, mid, k, stride, groups=mid), b.bn(f"{name}.bn_dw", mid)], x)
    if settings.se_ratio > 0:
        # timm's _SE_LAYER: hard-sigmoid gate, reduced channels rounded to a multiple of 4
        x = b.squeeze_excite(g, f"{name}.se", x, mid, reduced=make_divisible(mid * settings.se_ratio, 4),
                             gate="hard_sigmoid", names=("conv_reduce", "conv_expand"))
    x = _ghost_module(b, g, f"{name}.ghost2", x, mid, out_c, relu=False)
    if in_c == out_c and stride == 1:
        shortcut = INPUT
    else:
        shortcut = g.chain([b.conv(f"{name}.shortcut.0", in_c, in_c, k, stride, groups=in_c),
                            b.bn(f"{name}.shortcut.1", in_c),
                            b.conv(f"{name}.shortcut.2", in_c, out_c, 1), b.bn(f"{name}.shortcut.3", out_c)])
    out = g.add(Add(), x, shortcut)  # no activation after the add
    return g.part(out, out_c, ((out, name),))


def build(b: ParamBuilder):
    """timm's GhostNet: conv_stem/bn1/act1; stages ``blocks.{i}`` of ghost bottlenecks set per
    block; ``blocks.{n}.0`` a 1x1 conv + BN + ReLU to the last block's mid width; the head."""
    spec = b.spec
    width = spec.stem.widths[0]
    stem = single_conv_stem(b, "conv_stem", "bn1", "act1")
    c = width
    stages = []
    for s, st in enumerate(spec.stages):
        parts = []
        for j, settings in enumerate(st.blocks):
            parts.append(_ghost_bottleneck(b, f"blocks.{s}.{j}", c, settings))
            c = settings.channels
        stages.append(Stage(f"blocks.{s}", tuple(parts)))
    final = spec.stages[-1].blocks[-1].mid_channels
    name = f"blocks.{len(spec.stages)}.0"
    g = GraphBuilder("neck", "", c)
    out = g.chain([b.conv(f"{name}.conv", c, final, 1), b.bn(f"{name}.bn1", final), Act("relu")])
    neck = g.part(out, final, ((out, f"blocks.{len(spec.stages)}"),))
    head = (classifier_head(b, final, classifier="classifier", pool="global_pool", act="act2")
            if spec.head is not None else None)
    return stem, tuple(stages), neck, head


FAMILY = BlockFamily(
    name="ghost", kinds=KINDS, block_fields=("se_ratio",), stage_fields=("blocks", "stride"), spec_fields=(),
    validate=validate, build=build)
