"""The dense family: torchvision's DenseNets (121/161/169/201), paddle.vision's (PaddleClas names)
and d2l's (no bottleneck). Dense layers concatenate their new features to their input; stages are
joined by transitions.

Names: torchvision's (``features.denseblock1.denselayer1.norm1``, ``classifier``). Other names the
same tensors go by are declared as data, per plan (``Plan.aliases``): torchvision's legacy keys
(``norm.1``/``conv.2``) and paddle.vision's PaddleClas names
(``db_conv_2.conv2_1.bn_ac_func1._batch_norm``), which the Paddle backend uses for its modules.
"""

from __future__ import annotations

from ..ir import INPUT, Act, AvgPool, Concat, Dropout, GraphBuilder, Stage
from ..spec import (
    BlockFamily,
    ResNetSpec,
    check,
    check_odd_stem_kernel,
    check_positive_int,
    is_number,
)
from .layers import ParamBuilder, classifier_head, single_conv_stem

KINDS = ("dense",)
"""dense: DenseNet layers (BN-ReLU-[Conv1x1-BN-ReLU]-Conv3x3, outputs concatenated), stages joined
by transitions (torchvision DenseNet, d2l)."""


# --------------------------------------------------------------------------- settings


def validate(spec: ResNetSpec) -> None:
    """A dense network's block and stage settings (see ``spec.BlockSpec``, ``spec.StageSpec``)."""
    block = spec.block
    check_odd_stem_kernel(spec)
    check(block.se_ratio == 0, "block.se_ratio", "must be 0 for a 'dense' block (no squeeze-excite)", block.se_ratio)
    check(block.growth_rate is not None, "block.growth_rate", "is required for a 'dense' block", block.growth_rate)
    check_positive_int(block.growth_rate, "block.growth_rate")
    if block.bn_size is not None:
        check_positive_int(block.bn_size, "block.bn_size", minimum=0)
    if block.compression is not None:
        check(is_number(block.compression) and 0.0 < block.compression <= 1.0, "block.compression",
              "must be a number in (0, 1]", block.compression)
    if block.drop_rate is not None:
        check(is_number(block.drop_rate) and 0.0 <= block.drop_rate < 1.0, "block.drop_rate",
              "must be a number in [0, 1)", block.drop_rate)
    for i, stage in enumerate(spec.stages):
        p = f"stages[{i}]"
        check(stage.depth is not None, f"{p}.depth", "is required for 'dense' blocks", stage.depth)
        check_positive_int(stage.depth, f"{p}.depth")
        if i == 0:
            check(stage.stride == 1, f"{p}.stride",
                  "must be 1 for the first 'dense' stage (strides are the transitions' pools between stages)",
                  stage.stride)
    channels = spec.stem.widths[0]
    for i, stage in enumerate(spec.stages):
        if i > 0:
            channels = block.transition_channels(channels)
            check(channels >= 1, "block.compression", f"leaves no channels in the transition to stages[{i}]",
                  block.compression)
        channels += stage.depth * block.growth_rate


# --------------------------------------------------------------------------- plan


# --------------------------------------------------------------------------- DenseNet


def _dense_paddle_names(b: ParamBuilder, layout: dict) -> None:
    """paddle.vision / PaddleClas names of a DenseNet's modules (the b+1 / t+1 offsets are
    PaddleClas' stage numbering: the stem is "conv1", dense block 1 is "conv2")."""
    b.alias("paddle", "features.conv0", "conv1_func._conv")
    b.alias("paddle", "features.norm0", "conv1_func._batch_norm")
    # PaddleClas applies ReLU inside its BatchNorm layers: no module of its own (alias ""), so the
    # Paddle model computes those ReLUs as functions; its pools are modules
    b.alias("paddle", "features.relu0", "")
    b.alias("paddle", "features.pool0", "pool2d_max")
    for block in {block for block, _ in layout["layers"]}:
        b.alias("paddle", f"features.denseblock{block}", f"db_conv_{block + 1}")
    for (block, layer), bottleneck in layout["layers"].items():
        canonical = f"features.denseblock{block}.denselayer{layer}"
        native = f"db_conv_{block + 1}.conv{block + 1}_{layer}"
        b.alias("paddle", canonical, native)
        pairs = (("norm1", "bn_ac_func1._batch_norm"), ("conv1", "bn_ac_func1._conv"))
        if bottleneck:
            pairs += (("norm2", "bn_ac_func2._batch_norm"), ("conv2", "bn_ac_func2._conv"))
        if layout["dropout"]:
            pairs += (("dropout", "dropout_func"),)
        for mine, theirs in pairs:
            b.alias("paddle", f"{canonical}.{mine}", f"{native}.{theirs}")
        for relu in ("relu1", "relu2")[: 2 if bottleneck else 1]:
            b.alias("paddle", f"{canonical}.{relu}", "")
    for t in layout["transitions"]:
        canonical, native = f"features.transition{t}", f"tr_conv{t + 1}_blk"
        b.alias("paddle", canonical, native)
        b.alias("paddle", f"{canonical}.norm", f"{native}.conv_ac_func._batch_norm")
        b.alias("paddle", f"{canonical}.conv", f"{native}.conv_ac_func._conv")
        b.alias("paddle", f"{canonical}.relu", "")
        b.alias("paddle", f"{canonical}.pool", f"{native}.pool2d_avg")
    b.alias("paddle", "features.norm5", "batch_norm")
    b.alias("paddle", "classifier", "out")


def build(b: ParamBuilder):
    """torchvision's DenseNet: stem conv0/norm0/relu/pool0; dense layers BN-ReLU-Conv1x1(bn_size x
    growth)-BN-ReLU-Conv3x3(growth) [-Dropout] whose output is concatenated to their input
    (bn_size 0: one BN-ReLU-Conv3x3, as d2l); a transition (BN-ReLU-Conv1x1 to floor(c x compression), AvgPool
    stride x stride) starts every stage but the first; norm5 + ReLU end the features."""
    spec = b.spec
    blk = spec.block
    growth, bn_size = blk.growth_rate, blk.resolved_bn_size
    width = spec.stem.widths[0]
    stem = single_conv_stem(b, "features.conv0", "features.norm0", "features.relu0", "features.pool0")

    c = width
    stages = []
    layout = {"layers": {}, "transitions": [], "dropout": blk.resolved_drop_rate > 0}
    for s, st in enumerate(spec.stages):
        parts = []
        if s > 0:
            name = f"features.transition{s}"
            out_c = blk.transition_channels(c)
            g = GraphBuilder(name, name + ".", c)
            ops = [b.bn(f"{name}.norm", c), Act("relu", f"{name}.relu"), b.conv(f"{name}.conv", c, out_c, 1)]
            if st.stride > 1:
                ops.append(AvgPool(st.stride, st.stride, name=f"{name}.pool"))
            out = g.chain(ops)
            parts.append(g.part(out, out_c, ((out, name),)))
            layout["transitions"].append(s)
            c = out_c
        for i in range(st.depth):
            name = f"features.denseblock{s + 1}.denselayer{i + 1}"
            g = GraphBuilder(name, name + ".", c)
            if bn_size:
                ops = [b.bn(f"{name}.norm1", c), Act("relu", f"{name}.relu1"),
                       b.conv(f"{name}.conv1", c, bn_size * growth, 1),
                       b.bn(f"{name}.norm2", bn_size * growth), Act("relu", f"{name}.relu2"),
                       b.conv(f"{name}.conv2", bn_size * growth, growth, 3)]
            else:
                ops = [b.bn(f"{name}.norm1", c), Act("relu", f"{name}.relu1"), b.conv(f"{name}.conv1", c, growth, 3)]
            if blk.resolved_drop_rate > 0:  # torchvision: F.dropout on the new features
                ops.append(Dropout(f"{name}.dropout", blk.resolved_drop_rate))
            for module in ("norm1", "conv1", "norm2", "conv2")[: 4 if bn_size else 2]:
                # torchvision's checkpoints from before modules could not have dots in their names
                b.alias("legacy", f"{name}.{module}", f"{name}.{module[:-1]}.{module[-1]}")
            out = g.add(Concat(), INPUT, g.chain(ops))
            parts.append(g.part(out, c + growth, ((out, name),)))
            layout["layers"][(s + 1, i + 1)] = bool(bn_size)
            c += growth
        stages.append(Stage(f"features.denseblock{s + 1}", tuple(parts)))

    g = GraphBuilder("neck", "", c)
    out = g.chain([b.bn("features.norm5", c), Act("relu")])  # torchvision: F.relu, no module
    neck = g.part(out, c, ((out, "features.norm5"),))
    # torchvision pools with F.adaptive_avg_pool2d: no module
    head = classifier_head(b, c, classifier="classifier", pool="") if spec.head is not None else None
    _dense_paddle_names(b, layout)
    return stem, tuple(stages), neck, head


FAMILY = BlockFamily(
    name="dense", kinds=KINDS, block_fields=("growth_rate", "bn_size", "compression", "drop_rate", "se_ratio"),
    stage_fields=("depth", "stride"), spec_fields=(), validate=validate, build=build)
