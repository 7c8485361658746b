"""Spec -> explicit plan: every layer with its channels, kernel, stride, padding, and the
canonical parameter table. The only place where architecture arithmetic happens.

A backend walks ``plan.stem``, ``plan.stages[i].blocks[j]`` and ``plan.head`` and maps each
op to its framework's primitive; it never re-derives channels, strides or padding.

Ops are plain frozen dataclasses:

- ``Conv``       2-D convolution, symmetric ``padding`` (never 'SAME'), ``name`` is canonical.
- ``BatchNorm``  eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias.
- ``ReLU``
- ``MaxPool``    padding counts as -inf.
- ``AvgPool``    ``ceil_mode`` and ``count_include_pad`` always spelled out.
- ``SqueezeExcite``  global mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid -> scale.
- ``Linear``

A ``Block`` is ``relu(main(x) [* se] + shortcut(x))``; an empty shortcut is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from .spec import ResNetSpec

# --------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class Conv:
    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = False

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.dilation * (self.kernel_size - 1) - 1) // self.stride + 1


@dataclass(frozen=True)
class BatchNorm:
    name: str
    channels: int
    eps: float
    momentum: float  # PyTorch convention: weight of the new batch statistic


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    kernel_size: int
    stride: int
    padding: int

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel_size) // self.stride + 1


@dataclass(frozen=True)
class AvgPool:
    kernel_size: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def out_size(self, size: int) -> int:
        span = size + 2 * self.padding - self.kernel_size
        if not self.ceil_mode:
            return span // self.stride + 1
        out = -(-span // self.stride) + 1
        # As PyTorch and Paddle: the last window must start inside the input or left padding.
        if (out - 1) * self.stride >= size + self.padding:
            out -= 1
        return out


@dataclass(frozen=True)
class SqueezeExcite:
    name: str
    channels: int
    reduced_channels: int


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int


Op = Union[Conv, BatchNorm, ReLU, MaxPool, AvgPool]


@dataclass(frozen=True)
class Block:
    name: str                      # canonical prefix, e.g. "layer3.4"
    in_channels: int
    out_channels: int
    main: tuple[Op, ...]           # ends with the block's last BN (no final ReLU)
    se: SqueezeExcite | None
    shortcut: tuple[Op, ...]       # empty: identity


@dataclass(frozen=True)
class Stage:
    name: str                      # "layer1", ...
    blocks: tuple[Block, ...]

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels


@dataclass(frozen=True)
class Head:
    dropout: float
    fc: Linear                     # after global average pooling and flattening


@dataclass(frozen=True)
class ParamInfo:
    """One canonical parameter or buffer. ``role`` tells backends how to rename/transpose it:
    conv_weight (OIHW), conv_bias, bn_weight, bn_bias, bn_mean, bn_var, linear_weight
    (out, in), linear_bias. ``init`` is (scheme, scale): ("normal", std), ("uniform", bound),
    ("ones", 0), ("zeros", 0)."""

    name: str
    shape: tuple[int, ...]
    role: str
    init: tuple[str, float]

    @property
    def is_buffer(self) -> bool:
        return self.role in ("bn_mean", "bn_var")


@dataclass(frozen=True)
class Plan:
    spec: ResNetSpec
    stem: tuple[Op, ...]
    stages: tuple[Stage, ...]
    head: Head | None
    out_indices: tuple[int, ...] | None
    params: dict[str, ParamInfo]   # canonical name -> info, in module order

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def out_channels(self) -> int:
        """Channels of the last feature map."""
        return self.stages[-1].out_channels

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Named intermediate outputs, in execution order: stem, every block, every stage,
        and with a head pre_logits and logits."""
        names = ["stem"]
        for stage in self.stages:
            names.extend(block.name for block in stage.blocks)
            names.append(stage.name)
        if self.head is not None:
            names.extend(["pre_logits", "logits"])
        return tuple(names)

    def output_names(self) -> tuple[str, ...]:
        """Which taps the model returns: logits, the last stage, or the out_indices stages."""
        if self.head is not None:
            return ("logits",)
        if self.out_indices is not None:
            return tuple(self.stages[i].name for i in self.out_indices)
        return (self.stages[-1].name,)

    def shapes(self, input_shape: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
        """NCHW shape of every tap for ``input_shape``; raises ValueError if it does not fit."""
        return {name: info[0] for name, info in trace(self, input_shape).items()}

    def check_input_shape(self, shape: tuple[int, ...], what: str = "input") -> None:
        """Raise ValueError unless ``shape`` is (N, in_channels, H, W) and big enough."""
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(f"{what}: expected a 4-D NCHW array (N, {self.in_channels}, H, W), "
                             f"got shape {shape}")
        if shape[1] != self.in_channels:
            raise ValueError(f"{what}: expected {self.in_channels} input channel(s) (NCHW), got "
                             f"shape {shape}")
        if shape[0] < 1:
            raise ValueError(f"{what}: batch size must be >= 1, got shape {shape}")
        trace(self, shape)


# --------------------------------------------------------------------------- walking the plan


def op_output(op, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    n, c, h, w = shape
    if isinstance(op, Conv):
        return (n, op.out_channels, op.out_size(h), op.out_size(w))
    if isinstance(op, (MaxPool, AvgPool)):
        return (n, c, op.out_size(h), op.out_size(w))
    return shape


def op_macs(op, in_shape, out_shape) -> int:
    """Multiply-accumulates of one op for one batch (convs and linears; BN folded away)."""
    if isinstance(op, Conv):
        n, c_out, h, w = out_shape
        return n * h * w * c_out * (op.in_channels // op.groups) * op.kernel_size ** 2
    if isinstance(op, Linear):
        return in_shape[0] * op.in_features * op.out_features
    if isinstance(op, SqueezeExcite):
        return in_shape[0] * 2 * op.channels * op.reduced_channels
    return 0


def trace(plan: Plan, input_shape) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shape and multiply-accumulates of every tap (MACs counted since the previous tap)."""
    shape = tuple(int(s) for s in input_shape)
    result: dict[str, tuple[tuple[int, ...], int]] = {}

    def run(ops, shape, where):
        macs = 0
        for op in ops:
            out = op_output(op, shape)
            if out[2] < 1 or out[3] < 1:
                raise ValueError(f"input {tuple(input_shape)} is too small: {where} "
                                 f"({type(op).__name__}) would give spatial size {out[2:]}")
            macs += op_macs(op, shape, out)
            shape = out
        return shape, macs

    shape, macs = run(plan.stem, shape, "the stem")
    result["stem"] = (shape, macs)
    for stage in plan.stages:
        for block in stage.blocks:
            out, macs = run(block.main, shape, block.name)
            if block.se is not None:
                macs += op_macs(block.se, out, out)
            short, short_macs = run(block.shortcut, shape, f"{block.name} shortcut")
            assert short == out, f"plan error: {block.name} main {out} != shortcut {short}"
            shape = out
            result[block.name] = (shape, macs + short_macs)
        result[stage.name] = (shape, 0)
    if plan.head is not None:
        pooled = (shape[0], shape[1])
        result["pre_logits"] = (pooled, 0)
        fc = plan.head.fc
        result["logits"] = ((shape[0], fc.out_features), op_macs(fc, pooled, None))
    return result


# --------------------------------------------------------------------------- spec -> plan


def _conv_init(spec: ResNetSpec, shape: tuple[int, ...]) -> tuple[str, float]:
    out_c, in_c_per_group, kh, kw = shape
    receptive = kh * kw
    scheme = spec.init.conv
    if scheme == "kaiming_normal_fan_out":  # torchvision / timm
        return ("normal", math.sqrt(2.0 / (out_c * receptive)))
    if scheme == "kaiming_normal_fan_in":  # Paddle's KaimingNormal (PaddleOCR ResNet45)
        return ("normal", math.sqrt(2.0 / (in_c_per_group * receptive)))
    # torch's default reset_parameters: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +)
    return ("uniform", 1.0 / math.sqrt(in_c_per_group * receptive))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """timm's make_divisible (round_limit 0.9) for SE reduced channels."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class _Builder:
    """Collects the parameter table while ops are created, so names exist in one place."""

    def __init__(self, spec: ResNetSpec):
        self.spec = spec
        self.params: dict[str, ParamInfo] = {}

    def _add(self, name, shape, role, init):
        assert name not in self.params, name
        self.params[name] = ParamInfo(name, tuple(shape), role, init)

    def conv(self, name, in_c, out_c, k, stride=1, dilation=1, groups=1, bias=None) -> Conv:
        bias = self.spec.conv_bias if bias is None else bias
        shape = (out_c, in_c // groups, k, k)
        self._add(f"{name}.weight", shape, "conv_weight", _conv_init(self.spec, shape))
        if bias:
            fan_in = (in_c // groups) * k * k
            init = ("uniform", 1.0 / math.sqrt(fan_in)) if self.spec.init.conv == "torch_default" else ("zeros", 0.0)
            self._add(f"{name}.bias", (out_c,), "conv_bias", init)
        # 'same'-style symmetric padding for odd kernels, scaled by dilation
        return Conv(name, in_c, out_c, k, stride, dilation * (k - 1) // 2, dilation, groups, bias)

    def bn(self, name, channels, zero_init=False) -> BatchNorm:
        self._add(f"{name}.weight", (channels,), "bn_weight", ("zeros" if zero_init else "ones", 0.0))
        self._add(f"{name}.bias", (channels,), "bn_bias", ("zeros", 0.0))
        self._add(f"{name}.running_mean", (channels,), "bn_mean", ("zeros", 0.0))
        self._add(f"{name}.running_var", (channels,), "bn_var", ("ones", 0.0))
        return BatchNorm(name, channels, float(self.spec.norm.eps), float(self.spec.norm.momentum))

    def linear(self, name, in_f, out_f) -> Linear:
        bound = 1.0 / math.sqrt(in_f)  # torch's nn.Linear default
        self._add(f"{name}.weight", (out_f, in_f), "linear_weight", ("uniform", bound))
        self._add(f"{name}.bias", (out_f,), "linear_bias", ("uniform", bound))
        return Linear(name, in_f, out_f)

    def se(self, name, channels) -> SqueezeExcite:
        reduced = _make_divisible(channels * self.spec.block.se_ratio)
        self.conv(f"{name}.fc1", channels, reduced, 1, bias=True)
        self.conv(f"{name}.fc2", reduced, channels, 1, bias=True)
        return SqueezeExcite(name, channels, reduced)


def _stem(b: _Builder) -> tuple[tuple[Op, ...], int]:
    spec = b.spec
    stem = spec.stem
    ops: list = []
    in_c = spec.in_channels
    if len(stem.widths) == 1:
        ops += [b.conv("conv1", in_c, stem.widths[0], stem.kernel_size, stem.stride), b.bn("bn1", stem.widths[0]),
                ReLU()]
    else:
        # timm's deep stem: nn.Sequential(conv, bn, relu, conv, bn, relu, conv) then bn1
        for i, width in enumerate(stem.widths):
            stride = stem.stride if i == 0 else 1
            ops.append(b.conv(f"conv1.{3 * i}", in_c, width, stem.kernel_size, stride))
            if i < len(stem.widths) - 1:
                ops += [b.bn(f"conv1.{3 * i + 1}", width), ReLU()]
            in_c = width
        ops += [b.bn("bn1", stem.widths[-1]), ReLU()]
    if stem.pool:
        ops.append(MaxPool(kernel_size=3, stride=2, padding=1))
    return tuple(ops), stem.widths[-1]


def _block(b: _Builder, name: str, in_c: int, channels: int, stride: int, dilation: int,
           first_dilation: int, project: bool) -> Block:
    spec = b.spec
    blk = spec.block
    out_c = channels * blk.resolved_expansion
    zero = spec.init.zero_init_last_bn
    if blk.kind == "basic":
        main = (b.conv(f"{name}.conv1", in_c, channels, 3, stride, first_dilation), b.bn(f"{name}.bn1", channels),
                ReLU(),
                b.conv(f"{name}.conv2", channels, out_c, 3, 1, dilation), b.bn(f"{name}.bn2", out_c, zero))
    elif blk.kind == "basic_1x1":
        main = (b.conv(f"{name}.conv1", in_c, channels, 1), b.bn(f"{name}.bn1", channels), ReLU(),
                b.conv(f"{name}.conv2", channels, out_c, 3, stride, first_dilation),
                b.bn(f"{name}.bn2", out_c, zero))
    else:  # bottleneck
        width = int(channels * blk.width_per_group / 64) * blk.groups
        s1, s3 = (stride, 1) if blk.stride_on == "1x1" else (1, stride)
        main = (b.conv(f"{name}.conv1", in_c, width, 1, s1), b.bn(f"{name}.bn1", width), ReLU(),
                b.conv(f"{name}.conv2", width, width, 3, s3, first_dilation, blk.groups),
                b.bn(f"{name}.bn2", width), ReLU(),
                b.conv(f"{name}.conv3", width, out_c, 1), b.bn(f"{name}.bn3", out_c, zero))
    se = b.se(f"{name}.se", out_c) if blk.se_ratio > 0 else None

    shortcut: tuple = ()
    if project:
        kind = spec.shortcut.kind
        ds = f"{name}.downsample"
        if kind == "conv_bn":
            shortcut = (b.conv(f"{ds}.0", in_c, out_c, 1, stride), b.bn(f"{ds}.1", out_c))
        elif kind == "conv":
            shortcut = (b.conv(f"{ds}.0", in_c, out_c, 1, stride),)
        else:  # avgpool_conv_bn (ResNet-D); timm: no pool when stride is 1
            pool = (AvgPool(2, stride, 0, ceil_mode=True, count_include_pad=False),) if stride > 1 else ()
            shortcut = pool + (b.conv(f"{ds}.1", in_c, out_c, 1), b.bn(f"{ds}.2", out_c))
    return Block(name, in_c, out_c, main, se, shortcut)


def make_plan(spec: ResNetSpec) -> Plan:
    """Expand ``spec`` into an explicit Plan (layers + canonical parameter table).

    Args:
        spec: a validated ResNetSpec.
    Returns:
        The Plan; ``plan.params`` lists every canonical parameter and buffer in module order.
    Example:
        >>> p = make_plan(rm.get_spec("resnet50")); p.params["fc.weight"].shape
        (1000, 2048)
    """
    b = _Builder(spec)
    stem, in_c = _stem(b)
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
    head = None
    if spec.head is not None:
        head = Head(float(spec.head.dropout), b.linear("fc", in_c, spec.head.num_classes))
    return Plan(spec, stem, tuple(stages), head, spec.out_indices, b.params)
