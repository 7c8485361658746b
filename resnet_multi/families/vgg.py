"""The plain family: torchvision's and paddle.vision's VGG (``vgg11`` .. ``vgg19``, ``_bn``), and
P2PNet's VGG backbone (``out_indices``).

torchvision's ``features`` is one flat Sequential: per conv ``[Conv3x3 (bias), (BN), ReLU]``, per
'M' a 2x2/2 max-pool, numbered in order (``features.0`` ..). The plan keeps those names: the stem
is the first group of convs (stride 1, no pool), each stage is a max-pool (its ``stride``) and the
next group of convs, the neck is the last max-pool, and the head is torchvision's: ``avgpool``
(adaptive 7 x 7), then ``classifier.{0,3,6}`` Linear with ReLU and Dropout between. A stage's
output is its last ReLU, before the next pool: P2PNet's four maps are ``out_indices`` 0..3 of
vgg16_bn (strides 2, 4, 8, 16). Stages are flat parts (prefix ""): their modules sit on the model
at ``features.N``, as in torchvision, with no block module of their own.
"""

from __future__ import annotations

from ..ir import AdaptiveAvgPool, Dropout, Flatten, GraphBuilder, MaxPool, ReLU, Stage
from ..spec import BlockFamily, ResNetSpec, check, check_positive_int
from .layers import ParamBuilder

KINDS = ("vgg",)
"""vgg: stages of 3x3 convs (bias) [+ BN] + ReLU, joined by 2x2 max-pools (torchvision's VGG)."""
POOL_SIZE = 7
"""torchvision's VGG pools the features to 7 x 7 before its classifier (``avgpool``)."""


def validate(spec: ResNetSpec) -> None:
    """A VGG's settings: 3x3 stride-1 stem convs without a pool, stages of ``depth`` convs of
    ``channels`` after a ``stride`` max-pool (1: no pool), a head of two ``hidden_channels``
    linears."""
    check(isinstance(spec.block.batch_norm, bool), "block.batch_norm", "must be true or false", spec.block.batch_norm)
    check(spec.stem.kernel_size == 3, "stem.kernel_size", "must be 3 for 'vgg' blocks (VGG's 3x3 convs)",
          spec.stem.kernel_size)
    check(spec.stem.stride == 1, "stem.stride", "must be 1 for 'vgg' blocks (VGG's first convs keep the size)",
          spec.stem.stride)
    check(spec.stem.pool is False, "stem.pool", "must be false for 'vgg' blocks (the first stage's stride pools)",
          spec.stem.pool)
    check(spec.conv_bias is True, "conv_bias", "must be true for 'vgg' blocks (VGG's convs have biases)",
          spec.conv_bias)
    for i, stage in enumerate(spec.stages):
        p = f"stages[{i}]"
        for name in ("depth", "channels"):
            check(getattr(stage, name) is not None, f"{p}.{name}", "is required for 'vgg' blocks", getattr(stage, name))
            check_positive_int(getattr(stage, name), f"{p}.{name}")
    if spec.head is not None:
        check(spec.head.hidden_channels is not None, "head.hidden_channels",
              "is required for 'vgg' blocks (the width of classifier.0 and classifier.3)", spec.head.hidden_channels)


def build(b: ParamBuilder):
    spec = b.spec
    bn = spec.block.batch_norm
    index = 0  # the running number of torchvision's `features` Sequential

    def features(g: GraphBuilder, in_c: int, width: int) -> int:
        nonlocal index
        g.add(b.conv(f"features.{index}", in_c, width, 3), *g_last(g))
        index += 1
        if bn:
            g.add(b.bn(f"features.{index}", width), g_last(g)[0])
            index += 1
        g.add(ReLU(f"features.{index}"), g_last(g)[0])
        index += 1
        return width

    def pool(g: GraphBuilder, stride: int) -> None:
        nonlocal index
        g.add(MaxPool(kernel_size=stride, stride=stride, padding=0, name=f"features.{index}"), *g_last(g))
        index += 1

    def g_last(g: GraphBuilder) -> tuple[str]:
        return (g.nodes[-1].output,) if g.nodes else ("x",)

    g = GraphBuilder("stem", "", spec.in_channels)
    c = spec.in_channels
    for width in spec.stem.widths:
        c = features(g, c, width)
    stem = g.part(g.nodes[-1].output, c, ((g.nodes[-1].output, "stem"),))

    stages = []
    for s, st in enumerate(spec.stages):
        name = f"block{s + 2}"  # VGG's conv blocks: the stem is block 1
        g = GraphBuilder(name, "", c)
        if st.stride > 1:
            pool(g, st.stride)
        for _ in range(st.depth):
            c = features(g, c, st.channels)
        stages.append(Stage(name, (g.part(g.nodes[-1].output, c, ()),)))

    g = GraphBuilder("neck", "", c)
    pool(g, 2)
    neck = g.part(g.nodes[-1].output, c, ((g.nodes[-1].output, "features"),))

    head = None
    if spec.head is not None:
        hidden, rate = spec.head.hidden_channels, float(spec.head.dropout)
        g = GraphBuilder("head", "", c)
        pooled = g.chain([AdaptiveAvgPool(POOL_SIZE, name="avgpool"), Flatten()])
        x = g.chain([b.linear("classifier.0", c * POOL_SIZE * POOL_SIZE, hidden), ReLU("classifier.1"),
                     Dropout("classifier.2", rate), b.linear("classifier.3", hidden, hidden), ReLU("classifier.4"),
                     Dropout("classifier.5", rate)], pooled)
        logits = g.add(b.linear("classifier.6", hidden, spec.head.num_classes), x)
        head = g.part(logits, spec.head.num_classes, ((pooled, "pre_logits"), (logits, "logits")))
    return stem, tuple(stages), neck, head


FAMILY = BlockFamily(
    name="vgg", kinds=KINDS, block_fields=("batch_norm",), stage_fields=("depth", "channels", "stride"),
    spec_fields=("stem.widths",), validate=validate, build=build)
