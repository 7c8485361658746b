"""Block builders for the non-residual families: DenseNet (torchvision, paddle.vision, d2l) and
GhostNet (timm). Each turns a spec into plan parts (``plan.Part`` graphs of ops) with the
reference library's module names; nothing here is framework code, and no consumer of the plan
(backends, oracle, folding, taps, summary) knows which family it walks.

Names: torchvision's DenseNet (``features.denseblock1.denselayer1.norm1``, ``classifier``) and
timm's GhostNet (``blocks.3.0.ghost1.primary_conv.0``, ``conv_head``, ``classifier``). Other
names the same tensors go by are declared as data, per plan (``Plan.aliases``): torchvision's
legacy DenseNet keys (``norm.1``/``conv.2``) and paddle.vision's PaddleClas DenseNet names
(``db_conv_2.conv2_1.bn_ac_func1._batch_norm``), which the Paddle backend uses for its modules.
"""

from __future__ import annotations

import math

from . import plan as P
from .plan import INPUT, Act, AvgPool, Concat, MaxPool, Slice, Stage
from .spec import make_divisible

# --------------------------------------------------------------------------- DenseNet


def _dense_paddle_names(b: "P._Builder", layout: dict) -> None:
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


def _single_conv_stem(b: "P._Builder", conv: str, bn: str, relu: str, pool: str = "") -> "P.Part":
    """One conv (the spec's stem kernel and stride) + BN + ReLU [+ 3x3/2 max-pool], modules named
    ``conv``/``bn``/``relu``/``pool``."""
    spec = b.spec
    width = spec.stem.widths[0]
    g = P._Graph("stem", "", spec.in_channels)
    ops = [b.conv(conv, spec.in_channels, width, spec.stem.kernel_size, spec.stem.stride), b.bn(bn, width),
           Act("relu", relu)]
    if spec.stem.pool:
        ops.append(MaxPool(kernel_size=3, stride=2, padding=1, name=pool))
    out = g.chain(ops)
    return g.part(out, width, ((out, "stem"),))


def dense_plan(b: "P._Builder"):
    """torchvision's DenseNet: stem conv0/norm0/relu/pool0; dense layers BN-ReLU-Conv1x1(bn_size x
    growth)-BN-ReLU-Conv3x3(growth) [-Dropout] whose output is concatenated to their input
    (bn_size 0: one BN-ReLU-Conv3x3, as d2l); a transition (BN-ReLU-Conv1x1 to floor(c x compression), AvgPool
    stride x stride) starts every stage but the first; norm5 + ReLU end the features."""
    spec = b.spec
    blk = spec.block
    growth, bn_size = blk.growth_rate, blk.resolved_bn_size
    width = spec.stem.widths[0]
    stem = _single_conv_stem(b, "features.conv0", "features.norm0", "features.relu0", "features.pool0")

    c = width
    stages = []
    layout = {"layers": {}, "transitions": [], "dropout": blk.resolved_drop_rate > 0}
    for s, st in enumerate(spec.stages):
        parts = []
        if s > 0:
            name = f"features.transition{s}"
            out_c = blk.transition_channels(c)
            g = P._Graph(name, name + ".", c)
            ops = [b.bn(f"{name}.norm", c), Act("relu", f"{name}.relu"), b.conv(f"{name}.conv", c, out_c, 1)]
            if st.stride > 1:
                ops.append(AvgPool(st.stride, st.stride, name=f"{name}.pool"))
            out = g.chain(ops)
            parts.append(g.part(out, out_c, ((out, name),)))
            layout["transitions"].append(s)
            c = out_c
        for i in range(st.depth):
            name = f"features.denseblock{s + 1}.denselayer{i + 1}"
            g = P._Graph(name, name + ".", c)
            if bn_size:
                ops = [b.bn(f"{name}.norm1", c), Act("relu", f"{name}.relu1"),
                       b.conv(f"{name}.conv1", c, bn_size * growth, 1),
                       b.bn(f"{name}.norm2", bn_size * growth), Act("relu", f"{name}.relu2"),
                       b.conv(f"{name}.conv2", bn_size * growth, growth, 3)]
            else:
                ops = [b.bn(f"{name}.norm1", c), Act("relu", f"{name}.relu1"), b.conv(f"{name}.conv1", c, growth, 3)]
            if blk.resolved_drop_rate > 0:  # torchvision: F.dropout on the new features
                ops.append(P.Dropout(f"{name}.dropout", blk.resolved_drop_rate))
            for module in ("norm1", "conv1", "norm2", "conv2")[: 4 if bn_size else 2]:
                # torchvision's checkpoints from before modules could not have dots in their names
                b.alias("legacy", f"{name}.{module}", f"{name}.{module[:-1]}.{module[-1]}")
            out = g.add(Concat(), INPUT, g.chain(ops))
            parts.append(g.part(out, c + growth, ((out, name),)))
            layout["layers"][(s + 1, i + 1)] = bool(bn_size)
            c += growth
        stages.append(Stage(f"features.denseblock{s + 1}", tuple(parts)))

    g = P._Graph("neck", "", c)
    out = g.chain([b.bn("features.norm5", c), Act("relu")])  # torchvision: F.relu, no module
    neck = g.part(out, c, ((out, "features.norm5"),))
    # torchvision pools with F.adaptive_avg_pool2d: no module
    head = P._head(b, c, classifier="classifier", pool="") if spec.head is not None else None
    _dense_paddle_names(b, layout)
    return stem, tuple(stages), neck, head


# --------------------------------------------------------------------------- GhostNet


def _ghost_module(b: "P._Builder", g: "P._Graph", name: str, x: str, in_c: int, out_c: int, relu: bool) -> str:
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


def _ghost_bottleneck(b: "P._Builder", name: str, in_c: int, settings) -> "P.Part":
    mid, out_c, k, stride = settings.mid_channels, settings.channels, settings.kernel_size, settings.stride
    g = P._Graph(name, name + ".", in_c)
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
    out = g.add(P.Add(), x, shortcut)  # no activation after the add
    return g.part(out, out_c, ((out, name),))


def ghost_plan(b: "P._Builder"):
    """timm's GhostNet: conv_stem/bn1/act1; stages ``blocks.{i}`` of ghost bottlenecks set per
    block; ``blocks.{n}.0`` a 1x1 conv + BN + ReLU to the last block's mid width; the head."""
    spec = b.spec
    width = spec.stem.widths[0]
    stem = _single_conv_stem(b, "conv_stem", "bn1", "act1")
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
    g = P._Graph("neck", "", c)
    out = g.chain([b.conv(f"{name}.conv", c, final, 1), b.bn(f"{name}.bn1", final), Act("relu")])
    neck = g.part(out, final, ((out, f"blocks.{len(spec.stages)}"),))
    head = P._head(b, final, classifier="classifier", pool="global_pool", act="act2") if spec.head is not None else None
    return stem, tuple(stages), neck, head


BUILDERS = {"dense": dense_plan, "ghost": ghost_plan}
"""Block kind -> plan builder ``(builder) -> (stem, stages, neck, head)`` for the families here."""
