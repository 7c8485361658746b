"""The IR's ops: plain frozen dataclasses, each with its shape rule (``out_shape``) and its
multiply-accumulate count (``macs``). The only framework-neutral description of what an op
computes; every backend maps each op type to one primitive (its ``ops`` table), and the numpy
oracle (``resnet_multi.reference``) to one numpy function.

Ops with a ``name`` are modules: the name is their canonical module path (``layer3.4.conv2``),
their parameters are ``<name>.weight`` etc. in ``Plan.params``, and backends register them under
that path, so a model's state_dict names are canonical:

- ``Conv``       2-D convolution, symmetric ``padding`` (never 'SAME').
- ``BatchNorm``  eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias.
- ``Linear``     (out, in) weight and a bias.
- ``Dropout``    a module without parameters (it has a train mode).
- ``Act``        relu | sigmoid | hard_sigmoid (``relu6(x + 3) / 6``, timm's).
- ``MaxPool``    padding counts as -inf.  ``AvgPool``: ``ceil_mode``/``count_include_pad`` spelled out.
- ``GlobalAvgPool``  mean over H, W; ``flatten`` gives (N, C), else (N, C, 1, 1).
- ``AdaptiveAvgPool``  average pooling to size x size (PyTorch's adaptive windows).
- ``Flatten``, ``Add`` (sum of its inputs), ``Mul`` (product, broadcasting a gate),
  ``Concat`` (along channels), ``Slice`` (channels ``start:stop``).
- The ConvNeXt generation's: ``LayerNorm`` (over channels), ``ChannelLinear`` (a Linear over the
  channels of a map), ``LayerScale`` (a per-channel parameter), ``DropPath`` (stochastic depth),
  ``Scale`` (a constant), ``Interleave`` (two maps, channel by channel), ``GlobalFilter``
  (HorNet's FFT filter); ``Act`` "gelu".

``Act`` and the pools may carry a ``name`` too: the path of the
reference model's own parameterless module for them (torchvision's ``relu``, ``maxpool``,
``avgpool``, ``layer1.0.relu``). The torch and Paddle backends register a module there and call
it, so ``model.maxpool = nn.Identity()`` or a hook on ``model.relu`` acts as on the reference
model; ops sharing a name share one module, as torchvision's blocks reuse ``self.relu``. For
every other consumer they stay functions, and they are not in ``Part.modules``.

Shapes are NCHW, or (N, C) after flattening, whatever layout a backend computes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple[int, ...]


class Op:
    """Base of every op: by default the output has the first input's shape and costs no MACs."""

    def out_shape(self, *shapes: Shape) -> Shape:
        return shapes[0]

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        """Multiply-accumulates for one batch (convs and linears; BN is folded away)."""
        return 0


def _spatial(op, shape: Shape, channels: int) -> Shape:
    n, _, h, w = shape
    return (n, channels, op.out_size(h), op.out_size(w))


@dataclass(frozen=True)
class Conv(Op):
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

    def out_shape(self, *shapes: Shape) -> Shape:
        return _spatial(self, shapes[0], self.out_channels)

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        n, c_out, h, w = out_shape
        return n * h * w * c_out * (self.in_channels // self.groups) * self.kernel_size ** 2


@dataclass(frozen=True)
class BatchNorm(Op):
    name: str
    channels: int
    eps: float
    momentum: float  # PyTorch convention: weight of the new batch statistic
    running_var: str = "unbiased"  # train-mode estimator stored in running_var (spec.norm.running_var)


@dataclass(frozen=True)
class Linear(Op):
    name: str
    in_features: int
    out_features: int

    def out_shape(self, *shapes: Shape) -> Shape:
        return (shapes[0][0], self.out_features)

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        return in_shape[0] * self.in_features * self.out_features


@dataclass(frozen=True)
class Dropout(Op):
    name: str
    rate: float


ACTIVATIONS = ("relu", "sigmoid", "hard_sigmoid", "gelu")
"""gelu is the exact one, ``x * (1 + erf(x / sqrt(2))) / 2`` (never the tanh approximation)."""


@dataclass(frozen=True)
class Act(Op):
    kind: str = "relu"
    name: str = ""  # the reference model's module for it, if it has one (see the module docstring)


def ReLU(name: str = "") -> Act:  # noqa: N802 (reads as the op it makes)
    return Act("relu", name)


@dataclass(frozen=True)
class MaxPool(Op):
    kernel_size: int
    stride: int
    padding: int
    name: str = ""

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel_size) // self.stride + 1

    def out_shape(self, *shapes: Shape) -> Shape:
        return _spatial(self, shapes[0], shapes[0][1])


@dataclass(frozen=True)
class AvgPool(Op):
    kernel_size: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    name: str = ""

    def out_size(self, size: int) -> int:
        span = size + 2 * self.padding - self.kernel_size
        if not self.ceil_mode:
            return span // self.stride + 1
        out = -(-span // self.stride) + 1
        # As PyTorch and Paddle: the last window must start inside the input or left padding.
        if (out - 1) * self.stride >= size + self.padding:
            out -= 1
        return out

    def out_shape(self, *shapes: Shape) -> Shape:
        return _spatial(self, shapes[0], shapes[0][1])


@dataclass(frozen=True)
class GlobalAvgPool(Op):
    flatten: bool = True
    name: str = ""  # named (a module): flatten must be False, as nn.AdaptiveAvgPool2d(1)

    def out_shape(self, *shapes: Shape) -> Shape:
        shape = shapes[0]
        return shape[:2] if self.flatten else (*shape[:2], 1, 1)


@dataclass(frozen=True)
class AdaptiveAvgPool(Op):
    """Average pooling to ``size`` x ``size`` whatever the input size: output cell ``i`` averages
    rows ``floor(i * H / size)`` to ``ceil((i + 1) * H / size)`` (exclusive), and so for columns,
    as ``nn.AdaptiveAvgPool2d`` (torchvision's VGG: ``avgpool``, 7 x 7)."""

    size: int
    name: str = ""

    def out_shape(self, *shapes: Shape) -> Shape:
        return (*shapes[0][:2], self.size, self.size)


def adaptive_windows(in_size: int, out_size: int) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of each output cell's window along one axis (see AdaptiveAvgPool)."""
    return tuple((i * in_size // out_size, -(-(i + 1) * in_size // out_size)) for i in range(out_size))


def align_corners_weights(in_size: int, out_size: int) -> tuple[tuple[int, int, float], ...]:
    """Bilinear resizing with ``align_corners=True`` along one axis: per output position, the two
    input positions it mixes and the weight of the second, ``(lo, hi, frac)``; output ``i`` sits at
    input ``i * (in - 1) / (out - 1)`` (PyTorch's ``F.interpolate``; GlobalFilter's weight)."""
    out = []
    for i in range(out_size):
        pos = 0.0 if out_size == 1 else i * (in_size - 1) / (out_size - 1)
        lo = min(int(pos), in_size - 1)
        out.append((lo, min(lo + 1, in_size - 1), pos - lo))
    return tuple(out)


def align_corners_matrix(in_size: int, out_size: int) -> tuple[tuple[float, ...], ...]:
    """The same resizing as an (out, in) matrix (rows of plain floats): what the backends multiply
    GlobalFilter's weight by, where their own interpolation has no align_corners (Flax) or is not
    exact in float64 (Paddle)."""
    rows = []
    for lo, hi, frac in align_corners_weights(in_size, out_size):
        row = [0.0] * in_size
        row[lo] += 1.0 - frac
        row[hi] += frac
        rows.append(tuple(row))
    return tuple(rows)


@dataclass(frozen=True)
class Flatten(Op):
    name: str = ""  # torchvision's ConvNeXt has a Flatten module (classifier.1)

    def out_shape(self, *shapes: Shape) -> Shape:
        return (shapes[0][0], math.prod(shapes[0][1:]))


@dataclass(frozen=True)
class Add(Op):
    def out_shape(self, *shapes: Shape) -> Shape:
        return max(shapes, key=math.prod)


@dataclass(frozen=True)
class Mul(Op):
    def out_shape(self, *shapes: Shape) -> Shape:
        return max(shapes, key=math.prod)  # broadcasts a (N, C, 1, 1) gate


@dataclass(frozen=True)
class Concat(Op):
    def out_shape(self, *shapes: Shape) -> Shape:
        return (shapes[0][0], sum(s[1] for s in shapes), *shapes[0][2:])


@dataclass(frozen=True)
class Slice(Op):
    start: int
    stop: int

    def out_shape(self, *shapes: Shape) -> Shape:
        return (shapes[0][0], self.stop - self.start, *shapes[0][2:])


# --------------------------------------------------------------------------- the ConvNeXt generation

LAYER_NORM_FORMS = ("fused", "explicit")
"""How a LayerNorm computes, to match each reference bit for bit where it promises so: "fused" is
the framework's own layer-norm kernel on the channels-last view (torchvision's LayerNorm2d, an
``nn.LayerNorm`` after a permute); "explicit" is written out as HorNet's channels-first LayerNorm
is: ``u = mean(x); s = mean((x - u) ** 2); (x - u) / sqrt(s + eps) * weight + bias``."""


@dataclass(frozen=True)
class LayerNorm(Op):
    """Layer normalization over the channels at every position of an NCHW map (or of an (N, C)
    vector): ``(x - mean) / sqrt(biased variance + eps) * weight + bias``; parameters
    ``<name>.weight`` and ``<name>.bias``, shape (C,). See LAYER_NORM_FORMS for ``form``."""

    name: str
    channels: int
    eps: float
    form: str = "fused"


@dataclass(frozen=True)
class ChannelLinear(Op):
    """A Linear applied to the channels at every position of an NCHW map (an ``nn.Linear`` after a
    permute to channels-last: ConvNeXt's and HorNet's MLPs); weight (out, in) and bias."""

    name: str
    in_features: int
    out_features: int

    def out_shape(self, *shapes: Shape) -> Shape:
        n, _, *spatial = shapes[0]
        return (n, self.out_features, *spatial)

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        return math.prod(out_shape) // self.out_features * self.in_features * self.out_features


@dataclass(frozen=True)
class LayerScale(Op):
    """``x`` times a learned per-channel scale: the parameter called ``name`` (a whole parameter
    name such as ``features.1.0.layer_scale``, held by the module that runs the part), of the
    reference's shape ``shape``: (C, 1, 1) in torchvision's ConvNeXt, (C,) in HorNet."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DropPath(Op):
    """Row-mode stochastic depth (a module with a train mode): in train mode each sample's value is
    zeroed with probability ``rate`` and the others divided by ``1 - rate``; in eval mode, or at
    rate 0, the identity. torchvision's ``StochasticDepth(p, "row")``, timm's ``DropPath``."""

    name: str
    rate: float


@dataclass(frozen=True)
class Scale(Op):
    """``x`` times a constant (HorNet's ``gnconv``: the depthwise branch times ``s = 1/3``)."""

    factor: float


@dataclass(frozen=True)
class Interleave(Op):
    """Two maps of C channels each, interleaved channel by channel into 2C: channel 2i is the first
    input's channel i, channel 2i+1 the second's (HorNet's GlobalLocalFilter)."""

    def out_shape(self, *shapes: Shape) -> Shape:
        n, c, *spatial = shapes[0]
        return (n, 2 * c, *spatial)


@dataclass(frozen=True)
class GlobalFilter(Op):
    """HorNet's global filter: in float32, ``irfft2(rfft2(x, norm="ortho") * W, s=(H, W),
    norm="ortho")`` over H and W, where ``W`` is the complex weight called ``name`` (a whole
    parameter name, ``...gnconv.dwconv.complex_weight``, held by the module that runs the part)
    stored as a real (C, h, w, 2) parameter; when (h, w) is not (H, W // 2 + 1) the weight is
    first resized to it bilinearly with ``align_corners=True``. MACs count the weight product only
    (the FFTs' own cost, O(HW log HW) per channel, is left out)."""

    name: str
    channels: int
    height: int
    width: int

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        n, c, h, w = in_shape
        return n * c * h * (w // 2 + 1) * 4  # a complex product is 4 real multiply-accumulates


OPS = (Conv, BatchNorm, Linear, Dropout, Act, MaxPool, AvgPool, GlobalAvgPool, AdaptiveAvgPool, Flatten, Add, Mul,
       Concat, Slice, LayerNorm, ChannelLinear, LayerScale, DropPath, Scale, Interleave, GlobalFilter)
"""Every op type of the IR. Each backend's op table and the oracle's cover exactly these (a
contract test checks it), so an op added here without a primitive everywhere fails the tests."""
MODULE_OPS = (Conv, BatchNorm, Linear, Dropout, LayerNorm, ChannelLinear, DropPath)
"""Ops that are modules of the model (registered under ``op.name``); all others are functions."""
NAMEABLE_OPS = (Act, MaxPool, AvgPool, GlobalAvgPool, AdaptiveAvgPool, Flatten)
PARAMETER_OPS = (LayerScale, GlobalFilter)
"""Ops whose ``name`` is one parameter's whole name, held by the module that runs their part."""
"""Parameterless ops that may name the reference model's module for them (``op.name``)."""
BROADCASTING_OPS = (Add, Mul)
"""Ops of several inputs whose shapes must agree up to a (N, C, 1, 1) gate."""


def module_name(op) -> str:
    """The module path of a named parameterless op (NAMEABLE_OPS), else ""."""
    return op.name if isinstance(op, NAMEABLE_OPS) else ""


def op_output(op: Op, *shapes: Shape) -> Shape:
    """The output shape of ``op`` applied to inputs of ``shapes``."""
    return op.out_shape(*shapes)


def op_macs(op: Op, in_shape: Shape, out_shape: Shape) -> int:
    """Multiply-accumulates of one op for one batch."""
    return op.macs(in_shape, out_shape)
