"""Adopt a hand-written model's weights: pair its tensors with a spec's plan by structure, then prove it.

``adopt(source, spec)`` takes a checkpoint of any naming (a state_dict, a file, or the live model)
and returns the canonical weights of ``spec``. Names are never interpreted beyond a tensor's last
component (``weight``, ``bias``, ``running_mean`` ...), which says its role in its layer:

1. Their tensors are grouped into layers (a module path and its leaves) and each layer gets a
   kind from its leaves and ranks: conv (4-D weight), BatchNorm (running statistics), linear
   (2-D weight). Layouts become canonical on the way (Paddle's Linear (in, out), Flax's HWIO
   kernels), and the transpose is recorded.
2. Their layers are taken in the source's order: a state_dict's registration order, or for a live
   model the order its layers ran in on one forward of ``example_input`` (the framework's own
   forward hooks record it, with the tensor each layer read and wrote).
3. The plan is walked part by part (stem, each block, neck, head); each part takes as many of
   their layers as it has. Within a part, each kind's layers must be an interleaving of the
   part's branches (main path, shortcut) with equal shapes and the same biases, so a shortcut
   registered or run first, BN declared before its conv, or all convs declared before all BNs all
   pair the same way. With a live model, what flowed where must agree too: two layers that read
   one tensor read one value in the plan, and a layer fed by another is fed by it in the plan.
4. Refuse to guess: where their structure and the plan part ways the error shows the first such
   place, their name, shape and position next to the plan's. Where shapes (and a live model's
   data flow) allow several pairings (a bottleneck's last conv and its projection can have one
   shape), their module tree decides if it can (the pairing that keeps each container's layers
   on one branch, as a ``downsample`` Sequential), else the source's order is read as the plan's
   (main path, then shortcut) if that is one of them; else it refuses. Such a decision is listed
   in the report's ``assumptions``. A running variance with negative values (a swapped mean and
   variance) is refused, naming it.
5. Proof: with a live model, theirs and ours (built from the adopted weights, same framework)
   run on the same input in eval mode, and every tap their structure exposes is compared (a
   module holding exactly a block's layers gives that block's output; the model's output gives
   the logits; the classifier's input gives pre_logits): ``Adoption.report`` is a ParityReport.
   With only a file there is nothing to run: the report says the pairing rests on shapes alone.

No framework is imported at module level; the live-model helpers import theirs when called.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._lazy import np
from . import plan as P
from .zoo import resolve_spec


class AdoptError(ValueError):
    """Their tensors cannot be paired with the plan without guessing; the message shows where."""


_KIND_ROLES = {
    "conv": {"weight": "conv_weight", "bias": "conv_bias"},
    "bn": {"weight": "bn_weight", "bias": "bn_bias", "running_mean": "bn_mean", "running_var": "bn_var"},
    "linear": {"weight": "linear_weight", "bias": "linear_bias"},
}
_PLAN_KINDS = {P.Conv: "conv", P.BatchNorm: "bn", P.Linear: "linear"}
_KIND_WORDS = {"conv": "conv", "bn": "BatchNorm", "linear": "linear"}
_SKIPPED_LEAVES = ("num_batches_tracked",)  # torch's BN step counter: not a weight


@dataclass(frozen=True)
class AdoptedName:
    """Where one of their tensors went: its canonical name, role, and the transpose applied, if any."""

    canonical: str
    role: str
    transpose: str | None = None


@dataclass(frozen=True)
class ShapeOnlyReport:
    """The report of an adoption from a file: nothing was run, so nothing about the function is proven.
    ``ok`` is None (neither passed nor failed); adopt the live model with ``example_input`` for a proof."""

    source: str
    tensors: int
    assumptions: tuple[str, ...] = ()  # where shapes allowed several pairings and their order decided
    ok: None = None
    first_divergence: None = None

    def format(self, **_) -> str:
        lines = [f"{self.source}: {self.tensors} tensors matched by role and shape alone; this proves nothing "
                 "about the function (adopt the live model, with example_input, to run both and compare)"]
        return "\n".join(lines + [f"  assumed: {a}" for a in self.assumptions])

    def __str__(self) -> str:
        return self.format()


@dataclass
class Adoption:
    """The result of ``adopt``.

    Attributes:
        spec: the ResNetSpec adopted into.
        weights: canonical weights (``plan.params`` order), loadable by ``rm.build(spec, weights=...)``.
        names: their tensor name -> AdoptedName (canonical name, role, transpose), in their order.
        report: a ParityReport (their model against ours, tap by tap) for a live model, else a
            ShapeOnlyReport.
    """

    spec: Any
    weights: dict[str, np.ndarray]
    names: dict[str, AdoptedName]
    report: Any
    _order: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict, repr=False)
    _their_taps: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _input: np.ndarray | None = field(default=None, repr=False)

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the canonical weights in the format of ``path``'s suffix (.pth/.pt, .pdparams,
        .msgpack, .safetensors; the spec is stored inside a .safetensors file). Reading it back
        needs no map: ``rm.build(spec, weights=path)`` or ``rm.load_weights(path)``."""
        from .convert import write_canonical

        return write_canonical(path, self.weights, self.spec, force=force)

    def name_map(self) -> dict[str, dict]:
        """``{their name: {"canonical", "role", "transpose"}}``, JSON-ready (``--map``)."""
        return {name: {"canonical": a.canonical, "role": a.role, "transpose": a.transpose}
                for name, a in self.names.items()}

    def table(self) -> str:
        """The pairing as a table: their position, name and shape next to the canonical name and role."""
        rows = [("#", "theirs", "canonical shape", "canonical", "role", "transpose")]
        for name, a in self.names.items():
            position, shape = self._order.get(name, ("", ()))
            rows.append((str(position), name, "x".join(map(str, shape)), a.canonical, a.role, a.transpose or ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

    def check(self, backends: Sequence[str] = ("torch", "paddle", "flax")) -> Any:
        """Their model's taps (recorded by ``adopt``) against ours built in each of ``backends`` from
        the adopted weights: a ParityReport with their model as the reference. Needs a live source."""
        from .api import build

        if self._their_taps is None:
            raise ValueError("Adoption.check: adopted from a file, so there are no outputs of their model to "
                             "compare with; adopt the live model with example_input")
        ours = {name: build(self.spec, backend=name, weights=self.weights) for name in backends}
        return _compare(self.spec, ours, self._their_taps, self._input)


# --------------------------------------------------------------------------- their layers


@dataclass
class _Layer:
    """One layer of theirs: a module path, its kind, and its tensors by role (canonical layout)."""

    name: str
    kind: str
    tensors: dict[str, tuple[str, np.ndarray, str | None]]  # role -> (their name, array, transpose)
    position: int = 0
    reads: Any = None    # live: the object its input was
    writes: Any = None   # live: the object its output was

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {role: tuple(array.shape) for role, (_, array, _) in self.tensors.items()}

    def describe(self) -> str:
        first = next(iter(self.tensors.values()))[0] if self.tensors else self.name
        return (f"their #{self.position} {first} ({_KIND_WORDS[self.kind]}; "
                + ", ".join(f"{r} {s}" for r, s in self.shapes().items()) + ")")


def _layer(path: str, leaves: Mapping[str, tuple[str, np.ndarray, str | None]], source: str) -> _Layer:
    """A layer from its leaves (canonical leaf names -> (their name, array, transpose)); the kind
    follows from the leaves and the weight's rank."""
    weight = leaves.get("weight")
    if "running_mean" in leaves or "running_var" in leaves:
        kind = "bn"
    elif weight is not None and weight[1].ndim == 4:
        kind = "conv"
    elif weight is not None and weight[1].ndim == 2:
        kind = "linear"
    else:
        names = ", ".join(f"{n} {tuple(a.shape)}" for n, a, _ in leaves.values())
        raise AdoptError(f"{source}: cannot tell what layer {path or '(root)'} is ({names}); adopt knows "
                         "convs (4-D weight), BatchNorms (running_mean/running_var) and linears (2-D weight)")
    roles = _KIND_ROLES[kind]
    unknown = [leaves[leaf][0] for leaf in leaves if leaf not in roles]
    if unknown:
        raise AdoptError(f"{source}: {', '.join(unknown)}: not a tensor of a {_KIND_WORDS[kind]} layer "
                         f"(expected {', '.join(roles)})")
    tensors = {roles[leaf]: leaves[leaf] for leaf in roles if leaf in leaves}
    return _Layer(path, kind, tensors)


_PADDLE_LEAVES = {"_mean": "running_mean", "_variance": "running_var"}
_FLAX_LEAVES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def _canonical_leaf(leaf: str, array: np.ndarray, layout: str) -> tuple[str, np.ndarray, str | None]:
    """(canonical leaf name, canonical-layout array, the transpose made or None) of one tensor of a
    ``layout`` ("torch", "paddle", "flax") layer."""
    if layout == "paddle":
        leaf = _PADDLE_LEAVES.get(leaf, leaf)
        if leaf == "weight" and array.ndim == 2:
            return leaf, np.ascontiguousarray(array.T), "(in, out) -> (out, in)"
    elif layout == "flax":
        if leaf == "kernel" and array.ndim == 4:
            return "weight", np.ascontiguousarray(array.transpose(3, 2, 0, 1)), "HWIO -> OIHW"
        if leaf == "kernel" and array.ndim == 2:
            return "weight", np.ascontiguousarray(array.T), "(in, out) -> (out, in)"
        leaf = _FLAX_LEAVES.get(leaf, leaf)
    return leaf, array, None


def _layers_of_state(state: Mapping[str, np.ndarray], source: str, layout: str,
                     canonical_layout: bool = False) -> list[_Layer]:
    """Layers of a flat state_dict, in the order each module path first appears. ``canonical_layout``:
    the arrays are already in canonical layout (a reader transposed them), only the names are the layout's."""
    grouped: dict[str, dict] = {}
    for name, value in state.items():
        path, _, leaf = name.rpartition(".")
        if leaf in _SKIPPED_LEAVES:
            continue
        array = np.asarray(value)
        canonical_leaf, converted, transpose = _canonical_leaf(leaf, array, layout)
        grouped.setdefault(path, {})[canonical_leaf] = (name, array if canonical_layout else converted, transpose)
    layers = [_layer(path, leaves, source) for path, leaves in grouped.items()]
    for i, layer in enumerate(layers):
        layer.position = i
    return layers


def _flatten_state(obj: Mapping, prefix: str = "") -> dict[str, Any]:
    """A flat ``{dotted name: tensor}`` from a state_dict, possibly nested (``{'model': {...}}``)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_state(value, name + "."))
        else:
            out[name] = value
    return out


def _to_numpy(value) -> np.ndarray:
    """A numpy array from a numpy array or a torch/Paddle/JAX tensor (no framework imported here)."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.asarray(value.numpy())
    return np.asarray(value)


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")
"""Keys a training script keeps the state_dict under (next to 'optimizer', 'epoch', ...), as torch files do."""


def _layers_of_dict(state: Mapping, source: str) -> list[_Layer]:
    wrapper = next((key for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
    flat = _flatten_state(state[wrapper] if wrapper is not None else state)
    if not flat:
        raise AdoptError(f"{source}: no tensors")
    paddle = any(type(v).__module__.startswith("paddle") for v in flat.values()) or any(
        name.rpartition(".")[2] in _PADDLE_LEAVES for name in flat)
    return _layers_of_state({n: _to_numpy(v) for n, v in flat.items()}, source, "paddle" if paddle else "torch")


_UNORDERED = {".msgpack": "Flax's msgpack stores its keys sorted",
              ".safetensors": "a .safetensors file stores its tensors sorted"}


def _layers_of_file(path: Path) -> list[_Layer]:
    from .convert import format_of_suffix, read_canonical

    suffix = path.suffix.lower()
    if suffix in _UNORDERED:
        raise AdoptError(f"{path}: {_UNORDERED[suffix]}, not in the order the model registered them, and adopt "
                         "pairs by that order; adopt the live model, or a .pth/.pdparams state_dict")
    weights, _ = read_canonical(path)  # names as the file has them, but Paddle's renamed and its Linear transposed
    if format_of_suffix(path) != "paddle":
        return _layers_of_state(weights, str(path), "torch")
    paddle_leaf = {canonical: leaf for leaf, canonical in _PADDLE_LEAVES.items()}
    their_names = {}
    for name, array in weights.items():  # the names the file holds, for the map
        path_, _, leaf = name.rpartition(".")
        their_names[f"{path_}.{paddle_leaf.get(leaf, leaf)}" if path_ else paddle_leaf.get(leaf, leaf)] = array
    return _layers_of_state(their_names, str(path), "paddle", canonical_layout=True)


# --------------------------------------------------------------------------- the plan's layers


@dataclass
class _PlanLayer:
    name: str
    kind: str
    shapes: dict[str, tuple[int, ...]]
    names: dict[str, str]  # role -> canonical parameter name
    branch: int            # chains within a part: 0 the main path, others forks (a shortcut)
    upstream: str | None   # the layer it reads from through parameterless ops (None: the part's input)
    order: int             # execution order within the part
    position: int = 0      # execution order within the plan

    def describe(self) -> str:
        return (f"#{self.position} {self.name} ({_KIND_WORDS[self.kind]}; "
                + ", ".join(f"{r} {s}" for r, s in self.shapes.items()) + ")")


def _plan_layers(plan, part, offset: int = 0) -> list[_PlanLayer]:
    """The part's layers in execution order, each with its branch: a layer continues the chain of
    the layer it reads from (through parameterless ops) if it is that layer's first reader, else
    it starts a new chain (a shortcut reading the block's input next to the main path)."""
    producer = {node.output: node for node in part.nodes}

    def source_layer(value: str):
        while value in producer:
            node = producer[value]
            if type(node.op) in _PLAN_KINDS:
                return node.op.name
            value = node.inputs[0]
        return None  # the part's input

    out: list[_PlanLayer] = []
    branch_of: dict[str | None, int] = {}
    has_reader: set = set()
    branches = 0
    for node in part.nodes:
        kind = _PLAN_KINDS.get(type(node.op))
        if kind is None:
            continue
        parent = source_layer(node.inputs[0])
        if parent is not None and parent not in has_reader:
            branch = branch_of[parent]
        else:  # the part's input, or a layer another layer already continues
            branch, branches = branches, branches + 1
        has_reader.add(parent)
        branch_of[node.op.name] = branch
        names, shapes = {}, {}
        for leaf, role in _KIND_ROLES[kind].items():
            info = plan.params.get(f"{node.op.name}.{leaf}")
            if info is not None:
                names[role], shapes[role] = info.name, info.shape
        out.append(_PlanLayer(node.op.name, kind, shapes, names, branch, parent, len(out), offset + len(out)))
    return out


# --------------------------------------------------------------------------- pairing


_MAX_PAIRINGS = 64


def _interleavings(theirs: list[_Layer], chains: list[list[_PlanLayer]]):
    """Every pairing of ``theirs`` (in order) with the chains' layers (each chain in order) that has
    equal shapes; and, for the error, the first of theirs that fitted nowhere with what was expected."""
    found: list[tuple[_PlanLayer, ...]] = []
    deepest = [-1, []]

    def walk(i: int, heads: tuple[int, ...], acc: tuple):
        if len(found) > _MAX_PAIRINGS:
            return
        if i == len(theirs):
            found.append(acc)
            return
        expected = [chain[h] for chain, h in zip(chains, heads) if h < len(chain)]
        fitted = False
        for c, (chain, h) in enumerate(zip(chains, heads)):
            if h < len(chain) and chain[h].shapes == theirs[i].shapes():
                fitted = True
                walk(i + 1, heads[:c] + (h + 1,) + heads[c + 1:], acc + (chain[h],))
        if not fitted and i > deepest[0]:
            deepest[0], deepest[1] = i, expected

    walk(0, tuple(0 for _ in chains), ())
    return found, deepest


def _flow_agrees(pairing: Mapping[int, _PlanLayer], theirs: list[_Layer]) -> bool:
    """With a live model: layers of theirs that read one tensor read from one layer in the plan (or
    both from the part's input), and a layer fed by another (in-place ops keep the tensor) reads
    from it in the plan, through parameterless ops."""
    for a in theirs:
        for b in theirs:
            if a is b or a.reads is None:
                continue
            pa, pb = pairing[id(a)], pairing[id(b)]
            if a.reads is b.reads and pa.upstream != pb.upstream:
                return False
            if b.writes is a.reads and pa.upstream != pb.name:
                return False
    return True


def _pair_part(plan, part, theirs: list[_Layer], source: str, assumptions: list[str],
               offset: int) -> dict[int, _PlanLayer]:
    """``{id(their layer): plan layer}`` for one part; raises AdoptError where they part ways. A
    pairing that order decided (shapes alone allowed several) is described in ``assumptions``."""
    layers = _plan_layers(plan, part, offset)
    per_kind = []
    for kind in _KIND_ROLES:
        mine = [layer for layer in layers if layer.kind == kind]
        their_kind = [layer for layer in theirs if layer.kind == kind]
        if not mine and not their_kind:
            continue
        chains = [[layer for layer in mine if layer.branch == b] for b in sorted({m.branch for m in mine})]
        found, (at, expected) = _interleavings(their_kind, chains)
        if not found:
            if at < len(their_kind):
                here = layers[min(theirs.index(their_kind[at]), len(layers) - 1)]  # the plan's layer at their place
                wanted = " or ".join(e.describe() for e in expected) if expected else here.describe()
                raise AdoptError(f"{source}: their structure and the plan part ways in {part.name}: "
                                 f"{their_kind[at].describe()} where the plan has {wanted}")
            missing = len(mine) - len(their_kind)
            raise AdoptError(f"{source}: their structure and the plan part ways in {part.name}: the plan has "
                             f"{missing} more {_KIND_WORDS[kind]} layer(s) there than they do")
        if len(found) > _MAX_PAIRINGS:
            raise AdoptError(f"{source}: {part.name}: their layers fit the plan's in too many ways to choose one")
        per_kind.append((their_kind, found))
    # combine the kinds, keep the pairings the recorded data flow agrees with
    combined: list[dict[int, _PlanLayer]] = [{}]
    for their_kind, found in per_kind:
        combined = [{**c, **{id(t): p for t, p in zip(their_kind, f)}} for c in combined for f in found]
        if len(combined) > _MAX_PAIRINGS:
            raise AdoptError(f"{source}: {part.name}: their layers fit the plan's in too many ways to choose one")
    agreeing = [c for c in combined if _flow_agrees(c, theirs)]
    if not agreeing:
        raise AdoptError(f"{source}: their structure and the plan part ways in {part.name}: the shapes fit, but "
                         "what their layers read and feed differs from the plan's wiring there")
    if len(agreeing) == 1:
        return agreeing[0]

    def differing(chosen) -> str:
        other = next(c for c in agreeing if c is not chosen)
        return ", ".join(t.name for t in theirs if chosen[id(t)].name != other[id(t)].name)

    # their module tree: a container whose layers all go to one branch (a ``downsample`` Sequential) is
    # likelier than one split between branches; keep the pairings that split their containers least
    def splits(c) -> int:
        branches: dict[str, set] = {}
        for t in theirs:
            branches.setdefault(t.name.rpartition(".")[0], set()).add(c[id(t)].branch)
        return sum(len(b) for b in branches.values())

    fewest = min(map(splits, agreeing))
    tidy = [c for c in agreeing if splits(c) == fewest]
    if len(tidy) == 1:
        assumptions.append(f"{part.name}: shapes alone also fit {differing(tidy[0])} another way; "
                           "their module tree decided (each container's layers on one branch)")
        return tidy[0]
    in_order = [c for c in tidy if all(sorted(ts, key=lambda t: c[id(t)].order) == ts for ts, _ in per_kind)]
    if in_order:  # neither tells: their order is read as the plan's, the one reading that fits
        assumptions.append(f"{part.name}: shapes alone also fit {differing(in_order[0])} another way; "
                           "read in the plan's order (main path, then shortcut)")
        return in_order[0]
    agreeing = tidy
    a, b = agreeing[0], agreeing[1]
    differ = next(t for t in theirs if a[id(t)].name != b[id(t)].name)
    raise AdoptError(f"{source}: {part.name}: {differ.describe()} fits both {a[id(differ)].describe()} and "
                     f"{b[id(differ)].describe()}; refusing to guess (adopt the live model, with example_input, "
                     "so that its data flow decides)")


def _pair(plan, theirs: list[_Layer], source: str, assumptions: list[str]) -> dict[int, _PlanLayer]:
    """Pair every layer of theirs with the plan's, part by part, in order."""
    pairing: dict[int, _PlanLayer] = {}
    start = 0
    for part in plan.parts:
        count = sum(1 for node in part.nodes if type(node.op) in _PLAN_KINDS)
        if count == 0:
            continue
        chunk = theirs[start:start + count]
        if len(chunk) < count:
            wanted = _plan_layers(plan, part, start)[len(chunk)]
            raise AdoptError(f"{source}: their structure and the plan part ways in {part.name}: their layers end "
                             f"after #{len(theirs) - 1} and the plan continues with {wanted.describe()}")
        pairing.update(_pair_part(plan, part, chunk, source, assumptions, start))
        start += count
    if start < len(theirs):
        raise AdoptError(f"{source}: their structure and the plan part ways after the plan's last layer: "
                         f"{theirs[start].describe()} and {len(theirs) - start - 1} more have no place in the plan")
    return pairing


def _adopted(plan, theirs: list[_Layer], pairing: Mapping[int, _PlanLayer], source: str):
    """(canonical weights in plan order, names in their order, {their name: (position, shape)})."""
    weights: dict[str, np.ndarray] = {}
    names: dict[str, AdoptedName] = {}
    order: dict[str, tuple[int, tuple[int, ...]]] = {}
    for layer in theirs:
        target = pairing[id(layer)]
        for role, (their_name, array, transpose) in layer.tensors.items():
            canonical = target.names[role]
            if role == "bn_var" and np.any(np.asarray(array, dtype=np.float64) < 0):
                raise AdoptError(f"{source}: {their_name} (going to {canonical}) has negative values: a running "
                                 "variance cannot; are the running mean and variance swapped?")
            weights[canonical] = array
            names[their_name] = AdoptedName(canonical, role, transpose)
            order[their_name] = (layer.position, tuple(array.shape))
    return {name: weights[name] for name in plan.params}, names, order


# --------------------------------------------------------------------------- live models


_MODEL_ROOTS = {"torch": "torch.nn.", "paddle": "paddle.nn.", "flax": "flax.nnx."}
"""Backend name -> the package its framework's model classes live in."""


def _framework_of(model) -> str | None:
    """The backend (``registry.backend_names()``) whose framework ``model`` is a model of, from its
    class hierarchy; None for anything else. No framework is imported to tell."""
    from .registry import backend_names

    for cls in type(model).__mro__:
        for name in backend_names():
            root = _MODEL_ROOTS.get(name)
            if root and cls.__module__.startswith(root) and name in _LIVE:
                return name
    return None


class _TorchLive:
    """A live torch ``nn.Module``: its layers (modules holding parameters or buffers), forward hooks."""

    LAYOUT = "torch"

    @staticmethod
    def holders(model):
        for path, module in model.named_modules():
            state = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
            if state:
                yield path, module, {leaf: _to_numpy(v) for leaf, v in state.items() if v is not None}

    @staticmethod
    def modules(model):
        return dict(model.named_modules())

    @staticmethod
    def hook(module, fn):
        return module.register_forward_hook(lambda m, inputs, output: fn(inputs, output))

    @staticmethod
    def run(model, x: np.ndarray):
        import torch

        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        finally:
            for m, training in modes:
                m.training = training

    @staticmethod
    def array(value) -> np.ndarray:
        return value.detach().cpu().numpy().copy()


class _PaddleLive:
    """A live Paddle ``nn.Layer``: its layers, forward post hooks (Linear weights are (in, out))."""

    LAYOUT = "paddle"

    @staticmethod
    def holders(model):
        for path, layer in [("", model), *model.named_sublayers()]:
            state = {**dict(layer.named_parameters(include_sublayers=False)),
                     **dict(layer.named_buffers(include_sublayers=False))}
            if state:
                yield path, layer, {leaf: _to_numpy(v) for leaf, v in state.items() if v is not None}

    @staticmethod
    def modules(model):
        return {"": model, **dict(model.named_sublayers())}

    @staticmethod
    def hook(layer, fn):
        return layer.register_forward_post_hook(lambda m, inputs, output: fn(inputs, output))

    @staticmethod
    def run(model, x: np.ndarray):
        import paddle

        modes = [(m, m.training) for m in [model, *model.sublayers()]]
        model.eval()
        try:
            with paddle.no_grad():
                return model(paddle.to_tensor(np.ascontiguousarray(x, dtype=np.float32)))
        finally:
            for m, training in modes:
                m.training = training

    @staticmethod
    def array(value) -> np.ndarray:
        return np.array(value.numpy())


class _FlaxLive:
    """A live Flax ``nnx.Module`` (NHWC): its layers, and call hooks made as ``nnx.capture`` makes its
    own: each module class's ``__call__`` is wrapped for the one forward and restored after it."""

    LAYOUT = "flax"
    _hooks: dict[int, list] = {}

    @staticmethod
    def holders(model):
        from flax import nnx

        for path, module in nnx.iter_modules(model):
            state = {leaf: v.get_value() for leaf, v in vars(module).items() if isinstance(v, nnx.Variable)}
            if state:
                yield ".".join(map(str, path)), module, {leaf: np.array(v) for leaf, v in state.items()}  # writable

    @staticmethod
    def modules(model):
        from flax import nnx

        return {".".join(map(str, path)): module for path, module in nnx.iter_modules(model)}

    class _Handle:
        def __init__(self, module, fn):
            self.key, self.fn = id(module), fn
            _FlaxLive._hooks.setdefault(self.key, []).append(fn)

        def remove(self):
            _FlaxLive._hooks[self.key].remove(self.fn)

    @staticmethod
    def hook(module, fn):
        return _FlaxLive._Handle(module, fn)

    @staticmethod
    def run(model, x: np.ndarray):
        import jax.numpy as jnp
        from flax import nnx

        modules = [m for _, m in nnx.iter_modules(model)]
        modes = [(m, {a: getattr(m, a) for a in ("use_running_average", "deterministic") if hasattr(m, a)})
                 for m in modules]
        patched = {}
        callable_classes = {type(m) for m in modules
                            if any("__call__" in k.__dict__ for k in type(m).__mro__ if k is not object)}
        for cls in callable_classes:
            patched[cls] = cls.__dict__.get("__call__")
            original = cls.__call__

            def call(self, *args, __original=original, **kwargs):
                output = __original(self, *args, **kwargs)
                for fn in list(_FlaxLive._hooks.get(id(self), ())):
                    fn(args, output)
                return output

            cls.__call__ = call
        model.eval()
        try:
            return model(jnp.asarray(np.ascontiguousarray(x, dtype=np.float32).transpose(0, 2, 3, 1)))
        finally:
            for cls, own in patched.items():
                if own is None:
                    del cls.__call__
                else:
                    cls.__call__ = own
            for m, attrs in modes:
                for a, value in attrs.items():
                    setattr(m, a, value)

    @staticmethod
    def array(value) -> np.ndarray:
        array = np.array(value)
        return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array  # NHWC -> NCHW


_LIVE = {"torch": _TorchLive, "paddle": _PaddleLive, "flax": _FlaxLive}


def _record(live, model, x: np.ndarray, source: str) -> list[_Layer]:
    """Their layers in the order they ran on ``x`` (one forward, eval mode), with what each read and wrote."""
    layers: dict[int, _Layer] = {}
    ran: list[_Layer] = []
    ran_ids: set[int] = set()
    held: list = []  # keeps every recorded tensor alive, so that identities stay unique during the forward
    handles = []
    for path, module, state in live.holders(model):
        leaves = {}
        for leaf, array in state.items():
            if leaf in _SKIPPED_LEAVES:
                continue
            canonical_leaf, array, transpose = _canonical_leaf(leaf, array, live.LAYOUT)
            leaves[canonical_leaf] = (f"{path}.{leaf}" if path else leaf, array, transpose)
        layer = _layer(path, leaves, source)
        layers[id(module)] = layer

        def seen(inputs, output, layer=layer):
            if id(layer) in ran_ids:
                raise AdoptError(f"{source}: their layer {layer.name} ran more than once in one forward; "
                                 "adopt pairs each layer with one of the plan's")
            layer.reads, layer.writes = (inputs[0] if inputs else None), output
            held.append((layer.reads, output))
            ran.append(layer)
            ran_ids.add(id(layer))

        handles.append(live.hook(module, seen))
    try:
        live.run(model, x)
    finally:
        for handle in handles:
            handle.remove()
    idle = [layer for layer in layers.values() if id(layer) not in ran_ids]
    if idle:
        raise AdoptError(f"{source}: their layer(s) {', '.join(layer.name for layer in idle)} did not run on the "
                         "example input; adopt pairs the layers that run")
    for i, layer in enumerate(ran):
        layer.position = i
    return ran


def _tap_modules(plan, theirs: list[_Layer], pairing, modules: Mapping[str, Any]) -> dict[str, str]:
    """``{tap: their module path}`` for the taps their structure exposes: the outermost container (not
    a layer, not the model) holding exactly the layers of a stem, block, stage or neck."""
    by_plan = {p.name: t.name for t in theirs for p in [pairing[id(t)]]}
    holders = [t.name for t in theirs]

    def container(names: list[str]) -> str | None:
        parts = [name.split(".") for name in names]
        common = []
        for pieces in zip(*parts):
            if len(set(pieces)) != 1:
                break
            common.append(pieces[0])
        path = ".".join(common)
        if not path or path in holders or path not in modules or inside(path) != set(names):
            return None
        # the outermost such container: a block's main path (``self.left``) holds exactly the layers of a
        # block whose shortcut has none, but the block around it computes the block
        while "." in path and path.rsplit(".", 1)[0] in modules and inside(path.rsplit(".", 1)[0]) == set(names):
            path = path.rsplit(".", 1)[0]
        return path

    def inside(path: str) -> set[str]:
        return {h for h in holders if h.startswith(path + ".")}

    def theirs_of(part) -> list[str]:
        return [by_plan[layer.name] for layer in _plan_layers(plan, part)]

    taps: dict[str, str] = {}
    for part in plan.parts:
        names = theirs_of(part)
        if names and part is not plan.head and len(part.taps) == 1 and part.taps[0][0] == part.output:
            found = container(names)
            if found:
                taps[part.taps[0][1]] = found
    for stage in plan.stages:
        found = container([name for block in stage.blocks for name in theirs_of(block)])
        if found:
            taps[stage.name] = found
    return taps


def _their_taps(live, plan, model, x, theirs, pairing) -> dict[str, np.ndarray]:
    """Their model's exposed taps on ``x`` (eval mode), in NCHW numpy: containers' outputs, the
    classifier's input (pre_logits, when only a dropout is between) and the model's output."""
    modules = live.modules(model)
    taps_at = _tap_modules(plan, theirs, pairing, modules)
    captured: dict[str, np.ndarray] = {}
    handles = []
    for tap, path in taps_at.items():
        def keep(inputs, output, tap=tap):
            if not isinstance(output, (tuple, list)):
                captured[tap] = live.array(output)
        handles.append(live.hook(modules[path], keep))
    classifier = plan.classifier
    if classifier is not None:
        node = next(n for n in plan.head.nodes if getattr(n.op, "name", None) == classifier)
        pre = dict(plan.head.taps).keys()
        producer = {n.output: n for n in plan.head.nodes}
        value = node.inputs[0]
        while value not in pre and value in producer and isinstance(producer[value].op, P.Dropout):
            value = producer[value].inputs[0]
        their_classifier = next((t.name for t in theirs if pairing[id(t)].name == classifier), None)
        if value in pre and their_classifier in modules:
            tap = dict(plan.head.taps)[value]
            handles.append(live.hook(modules[their_classifier],
                                     lambda inputs, output: captured.__setitem__(tap, live.array(inputs[0]))))
    try:
        output = live.run(model, x)
    finally:
        for handle in handles:
            handle.remove()
    names = plan.output_names()
    if len(names) == 1 and not isinstance(output, (tuple, list, dict)):
        captured[names[0]] = live.array(output)
    return captured


def _compare(spec, ours: Mapping[str, Any], their_taps: Mapping[str, np.ndarray], x: np.ndarray):
    """A ParityReport of each of our models against their taps (the reference), on the taps they expose."""
    from .api import forward
    from .parity import BOUNDS, ParityReport, compare_tap
    from .plan import make_plan

    plan = make_plan(spec)
    rtol, atol = BOUNDS["float32"]
    compared: list[str] = []
    results = []
    outputs = {label: forward(model, x, taps=True) for label, model in ours.items()}
    for tap in plan.tap_names:
        ref = their_taps.get(tap)
        if ref is None:
            continue
        mine = next(iter(outputs.values()))[tap]
        if ref.shape[:2] != mine.shape[:2]:  # their container computes something else (e.g. only new features)
            continue
        compared.append(tap)
        for label, taps in outputs.items():
            results.append(compare_tap(label, tap, taps[tap], ref, rtol=rtol, atol=atol))
    results.sort(key=lambda r: list(ours).index(r.backend))  # backend-major, as ParityReport documents
    return ParityReport(spec.name, tuple(x.shape), "their model", tuple(ours), tuple(compared), rtol, atol,
                        tuple(results))


# --------------------------------------------------------------------------- the entry point


def adopt(source, spec, *, example_input=None) -> Adoption:
    """The canonical weights of ``spec`` from a checkpoint of any naming, paired by structure.

    Args:
        source: a state_dict (flat or nested, e.g. ``{'model': {'backbone.conv1.weight': ...}}``,
            of numpy arrays or torch/Paddle tensors), a checkpoint file (.pth/.pt, .pdparams), or a
            live torch ``nn.Module``, Paddle ``nn.Layer`` or Flax ``nnx.Module``.
        spec: a ResNetSpec, preset name or spec file that describes their architecture.
        example_input: with a live model, the NCHW input (a Flax model is given it as NHWC) of the
            forward that records the order its layers run in, and of the proof (default: standard
            normal, 1 x C x 33 x 47, seed 0).
    Returns:
        Adoption: ``weights`` (canonical), ``names`` (their name -> canonical name, role, transpose),
        ``report`` (live: a ParityReport of their model against ours, ``.ok`` or
        ``.first_divergence``; file or dict: a ShapeOnlyReport, which proves nothing) and ``save``.
    Raises:
        AdoptError: their tensors do not fit the plan, or fit it in more than one way; the message
            shows the first place where their structure and the plan part ways.
    Example:
        >>> adoption = rm.adopt(my_torch_model, "my_net.yaml", example_input=x)
        >>> adoption.report.ok
        True
        >>> adoption.save("my_net.safetensors")
    """
    from .plan import make_plan

    spec = resolve_spec(spec)
    plan = make_plan(spec)
    framework = None if isinstance(source, (Mapping, str, os.PathLike)) else _framework_of(source)
    if framework is not None:
        live = _LIVE[framework]
        label = f"their {type(source).__name__}"
        if example_input is None:
            example_input = np.random.default_rng(0).standard_normal((1, plan.in_channels, 33, 47))
        x = np.ascontiguousarray(_to_numpy(example_input), dtype=np.float32)
        plan.check_input_shape(x.shape, what="example_input")
        theirs = _record(live, source, x, label)
        pairing = _pair(plan, theirs, label, [])
        weights, names, order = _adopted(plan, theirs, pairing, label)
        from .api import build

        their_taps = _their_taps(live, plan, source, x, theirs, pairing)
        report = _compare(spec, {framework: build(spec, backend=framework, weights=weights)}, their_taps, x)
        return Adoption(spec, weights, names, report, order, their_taps, x)
    if example_input is not None:
        raise ValueError("adopt: example_input needs a live model as the source (a state_dict or file cannot run)")
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        theirs = _layers_of_file(Path(source))
    elif isinstance(source, Mapping):
        label = "their state_dict"
        theirs = _layers_of_dict(source, label)
    else:
        raise TypeError(f"adopt: source must be a state_dict, a checkpoint file or a live torch/Paddle/Flax model, "
                        f"got {type(source).__module__}.{type(source).__name__}")
    assumptions: list[str] = []
    pairing = _pair(plan, theirs, label, assumptions)
    weights, names, order = _adopted(plan, theirs, pairing, label)
    return Adoption(spec, weights, names, ShapeOnlyReport(label, len(names), tuple(assumptions)), order)


# --------------------------------------------------------------------------- command line


def _cmd_adopt(args) -> int:
    adoption = adopt(args.source, args.spec)
    if args.show:
        print(adoption.table())
    print(adoption.report, file=sys.stderr)
    adoption.save(args.output, force=args.force)
    print(f"wrote {args.output}", file=sys.stderr)
    if args.map:
        from .io_util import atomic_write_text

        atomic_write_text(args.map, json.dumps(adoption.name_map(), indent=2) + "\n")
        print(f"wrote {args.map}", file=sys.stderr)
    return 0


def add_adopt_command(subparsers) -> None:
    """Register ``resnet-multi adopt SOURCE --spec SPEC -o OUT [--map MAP] [--show] [--force]``."""
    p = subparsers.add_parser(
        "adopt", help="canonical weights from a hand-written model's checkpoint, paired by structure",
        description="Pair a checkpoint's tensors with the spec's layers by role and shape, in the order the "
                    "file holds them (whatever their names), and write the canonical weights in any format. "
                    "A file cannot be run, so this proves nothing about the function: in Python, "
                    "rm.adopt(live_model, spec, example_input=x) also runs both models and compares every tap.")
    p.add_argument("source", help="their checkpoint (.pth/.pt or .pdparams state_dict); only read")
    p.add_argument("--spec", required=True, help="preset name or spec file (.json/.yaml) of their architecture")
    p.add_argument("-o", "--output", required=True, help="output checkpoint; format from its suffix")
    p.add_argument("--map", default=None, metavar="FILE", help="also write their name -> canonical name as JSON")
    p.add_argument("--show", action="store_true", help="print the pairing as a table")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=_cmd_adopt)
