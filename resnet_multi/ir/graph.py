"""The IR's graph: a ``Part`` is a small graph of ops run as one unit (the stem, one block, the
neck or the head). Its ``nodes`` are in execution order; each ``Node`` applies one op to named
values (``"x"`` is the part's input) and names its output, so a block's wiring (residual add,
concatenation, slicing, a gate) is data, not code. ``taps`` publishes values under tap names.

``GraphBuilder`` is how families make parts: ``add(op, *inputs) -> value name``, then ``part()``,
which marks the nodes that may run in place (``Node.inplace``) and the values each node frees.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .ops import MODULE_OPS, Act, Add, BatchNorm, Concat, Conv, Mul, Slice, module_name

INPUT = "x"
"""The value name of a part's input."""


@dataclass(frozen=True)
class Node:
    """``output = op(*inputs)``; inputs and output are value names within one Part."""

    op: Any
    inputs: tuple[str, ...]
    output: str
    inplace: bool = False  # op may overwrite inputs[0] (see resnet_multi.ir.walk)


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
    """One unit of the network: the stem, a block, the neck or the head (see the module docstring).

    ``name``: the block's canonical module path ("layer3.4"), or "stem" / "neck" / "head".
    ``prefix``: what the names of its ops start with relative to the module that runs it
    ("layer3.4." for a block, "" for the stem, neck and head, whose modules sit on the model itself).
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
        """``{module path: the nodes that call it}`` for the named parameterless ops (see
        ``ir.ops``), in execution order; a torchvision block's ``relu`` has two or three."""
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            if module_name(node.op):
                out.setdefault(node.op.name, []).append(node)
        return {name: tuple(nodes) for name, nodes in out.items()}

    @property
    def is_flat(self) -> bool:
        """Its modules sit on the model itself (the stem, neck and head; a VGG stage), not in a
        module of its own: it is run op by op by the model, never called as a block module."""
        return not self.prefix

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


ROLES = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "bn_mean", "bn_var", "linear_weight", "linear_bias",
         "ln_weight", "ln_bias", "layer_scale", "complex_weight")
"""Every parameter role. A backend's weight layout says, per role, its native name and axis order."""
BUFFER_ROLES = ("bn_mean", "bn_var")
"""The roles that are buffers (running statistics), not trainable parameters."""


@dataclass(frozen=True)
class ParamInfo:
    """One canonical parameter or buffer. ``role`` (one of ROLES) tells backends how to rename
    and transpose it: conv_weight (OIHW), conv_bias, bn_weight, bn_bias, bn_mean, bn_var,
    linear_weight (out, in), linear_bias. ``init`` is (scheme, scale): ("normal", std),
    ("uniform", bound), ("ones", 0), ("zeros", 0)."""

    name: str
    shape: tuple[int, ...]
    role: str
    init: tuple[str, float]

    @property
    def is_buffer(self) -> bool:
        return self.role in BUFFER_ROLES


# Ops whose backward pass needs their inputs (or nothing), never their own output: a later op
# may overwrite that output in place. (A Slice is a view of its input: see ``mark_inplace``.)
_OVERWRITABLE = (Conv, BatchNorm, Add, Mul, Concat)


def mark_inplace(nodes, output: str, taps) -> tuple[Node, ...]:
    """``nodes`` with ``inplace`` set where a ReLU or an Add may overwrite its first input: that
    value is read by no other node, is not the part's input, output or a tap, and was made by an
    op whose backward pass does not need its own output."""
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
        # any other reader, earlier ones included: an earlier op may have saved the value for its
        # backward (HorNet's norm2 reads the first residual sum that the second add would overwrite)
        used_later = readers[first] > 1
        relu = isinstance(node.op, Act) and node.op.kind == "relu"
        inplace = ((relu or isinstance(node.op, Add)) and first not in kept and not used_later
                   and overwritable(first))
        marked.append(Node(node.op, node.inputs, node.output, inplace))
    return tuple(marked)


class GraphBuilder:
    """Collects one part's nodes: ``add(op, *inputs) -> value name``; ``part(...)`` makes the Part."""

    def __init__(self, name: str, prefix: str, in_channels: int):
        self.name, self.prefix, self.in_channels = name, prefix, in_channels
        self.nodes: list[Node] = []

    def add(self, op, *inputs: str) -> str:
        # a module's output is named after it; any other value (a named function such as a block's
        # relu may be called several times) after its position, so that every name is unique
        output = f"{len(self.nodes)}.{type(op).__name__.lower()}"
        if isinstance(op, MODULE_OPS) and all(node.output != op.name for node in self.nodes):
            output = op.name  # a module called again (HorNet's drop_path) names its value by position
        assert all(node.output != output for node in self.nodes), f"plan error: {output!r} made twice"
        self.nodes.append(Node(op, tuple(inputs), output))
        return output

    def chain(self, ops, x: str = INPUT) -> str:
        for op in ops:
            x = self.add(op, x)
        return x

    def part(self, output: str, out_channels: int, taps: tuple[tuple[str, str], ...]) -> Part:
        return Part(self.name, self.prefix, self.in_channels, out_channels, mark_inplace(self.nodes, output, taps),
                    output, taps)
