"""The ConvNeXt family: torchvision's ``convnext_tiny/small/base/large``.

Modules are torchvision's: ``features.0`` the stem (a 4x4/4 conv with bias, ``.0``, and a
channels-first LayerNorm, ``.1``); ``features.1/3/5/7`` the stages of CNBlocks; ``features.2/4/6``
the downsamples (LayerNorm ``.0``, 2x2/2 conv ``.1``); ``avgpool``; ``classifier.0`` (LayerNorm),
``classifier.1`` (Flatten), ``classifier.2`` (Linear).

A CNBlock ``features.{s}.{j}``: ``block.0`` a depthwise 7x7 conv with bias, ``block.2`` LayerNorm,
``block.3`` Linear(C, 4C), ``block.4`` exact GELU, ``block.5`` Linear(4C, C) (torchvision applies
them channels-last, between ``block.1``/``block.6`` permutes; here the LayerNorm and Linears act on
the channels of the NCHW map, which computes the same values, and there are no Permute modules);
then ``layer_scale`` (C, 1, 1), row-mode ``stochastic_depth`` and the residual add.

timm's ``convnext_*`` compute the same function under other names, declared here as naming scheme
"timm" (``Plan.aliases``, ``Plan.param_aliases``, ``Plan.alias_shapes``), so its files are read as
they are and can be written: ``stem.{0,1}``; ``stages.{s}.downsample.{0,1}`` (stage 0 has none);
``stages.{s}.blocks.{j}.{conv_dw, norm, mlp.fc1, mlp.fc2}`` and ``.gamma``, the layer scale as a
vector (C,) where torchvision's ``layer_scale`` is (C, 1, 1); ``head.norm``, ``head.fc``.
"""

from __future__ import annotations

from ..ir import INPUT, Act, Add, DropPath, Flatten, GlobalAvgPool, GraphBuilder, Part, Stage
from ..spec import BlockFamily, ResNetSpec
from .layers import ParamBuilder, check_patchify_network

TIMM = "timm"
"""The naming scheme of timm's ConvNeXt."""
TIMM_BLOCK = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
"""A CNBlock's modules with parameters -> timm's ConvNeXtBlock's."""

KINDS = ("convnext",)
"""convnext: ConvNeXt blocks (depthwise 7x7, LayerNorm, MLP with GELU, layer scale, stochastic depth)."""
TRUNC_NORMAL = ("trunc_normal", 0.02)


def validate(spec: ResNetSpec) -> None:
    """A ConvNeXt's settings: a patchify stem, stages of ``depth`` blocks of ``channels``, a 2x2/2
    downsample before every stage but the first."""
    check_patchify_network(spec, "convnext")


def _init(spec: ResNetSpec):
    return TRUNC_NORMAL if spec.init.conv == "trunc_normal" else None


def _cn_block(b: ParamBuilder, name: str, c: int, drop_rate: float, timm_name: str) -> Part:
    spec = b.spec
    eps, init = spec.norm.eps, _init(spec)
    g = GraphBuilder(name, name + ".", c)
    # layer_scale first: a parameter of the block itself comes first in torchvision's state_dict
    scale = [b.layer_scale(f"{name}.layer_scale", (c, 1, 1), spec.block.layer_scale)] if spec.block.layer_scale else []
    out = g.chain([b.conv(f"{name}.block.0", c, c, 7, groups=c, bias=True, init=init),
                   b.layer_norm(f"{name}.block.2", c, eps),
                   b.channel_linear(f"{name}.block.3", c, 4 * c, init or ("uniform", (1.0 / c) ** 0.5)),
                   Act("gelu", f"{name}.block.4"),
                   b.channel_linear(f"{name}.block.5", 4 * c, c, init or ("uniform", (1.0 / (4 * c)) ** 0.5)),
                   *scale, DropPath(f"{name}.stochastic_depth", drop_rate)])
    out = g.add(Add(), out, INPUT)
    for ours, theirs in TIMM_BLOCK.items():
        b.alias(TIMM, f"{name}.{ours}", f"{timm_name}.{theirs}")
    if scale:
        b.param_alias(TIMM, f"{name}.layer_scale", f"{timm_name}.gamma")
    return g.part(out, c, ((out, name),))


def build(b: ParamBuilder):
    spec = b.spec
    eps, init = spec.norm.eps, _init(spec)
    width = spec.stem.widths[0]
    g = GraphBuilder("stem", "", spec.in_channels)
    out = g.chain([b.conv("features.0.0", spec.in_channels, width, spec.stem.kernel_size, spec.stem.stride,
                          bias=True, padding=0, init=init),
                   b.layer_norm("features.0.1", width, eps)])
    stem = g.part(out, width, ((out, "stem"),))
    b.alias(TIMM, "features.0.0", "stem.0")
    b.alias(TIMM, "features.0.1", "stem.1")
    b.alias_shape(TIMM, "layer_scale", "vector")

    total = sum(st.depth for st in spec.stages)
    block_id, c, stages = 0, width, []
    for s, st in enumerate(spec.stages):
        parts = []
        index = 2 * s + 1
        if s > 0:  # torchvision: a downsample between stages, features.{2s}
            name = f"features.{2 * s}"
            g = GraphBuilder(name, name + ".", c)
            out = g.chain([b.layer_norm(f"{name}.0", c, eps),
                           b.conv(f"{name}.1", c, st.channels, 2, 2, bias=True, padding=0, init=init)])
            parts.append(g.part(out, st.channels, ((out, name),)))
            b.alias(TIMM, f"{name}.0", f"stages.{s}.downsample.0")
            b.alias(TIMM, f"{name}.1", f"stages.{s}.downsample.1")
            c = st.channels
        for j in range(st.depth):
            rate = spec.block.drop_path_rate * block_id / (total - 1.0) if total > 1 else 0.0
            parts.append(_cn_block(b, f"features.{index}.{j}", c, rate, f"stages.{s}.blocks.{j}"))
            block_id += 1
        stages.append(Stage(f"features.{index}", tuple(parts)))

    head = None
    if spec.head is not None:
        g = GraphBuilder("head", "", c)
        pooled = g.chain([GlobalAvgPool(flatten=False, name="avgpool"), b.layer_norm("classifier.0", c, eps),
                          Flatten(name="classifier.1")])
        logits = g.add(b.linear("classifier.2", c, spec.head.num_classes, init=init), pooled)
        head = g.part(logits, spec.head.num_classes, ((pooled, "pre_logits"), (logits, "logits")))
        b.alias(TIMM, "classifier.0", "head.norm")
        b.alias(TIMM, "classifier.2", "head.fc")
    return stem, tuple(stages), None, head


FAMILY = BlockFamily(
    name="convnext", kinds=KINDS, block_fields=("drop_path_rate", "layer_scale"),
    stage_fields=("depth", "channels", "stride"), spec_fields=(), validate=validate, build=build)
