"""The residual family: torchvision's and timm's ResNets (``basic``, ``bottleneck``), PaddleOCR's
ResNet45 (``basic_1x1``), and their variants (ResNeXt, wide, ResNet-D, dilation, v1 stride
placement, squeeze-excite, deep stem, d2l's conv shortcut).

A block is ``relu(main(x) [* se] + shortcut(x))``; stages are ``depth`` blocks of ``channels``
planes (output ``channels * expansion``). Module names are torchvision's (``layer3.4.conv2``,
``downsample.0``) and timm's (deep stem ``conv1.0``, ResNet-D ``downsample.1``, ``se.fc1``).
"""

from __future__ import annotations

from ..ir import INPUT, Add, AvgPool, GraphBuilder, MaxPool, Part, ReLU, Stage
from ..spec import (BlockFamily, ResNetSpec, check, check_odd_stem_kernel, check_one_of, check_positive_int,
                    is_number)
from .layers import ParamBuilder, classifier_head

KINDS = ("basic", "bottleneck", "basic_1x1")
"""basic: 3x3-3x3. bottleneck: 1x1-3x3-1x1 with expansion. basic_1x1: 1x1-3x3 (PaddleOCR ResNet45)."""
STRIDE_POSITIONS = ("3x3", "1x1")
SHORTCUT_KINDS = ("conv_bn", "avgpool_conv_bn", "conv")
"""conv_bn: 1x1 conv (stride) + BN. avgpool_conv_bn: AvgPool 2x2 (ceil_mode, padding not counted)
then 1x1 conv + BN (ResNet-D). conv: a 1x1 conv (stride) with no BN (d2l)."""
SHORTCUT_WHEN = ("auto", "always")
"""auto: project when the stride or channel count changes. always: every stage's first block."""


# --------------------------------------------------------------------------- settings


def validate(spec: ResNetSpec) -> None:
    """The residual kinds' block and stage settings (the spec's common fields are checked by
    ``spec.validate_spec``)."""
    block = spec.block
    kind = block.kind
    check_odd_stem_kernel(spec)
    if block.expansion is not None:
        check_positive_int(block.expansion, "block.expansion")
    check_one_of(block.stride_on, STRIDE_POSITIONS, "block.stride_on")
    check_positive_int(block.groups, "block.groups")
    check_positive_int(block.width_per_group, "block.width_per_group")
    if kind != "bottleneck":
        check(block.groups == 1, "block.groups", f"must be 1 for a {kind!r} block", block.groups)
        check(block.width_per_group == 64, "block.width_per_group",
              f"must be 64 for a {kind!r} block", block.width_per_group)
        check(block.stride_on == "3x3", "block.stride_on", f"must be '3x3' for a {kind!r} block", block.stride_on)
    check(is_number(block.se_ratio) and 0.0 <= block.se_ratio <= 1.0, "block.se_ratio",
          "must be a number in [0, 1]", block.se_ratio)
    for i, stage in enumerate(spec.stages):
        p = f"stages[{i}]"
        check(stage.depth is not None, f"{p}.depth", f"is required for {kind!r} blocks", stage.depth)
        check_positive_int(stage.depth, f"{p}.depth")
        check(stage.channels is not None, f"{p}.channels", f"is required for {kind!r} blocks", stage.channels)
        check_positive_int(stage.channels, f"{p}.channels")
        if kind == "bottleneck":
            width = int(stage.channels * block.width_per_group / 64) * block.groups
            check(width >= block.groups, f"{p}.channels",
                  f"gives a bottleneck width of {width}, fewer than block.groups={block.groups}", stage.channels)
    check_one_of(spec.shortcut.kind, SHORTCUT_KINDS, "shortcut.kind")
    check_one_of(spec.shortcut.when, SHORTCUT_WHEN, "shortcut.when")


# --------------------------------------------------------------------------- plan


def _stem(b: ParamBuilder) -> Part:
    spec = b.spec
    stem = spec.stem
    g = GraphBuilder("stem", "", spec.in_channels)
    ops: list = []
    in_c = spec.in_channels
    if len(stem.widths) == 1:
        ops += [b.conv("conv1", in_c, stem.widths[0], stem.kernel_size, stem.stride), b.bn("bn1", stem.widths[0]),
                ReLU("relu")]
    else:
        # timm's deep stem: nn.Sequential(conv, bn, relu, conv, bn, relu, conv) then bn1
        for i, width in enumerate(stem.widths):
            stride = stem.stride if i == 0 else 1
            ops.append(b.conv(f"conv1.{3 * i}", in_c, width, stem.kernel_size, stride))
            if i < len(stem.widths) - 1:
                ops += [b.bn(f"conv1.{3 * i + 1}", width), ReLU(f"conv1.{3 * i + 2}")]
            in_c = width
        ops += [b.bn("bn1", stem.widths[-1]), ReLU("relu")]
    if stem.pool:
        ops.append(MaxPool(kernel_size=3, stride=2, padding=1, name="maxpool"))
    out = g.chain(ops)
    return g.part(out, stem.widths[-1], ((out, "stem"),))


def _block(b: ParamBuilder, name: str, in_c: int, channels: int, stride: int, dilation: int,
           first_dilation: int, project: bool) -> Part:
    """A residual block: relu(main(x) [* se] + shortcut(x)); no shortcut ops is the identity."""
    spec = b.spec
    blk = spec.block
    out_c = channels * blk.resolved_expansion
    zero = spec.init.zero_init_last_bn
    relu = ReLU(f"{name}.relu")  # one module, called after each BN but the last and after the add
    if blk.kind == "basic":
        main = (b.conv(f"{name}.conv1", in_c, channels, 3, stride, first_dilation), b.bn(f"{name}.bn1", channels),
                relu,
                b.conv(f"{name}.conv2", channels, out_c, 3, 1, dilation), b.bn(f"{name}.bn2", out_c, zero))
    elif blk.kind == "basic_1x1":
        main = (b.conv(f"{name}.conv1", in_c, channels, 1), b.bn(f"{name}.bn1", channels), relu,
                b.conv(f"{name}.conv2", channels, out_c, 3, stride, first_dilation),
                b.bn(f"{name}.bn2", out_c, zero))
    else:  # bottleneck
        width = int(channels * blk.width_per_group / 64) * blk.groups
        s1, s3 = (stride, 1) if blk.stride_on == "1x1" else (1, stride)
        main = (b.conv(f"{name}.conv1", in_c, width, 1, s1), b.bn(f"{name}.bn1", width), relu,
                b.conv(f"{name}.conv2", width, width, 3, s3, first_dilation, blk.groups),
                b.bn(f"{name}.bn2", width), relu,
                b.conv(f"{name}.conv3", width, out_c, 1), b.bn(f"{name}.bn3", out_c, zero))
    g = GraphBuilder(name, name + ".", in_c)
    out = g.chain(main)
    if blk.se_ratio > 0:
        out = b.squeeze_excite(g, f"{name}.se", out, out_c)

    shortcut: tuple = ()
    if project:
        kind = spec.shortcut.kind
        ds = f"{name}.downsample"
        if kind == "conv_bn":
            shortcut = (b.conv(f"{ds}.0", in_c, out_c, 1, stride), b.bn(f"{ds}.1", out_c))
        elif kind == "conv":
            shortcut = (b.conv(f"{ds}.0", in_c, out_c, 1, stride),)
        else:  # avgpool_conv_bn (ResNet-D); timm: no pool when stride is 1
            pool = ((AvgPool(2, stride, 0, ceil_mode=True, count_include_pad=False, name=f"{ds}.0"),)
                    if stride > 1 else ())
            shortcut = pool + (b.conv(f"{ds}.1", in_c, out_c, 1), b.bn(f"{ds}.2", out_c))
    out = g.add(Add(), out, g.chain(shortcut, INPUT))
    out = g.add(relu, out)
    return g.part(out, out_c, ((out, name),))


def build(b: ParamBuilder):
    """torchvision's ResNet: stem; stages ``layer{s}`` of blocks ``layer{s}.{i}`` (the first of a
    stage projects its shortcut when the stride or width changes, or always); the head."""
    spec = b.spec
    stem = _stem(b)
    in_c = stem.out_channels
    stages = []
    dilation = 1
    for s, st in enumerate(spec.stages):
        previous_dilation = dilation
        stride = st.stride
        if st.dilate:  # torchvision's replace_stride_with_dilation
            dilation *= stride
            stride = 1
        out_c = st.channels * spec.block.resolved_expansion
        blocks = []
        for i in range(st.depth):
            first = i == 0
            project = first and (spec.shortcut.when == "always" or stride != 1 or in_c != out_c)
            blocks.append(_block(b, f"layer{s + 1}.{i}", in_c, st.channels, stride if first else 1,
                                 dilation, previous_dilation if first else dilation, project))
            in_c = out_c
        stages.append(Stage(f"layer{s + 1}", tuple(blocks)))
    head = classifier_head(b, in_c) if spec.head is not None else None
    return stem, tuple(stages), None, head


FAMILY = BlockFamily(
    name="residual", kinds=KINDS,
    block_fields=("expansion", "stride_on", "groups", "width_per_group", "se_ratio"),
    stage_fields=("depth", "channels", "stride", "dilate"),
    spec_fields=("shortcut", "init.zero_init_last_bn", "stem.widths"),
    validate=validate, build=build)
