"""Spec -> explicit plan: every layer with its channels, kernel, stride, padding, and the
canonical parameter table. The only place where architecture arithmetic happens.

The plan is data, and every consumer (the three backends, the numpy oracle, BatchNorm folding,
parity taps, summary, weight naming) walks it the same way, through ``resnet_multi.walk``:

- A ``Part`` is a small graph of ops run as one unit: the stem, one block, or the head. Its
  ``nodes`` are in execution order; each ``Node`` applies one op to named values (``"x"`` is the
  part's input) and names its output, so a block's wiring (residual add, concatenation, slicing,
  a gate) is data, not code. ``taps`` publishes values under tap names.
- ``Plan``: ``stem`` (a Part), ``stages`` (each a tuple of block Parts, published as the stage's
  tap after its last block), ``head`` (a Part or None).

Ops are plain frozen dataclasses. Ops with a ``name`` are modules: the name is their canonical
module path (``layer3.4.conv2``), their parameters are ``<name>.weight`` etc. in ``Plan.params``,
and backends register them under that path, so a model's state_dict names are canonical:

- ``Conv``       2-D convolution, symmetric ``padding`` (never 'SAME').
- ``BatchNorm``  eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias.
- ``Linear``     (out, in) weight and a bias.
- ``Dropout``    a module without parameters (it has a train mode).
- ``Act``        relu | sigmoid | hard_sigmoid (``relu6(x + 3) / 6``, timm's).
- ``MaxPool``    padding counts as -inf.  ``AvgPool``: ``ceil_mode``/``count_include_pad`` spelled out.
- ``GlobalAvgPool``  mean over H, W; ``flatten`` gives (N, C), else (N, C, 1, 1).
- ``Flatten``, ``Add`` (sum of its inputs), ``Mul`` (product, broadcasting a gate),
  ``Concat`` (along channels), ``Slice`` (channels ``start:stop``).

``Act``, ``MaxPool``, ``AvgPool`` and ``GlobalAvgPool`` may carry a ``name`` too: the path of the
reference model's own parameterless module for them (torchvision's ``relu``, ``maxpool``,
``avgpool``, ``layer1.0.relu``). The torch and Paddle backends register a module there and call
it, so ``model.maxpool = nn.Identity()`` or a hook on ``model.relu`` acts as on the reference
model; ops sharing a name share one module, as torchvision's blocks reuse ``self.relu``. For
every other consumer they stay functions, and they are not in ``Part.modules``.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .spec import ResNetSpec, make_divisible

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
    running_var: str = "unbiased"  # train-mode estimator stored in running_var (spec.norm.running_var)


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Dropout:
    name: str
    rate: float


ACTIVATIONS = ("relu", "sigmoid", "hard_sigmoid")


@dataclass(frozen=True)
class Act:
    kind: str = "relu"
    name: str = ""  # the reference model's module for it, if it has one (see the module docstring)


def ReLU(name: str = "") -> Act:  # noqa: N802 (reads as the op it makes)
    return Act("relu", name)


@dataclass(frozen=True)
class MaxPool:
    kernel_size: int
    stride: int
    padding: int
    name: str = ""

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel_size) // self.stride + 1


@dataclass(frozen=True)
class AvgPool:
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


@dataclass(frozen=True)
class GlobalAvgPool:
    flatten: bool = True
    name: str = ""  # named (a module): flatten must be False, as nn.AdaptiveAvgPool2d(1)


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Add:
    pass


@dataclass(frozen=True)
class Mul:
    pass


@dataclass(frozen=True)
class Concat:
    pass


@dataclass(frozen=True)
class Slice:
    start: int
    stop: int


MODULE_OPS = (Conv, BatchNorm, Linear, Dropout)
"""Ops that are modules of the model (registered under ``op.name``); all others are functions."""
NAMEABLE_OPS = (Act, MaxPool, AvgPool, GlobalAvgPool)
"""Parameterless ops that may name the reference model's module for them (``op.name``)."""


def module_name(op) -> str:
    """The module path of a named parameterless op (NAMEABLE_OPS), else ""."""
    return op.name if isinstance(op, NAMEABLE_OPS) else ""


# --------------------------------------------------------------------------- graph


INPUT = "x"
"""The value name of a part's input."""


@dataclass(frozen=True)
class Node:
    """``output = op(*inputs)``; inputs and output are value names within one Part."""

    op: Any
    inputs: tuple[str, ...]
    output: str
    inplace: bool = False  # op may overwrite inputs[0] (see resnet_multi.walk)


def _dead_after(nodes, output: str) -> tuple[tuple[str, ...], ...]:
    """Per node, the values that no later node reads and that are not the part's output.

    The walk drops them right after that node, so an intermediate is freed when it is dead,
    as in a framework's own eager code, not when the part ends: holding a block's
    intermediates to its end made ghostnet_100 (batch 8) allocate fresh memory where timm's
    model reuses freed buffers.
    """
    last_reader = {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            last_reader[name] = i
    dead: list[list[str]] = [[] for _ in nodes]
    for name, i in last_reader.items():
        if name != output:
            dead[i].append(name)
    return tuple(tuple(names) for names in dead)


@dataclass(frozen=True)
class Part:
    """One unit of the network: the stem, a block, or the head (see the module docstring).

    ``name``: the block's canonical module path ("layer3.4"), or "stem" / "head". ``prefix``: what
    the names of its ops start with relative to the module that runs it ("layer3.4." for a block,
    "" for the stem and head, whose modules sit on the model itself).
    """

    name: str
    prefix: str
    in_channels: int
    out_channels: int
    nodes: tuple[Node, ...]
    output: str
    taps: tuple[tuple[str, str], ...] = ()  # (value name, tap name), in execution order
    # per node, the values no later node reads (not the output): see _dead_after. A plain
    # attribute set at construction, not a cached property: Paddle's SOT to_static crashes
    # (segfault) simulating Python 3.11's cached_property lock.
    dead_after: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)

    @property
    def ops(self) -> tuple:
        return tuple(node.op for node in self.nodes)

    @property
    def modules(self) -> tuple:
        """The ops that are modules, in execution order."""
        return tuple(op for op in self.ops if isinstance(op, MODULE_OPS))

    @property
    def named_functions(self) -> dict[str, tuple[Node, ...]]:
        """``{module path: the nodes that call it}`` for the named parameterless ops (see the
        module docstring), in execution order; a torchvision block's ``relu`` has two or three."""
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            if module_name(node.op):
                out.setdefault(node.op.name, []).append(node)
        return {name: tuple(nodes) for name, nodes in out.items()}

    def local_name(self, op) -> str:
        """``op.name`` relative to the module that runs this part."""
        return op.name[len(self.prefix):]

    def __post_init__(self):
        object.__setattr__(self, "dead_after", _dead_after(self.nodes, self.output))



@dataclass(frozen=True)
class Stage:
    name: str                      # "layer1", ... (its tap: the output of its last block)
    blocks: tuple[Part, ...]

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels


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
    stem: Part
    stages: tuple[Stage, ...]
    head: Part | None
    out_indices: tuple[int, ...] | None
    params: dict[str, ParamInfo]   # canonical name -> info, in module order
    neck: Part | None = None       # after the last stage, before the head; part of the features
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    """Other names of the plan's modules: scheme -> {canonical module path: its path there}.
    A backend whose NAME is a scheme names its modules that way (paddle: PaddleClas' DenseNet);
    every reader also accepts them (torchvision's legacy DenseNet keys, scheme "legacy")."""

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def out_channels(self) -> int:
        """Channels of the last feature map."""
        return (self.neck or self.stages[-1]).out_channels

    @property
    def parts(self) -> tuple[Part, ...]:
        """Every part in execution order: stem, blocks, head."""
        blocks = tuple(block for stage in self.stages for block in stage.blocks)
        return (self.stem, *blocks, *self.flat_parts[1:])

    @property
    def flat_parts(self) -> tuple[Part, ...]:
        """The parts whose modules sit on the model itself (prefix ""): stem, neck, head."""
        return tuple(part for part in (self.stem, self.neck, self.head) if part is not None)

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Named intermediate outputs, in execution order: stem, every block, every stage,
        and with a head pre_logits and logits."""
        names = [tap for _, tap in self.stem.taps]
        for stage in self.stages:
            for block in stage.blocks:
                names.extend(tap for _, tap in block.taps)
            names.append(stage.name)
        for part in self.flat_parts[1:]:
            names.extend(tap for _, tap in part.taps)
        return tuple(names)

    @property
    def first_conv(self) -> str:
        """The module name of the stem's first convolution (the one that reads the input image;
        timm's pretrained cfgs call it ``first_conv``)."""
        return next(op.name for op in self.stem.ops if isinstance(op, Conv))

    @property
    def classifier(self) -> str | None:
        """The module name of the head's classifier (its last Linear), or None without a head."""
        if self.head is None:
            return None
        linears = [op.name for op in self.head.ops if isinstance(op, Linear)]
        return linears[-1] if linears else None

    @property
    def buffers(self) -> tuple[str, ...]:
        """The names in ``params`` that are buffers (running statistics), not trainable parameters."""
        return tuple(name for name, info in self.params.items() if info.is_buffer)

    def native_names(self, scheme: str) -> dict[str, str]:
        """``{canonical parameter name: its name in naming scheme}`` for the parameters whose
        module ``aliases[scheme]`` renames (leaves, e.g. ``.weight``, are kept)."""
        modules = self.aliases.get(scheme, {})
        out = {}
        for name in self.params:
            owner, leaf = name.rsplit(".", 1)
            if owner in modules:
                out[name] = f"{modules[owner]}.{leaf}"
        return out

    @functools.cached_property
    def _canonical_of(self) -> dict[str, str]:
        return {other: name for scheme in self.aliases for name, other in self.native_names(scheme).items()}

    def canonical_name(self, name: str) -> str:
        """The canonical name of a parameter called ``name`` in any of the plan's naming schemes
        (``aliases``); a name that is no alias is returned as it is."""
        return self._canonical_of.get(name, name)

    def part_params(self, part: Part) -> tuple[str, ...]:
        """The canonical parameter and buffer names of one part's modules."""
        owners = {op.name for op in part.modules}
        return tuple(name for name in self.params if name.rsplit(".", 1)[0] in owners)

    def output_names(self) -> tuple[str, ...]:
        """Which taps the model returns: logits, the last stage, or the out_indices stages."""
        if self.head is not None:
            return ("logits",)
        if self.out_indices is not None:
            return tuple(self.stages[i].name for i in self.out_indices)
        if self.neck is not None:
            return (self.neck.taps[-1][1],)
        if not self.stages:  # a stem-only plan (the op contract tests run one op this way)
            return (self.stem.taps[-1][1],)
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


# --------------------------------------------------------------------------- shapes and MACs


def op_output(op, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``op`` applied to inputs of ``shapes`` (NCHW, or (N, C) after flattening)."""
    shape = shapes[0]
    if isinstance(op, Conv):
        n, _, h, w = shape
        return (n, op.out_channels, op.out_size(h), op.out_size(w))
    if isinstance(op, (MaxPool, AvgPool)):
        n, c, h, w = shape
        return (n, c, op.out_size(h), op.out_size(w))
    if isinstance(op, GlobalAvgPool):
        return shape[:2] if op.flatten else (*shape[:2], 1, 1)
    if isinstance(op, Flatten):
        return (shape[0], math.prod(shape[1:]))
    if isinstance(op, Linear):
        return (shape[0], op.out_features)
    if isinstance(op, Concat):
        return (shape[0], sum(s[1] for s in shapes), *shape[2:])
    if isinstance(op, Slice):
        return (shape[0], op.stop - op.start, *shape[2:])
    if isinstance(op, (Add, Mul)):
        return max(shapes, key=math.prod)  # Mul broadcasts a (N, C, 1, 1) gate
    return shape


def op_macs(op, in_shape, out_shape) -> int:
    """Multiply-accumulates of one op for one batch (convs and linears; BN folded away)."""
    if isinstance(op, Conv):
        n, c_out, h, w = out_shape
        return n * h * w * c_out * (op.in_channels // op.groups) * op.kernel_size ** 2
    if isinstance(op, Linear):
        return in_shape[0] * op.in_features * op.out_features
    return 0


def trace(plan: Plan, input_shape) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shape and multiply-accumulates of every tap (MACs counted since the previous tap)."""
    from .walk import run_plan

    macs = [0]
    result: dict[str, tuple[tuple[int, ...], int]] = {}

    def apply(node, *shapes):
        op = node.op
        out = op_output(op, *shapes)
        if len(out) == 4 and (out[2] < 1 or out[3] < 1):
            where = getattr(op, "name", None) or node.output
            raise ValueError(f"input {tuple(input_shape)} is too small: {where} ({type(op).__name__}) "
                             f"would give spatial size {out[2:]}")
        if isinstance(op, (Add, Mul)):
            assert all(s[:2] == out[:2] and s[2:] in (out[2:], (1, 1)) for s in shapes), \
                f"plan error: {node.output} {type(op).__name__} of shapes {shapes}"
        macs[0] += op_macs(op, shapes[0], out)
        return out

    class Taps(dict):  # each tap takes the MACs counted since the previous one
        def __setitem__(self, name, shape):
            result[name] = (shape, macs[0])
            macs[0] = 0

    run_plan(plan, tuple(int(s) for s in input_shape), apply, taps=Taps())
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



# Ops whose backward pass needs their inputs (or nothing), never their own output: a later op
# may overwrite that output in place. (A Slice is a view of its input: see ``_mark_inplace``.)
_OVERWRITABLE = (Conv, BatchNorm, Add, Mul, Concat)


class _Graph:
    """Collects one part's nodes: ``add(op, *inputs) -> value name``."""

    def __init__(self, name: str, prefix: str, in_channels: int):
        self.name, self.prefix, self.in_channels = name, prefix, in_channels
        self.nodes: list[Node] = []

    def add(self, op, *inputs: str) -> str:
        # a module's output is named after it; any other value (a named function such as a block's
        # relu may be called several times) after its position, so that every name is unique
        output = op.name if isinstance(op, MODULE_OPS) else f"{len(self.nodes)}.{type(op).__name__.lower()}"
        assert all(node.output != output for node in self.nodes), f"plan error: {output!r} made twice"
        self.nodes.append(Node(op, tuple(inputs), output))
        return output

    def chain(self, ops, x: str = INPUT) -> str:
        for op in ops:
            x = self.add(op, x)
        return x

    def part(self, output: str, out_channels: int, taps: tuple[tuple[str, str], ...]) -> Part:
        return Part(self.name, self.prefix, self.in_channels, out_channels, _mark_inplace(self.nodes, output, taps),
                    output, taps)


def _mark_inplace(nodes: list[Node], output: str, taps) -> tuple[Node, ...]:
    producer = {node.output: node for node in nodes}
    kept = {output, INPUT} | {value for value, _ in taps}
    readers = Counter(name for node in nodes for name in node.inputs)

    def overwritable(value: str) -> bool:
        made_by = producer.get(value)
        if made_by is None:
            return False
        if isinstance(made_by.op, Slice):
            # a view: writing it writes its base, which must be as free as the view itself
            # (GhostNet's `ghost2(x)[:, :c] += shortcut`, as timm's `x += self.shortcut(shortcut)`)
            base = made_by.inputs[0]
            return base not in kept and readers[base] == 1 and overwritable(base)
        return isinstance(made_by.op, _OVERWRITABLE)

    marked = []
    for i, node in enumerate(nodes):
        first = node.inputs[0]
        used_later = any(first in later.inputs for later in nodes[i + 1:]) or node.inputs.count(first) > 1
        relu = isinstance(node.op, Act) and node.op.kind == "relu"
        inplace = ((relu or isinstance(node.op, Add)) and first not in kept and not used_later
                   and overwritable(first))
        marked.append(Node(node.op, node.inputs, node.output, inplace))
    return tuple(marked)


class _Builder:
    """Collects the parameter table while ops are created, so names exist in one place."""

    def __init__(self, spec: ResNetSpec):
        self.spec = spec
        self.params: dict[str, ParamInfo] = {}
        self.aliases: dict[str, dict[str, str]] = {}

    def alias(self, scheme: str, canonical: str, other: str) -> None:
        """Module ``canonical`` is called ``other`` in naming ``scheme`` (see ``Plan.aliases``)."""
        self.aliases.setdefault(scheme, {})[canonical] = other

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
        norm = self.spec.norm
        return BatchNorm(name, channels, float(norm.eps), float(norm.momentum), norm.running_var)

    def linear(self, name, in_f, out_f) -> Linear:
        bound = 1.0 / math.sqrt(in_f)  # torch's nn.Linear default
        self._add(f"{name}.weight", (out_f, in_f), "linear_weight", ("uniform", bound))
        bias_init = ("zeros", 0.0) if self.spec.init.linear_bias == "zeros" else ("uniform", bound)
        self._add(f"{name}.bias", (out_f,), "linear_bias", bias_init)
        return Linear(name, in_f, out_f)

    def squeeze_excite(self, g: _Graph, name: str, x: str, channels: int, gate: str = "sigmoid",
                       names: tuple[str, str] = ("fc1", "fc2"), reduced: int | None = None) -> str:
        """timm's SE on value ``x``: global mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) ->
        gate -> scale ``x``. Reduced channels: ``reduced``, by default timm's
        make_divisible(channels * se_ratio)."""
        if reduced is None:
            reduced = make_divisible(channels * self.spec.block.se_ratio)
        s = g.chain([GlobalAvgPool(flatten=False), self.conv(f"{name}.{names[0]}", channels, reduced, 1, bias=True),
                     Act("relu"), self.conv(f"{name}.{names[1]}", reduced, channels, 1, bias=True), Act(gate)], x)
        return g.add(Mul(), x, s)


def _stem(b: _Builder) -> Part:
    spec = b.spec
    stem = spec.stem
    g = _Graph("stem", "", spec.in_channels)
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


def _block(b: _Builder, name: str, in_c: int, channels: int, stride: int, dilation: int,
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
    g = _Graph(name, name + ".", in_c)
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
    out = g.add(Add(), out, g.chain(shortcut))
    out = g.add(relu, out)
    return g.part(out, out_c, ((out, name),))


def _head(b: _Builder, in_c: int, classifier: str = "fc", pool: str = "avgpool", act: str = "") -> Part:
    """Global average pool (module ``pool``; "": functional), [``conv_head`` 1x1 conv with bias +
    ReLU (module ``act``) to ``head.hidden_channels`` (timm's GhostNet/MobileNetV3 head)],
    flatten, optional dropout, then the ``classifier``."""
    head = b.spec.head
    g = _Graph("head", "", in_c)
    if head.hidden_channels is None:
        ops = [GlobalAvgPool(flatten=False, name=pool), Flatten()] if pool else [GlobalAvgPool(flatten=True)]
        pooled = g.chain(ops)
    else:
        pooled = g.chain([GlobalAvgPool(flatten=False, name=pool),
                          b.conv("conv_head", in_c, head.hidden_channels, 1, bias=True), Act("relu", act), Flatten()])
        in_c = head.hidden_channels
    x = g.add(Dropout("dropout", float(head.dropout)), pooled) if head.dropout > 0 else pooled
    logits = g.add(b.linear(classifier, in_c, head.num_classes), x)
    return g.part(logits, head.num_classes, ((pooled, "pre_logits"), (logits, "logits")))


def make_plan(spec: ResNetSpec) -> Plan:
    """Expand ``spec`` into an explicit Plan (parts of ops + canonical parameter table).

    Args:
        spec: a validated ResNetSpec.
    Returns:
        The Plan; ``plan.params`` lists every canonical parameter and buffer in module order.
    Example:
        >>> p = make_plan(rm.get_spec("resnet50")); p.params["fc.weight"].shape
        (1000, 2048)
    """
    b = _Builder(spec)
    from .families import BUILDERS  # block kinds that are not residual ("dense", "ghost")

    family = BUILDERS.get(spec.block.kind)
    if family is not None:
        stem, stages, neck, head = family(b)
        return Plan(spec, stem, stages, head, spec.out_indices, b.params, neck, b.aliases)
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
    head = _head(b, in_c) if spec.head is not None else None
    return Plan(spec, stem, tuple(stages), head, spec.out_indices, b.params)
