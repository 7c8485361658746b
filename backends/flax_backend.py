"""Flax backend: a plan compiled into a ``flax.nnx.Module`` that works in NHWC, as JAX users expect.

The module tree mirrors the canonical (torchvision / timm) names, so moving weights is a rename
plus a transpose per tensor, never a lookup through the plan:

=====================================  =========================================================
canonical (PyTorch layout)             Flax nnx state path (Flax layout)
=====================================  =========================================================
``conv1.weight``  (O, I, H, W)          ``conv1.kernel``  (H, W, I, O)           nnx.Conv
``bn1.weight`` / ``bn1.bias``           ``bn1.scale`` / ``bn1.bias``             nnx.BatchNorm Param
``bn1.running_mean`` / ``running_var``  ``bn1.mean`` / ``bn1.var``               nnx.BatchNorm BatchStat
``conv1.0.weight`` (deep stem)          ``conv1.0.kernel``   ``conv1``: nnx.List [Conv, BN, None, Conv, BN, None, Conv]
``layer3.4.conv2.weight``               ``layer3.4.conv2.kernel``   ``layer3``: nnx.List of Blocks
``layer2.0.downsample.0.weight``        ``layer2.0.downsample.0.kernel``   ``downsample``: nnx.List [Conv, BN]
``layer2.0.downsample.1.weight`` (-D)   ``layer2.0.downsample.1.kernel``   nnx.List [None (the pool), Conv, BN]
``layer1.0.se.fc1.weight`` / ``.bias``  ``layer1.0.se.fc1.kernel`` / ``.bias``   1x1 nnx.Conv with bias
``fc.weight``  (out, in)                ``fc.kernel``  (in, out)                 nnx.Linear
=====================================  =========================================================

Numbered children live in nnx.List (None, which holds no state, where torch's Sequential has a
parameter-free op), so in ``nnx.state(model)`` every numbered key is an int
(``('layer2', 0, 'downsample', 1, 'kernel')``) and every other key a string. The native file
(``.msgpack``, see ``save_native``) holds the same nested structure as pure dicts of numpy
arrays with all keys as strings, which ``nnx.replace_by_pure_dict`` accepts (it converts
every digit key such as ``'4'`` back to ``4``). The per-tensor conversion is the ordered
table ``_RULES`` below.

Numerics (see docs/NUMERICS.md): explicit symmetric padding ``((p, p), (p, p))`` on every conv and
pool (Flax's 'SAME' pads (0, 1) at stride 2 on even sizes); max-pool pads with -inf; average
pooling implements PyTorch's ``ceil_mode`` and ``count_include_pad`` exactly; BatchNorm gets
``momentum = 1 - spec momentum`` (Flax weights the OLD value) and the spec's epsilon.

Modes, the Flax way: ``build`` returns the model in eval mode (BatchNorm uses its running
statistics, dropout off); ``model.train()`` / ``model.eval()`` switch. ``forward`` (and so
``rm.forward``) always runs in eval mode through a jit-compiled function, without changing the
model's mode. Called directly, ``model(x_nhwc)`` follows the model's mode; in train mode with
head dropout, pass ``rngs=nnx.Rngs(dropout=seed)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import optax
from flax import nnx, serialization
from jax import lax

from resnet_multi import plan as P
from resnet_multi.walk import run_part, run_plan
from resnet_multi.io_util import atomic_path

NAME = "flax"


# --------------------------------------------------------------------------- rename / transpose rules


@dataclass(frozen=True)
class _Rule:
    canonical: str                           # last part of the canonical name
    flax: str                                # Flax variable name (last key of the state path)
    ndim: int                                # the rule applies only to tensors of this rank
    to_flax: tuple[int, ...] | None          # np.transpose axes canonical -> Flax (None: as is)
    to_canonical: tuple[int, ...] | None     # np.transpose axes Flax -> canonical


# Ordered: the first rule whose name and rank match is used, in both directions. Every
# canonical parameter role (plan.ParamInfo.role) is covered by exactly one rule.
_RULES: tuple[_Rule, ...] = (
    # conv weight: canonical OIHW, Flax kernel HWIO (also the 1x1 convs of squeeze-excite)
    _Rule("weight", "kernel", 4, (2, 3, 1, 0), (3, 2, 0, 1)),
    # linear weight: canonical (out, in) as torch stores it, Flax kernel (in, out)
    _Rule("weight", "kernel", 2, (1, 0), (1, 0)),
    # BatchNorm gamma: torch calls it weight, Flax calls it scale; same (C,) layout
    _Rule("weight", "scale", 1, None, None),
    # conv / linear / BatchNorm bias: same name, same (C,) layout
    _Rule("bias", "bias", 1, None, None),
    # BatchNorm running mean: a BatchStat called mean in Flax
    _Rule("running_mean", "mean", 1, None, None),
    # BatchNorm running variance: a BatchStat called var; in eval mode both frameworks use it the
    # same way (train-mode updates differ: torch stores the unbiased batch variance, Flax the biased)
    _Rule("running_var", "var", 1, None, None),
)


def _canonical_to_flax(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """(dotted Flax path, array in Flax layout) for canonical ``name``."""
    prefix, _, last = name.rpartition(".")
    for rule in _RULES:
        if rule.canonical == last and rule.ndim == array.ndim:
            out = array if rule.to_flax is None else np.transpose(array, rule.to_flax)
            return f"{prefix}.{rule.flax}" if prefix else rule.flax, out
    raise ValueError(f"{name}: no Flax rule for a {array.ndim}-D tensor called {last!r} "
                     f"(known: {', '.join(sorted({f'{r.canonical} ({r.ndim}-D)' for r in _RULES}))})")


def _flax_to_canonical(path: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """(canonical name, array in PyTorch layout) for the dotted Flax ``path``."""
    prefix, _, last = path.rpartition(".")
    for rule in _RULES:
        if rule.flax == last and rule.ndim == array.ndim:
            out = array if rule.to_canonical is None else np.transpose(array, rule.to_canonical)
            return f"{prefix}.{rule.canonical}" if prefix else rule.canonical, out
    raise ValueError(f"{path}: no rule maps a {array.ndim}-D Flax variable called {last!r} to a canonical "
                     f"name (known: {', '.join(sorted({f'{r.flax} ({r.ndim}-D)' for r in _RULES}))})")


# --------------------------------------------------------------------------- primitives


def _pad2d(padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit symmetric (H, W) conv padding. Never 'SAME': at stride 2 on an even size Flax's
    'SAME' pads (0, 1) where PyTorch pads (1, 1). (The pools spell out their padding inline.)"""
    return ((padding, padding), (padding, padding))


def _max_pool(x: jax.Array, op: P.MaxPool) -> jax.Array:
    """PyTorch's MaxPool2d (floor mode) on NHWC: padding counts as -inf, never as a value."""
    k, s, p = op.kernel_size, op.stride, op.padding
    # A Python scalar init, not an array: reduce_window with an array init is not differentiable
    # under jit ("Linearization failed to produce known values for all output primals").
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), (p, p), (p, p), (0, 0)))


def _window_counts(size: int, out: int, op: P.AvgPool) -> np.ndarray:
    """Divisor of each output position along one axis, exactly as PyTorch's avg_pool2d: the
    window [start, start + k) is clipped to [-p, size + p) (with count_include_pad) or to the
    input [0, size) (without); the part beyond the right padding that ceil_mode adds is never
    counted."""
    start = np.arange(out) * op.stride - op.padding
    end = np.minimum(start + op.kernel_size, size + op.padding)
    if not op.count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return (end - start).astype(np.float32)


def _avg_pool(x: jax.Array, op: P.AvgPool) -> jax.Array:
    """PyTorch's AvgPool2d on NHWC with ``ceil_mode`` and ``count_include_pad`` as the plan says
    (Flax's avg_pool has no ceil_mode and counts padding by default). ResNet-D's
    shortcut pool (2x2/2, ceil_mode, padding not counted) averages a partial last window over
    the pixels it covers."""
    _, h, w, _ = x.shape
    k, s, p = op.kernel_size, op.stride, op.padding
    oh, ow = op.out_size(h), op.out_size(w)
    # Right padding that makes reduce_window produce exactly the plan's size: ceil_mode may need
    # more than p (a partial last window), floor mode never does (the remainder is dropped).
    hi_h = max(p, (oh - 1) * s + k - h - p)
    hi_w = max(p, (ow - 1) * s + k - w - p)
    summed = lax.reduce_window(x, 0.0, lax.add, (1, k, k, 1), (1, s, s, 1),
                               ((0, 0), (p, hi_h), (p, hi_w), (0, 0)))
    summed = summed[:, :oh, :ow, :]
    counts = np.outer(_window_counts(h, oh, op), _window_counts(w, ow, op))  # static: constant-folded
    return summed / jnp.asarray(counts, x.dtype)[None, :, :, None]


def _shape_only(key, shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    """An initializer that allocates nothing: the placeholder ``nnx.eval_shape`` would give,
    without tracing the whole init (eval_shape's cost grows quadratically with the number of
    variables: ~1.7 s for resnet50)."""
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _inits(shape_only: bool, *names: str) -> dict:
    return {name: _shape_only for name in names} if shape_only else {}


DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}


class UnbiasedVarBatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` whose train-mode update stores the UNBIASED batch variance in ``var``
    (PyTorch's estimator; spec ``norm.running_var: unbiased``, torchvision's models).

    The output and the running mean are Flax's own. Flax stores ``mp*old + (1-mp)*v`` (``mp`` its
    momentum, ``v`` the biased variance of ``n`` values per channel), so the unbiased update is
    that plus ``(new - mp*old) / (n-1)``: a per-channel correction, no second pass over the data.
    """

    def __call__(self, x, use_running_average: bool | None = None, **kwargs):
        use_running = self.use_running_average if use_running_average is None else use_running_average
        if use_running:
            return super().__call__(x, use_running_average=True, **kwargs)
        old = self.var.get_value()
        out = super().__call__(x, use_running_average=False, **kwargs)
        n = x.size // x.shape[-1]
        new = self.var.get_value()
        self.var.set_value(new + (new - self.momentum * old) / (n - 1))
        return out


def _conv(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
          dilation: int = 1, groups: int = 1, bias: bool, rngs: nnx.Rngs, shape_only: bool, dtype) -> nnx.Conv:
    # Every numerics argument explicit: symmetric padding (never 'SAME'), use_bias from the plan.
    return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=(stride, stride),
                    padding=_pad2d(padding), kernel_dilation=(dilation, dilation), feature_group_count=groups,
                    use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs,
                    **_inits(shape_only, "kernel_init", "bias_init"))


def _layer(op, rngs: nnx.Rngs, shape_only: bool, dtype) -> nnx.Module:
    """The nnx module for one plan op that is a module (``plan.MODULE_OPS``)."""
    if isinstance(op, P.Conv):
        return _conv(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                     dilation=op.dilation, groups=op.groups, bias=op.bias, rngs=rngs, shape_only=shape_only,
                     dtype=dtype)
    if isinstance(op, P.BatchNorm):
        # Flax's momentum weights the OLD running value (default 0.99), the spec's the new statistic.
        # use_fast_variance=False: the two-pass variance, as accurate as torch's in train mode.
        cls = UnbiasedVarBatchNorm if op.running_var == "unbiased" else nnx.BatchNorm
        return cls(op.channels, use_running_average=True, momentum=1.0 - op.momentum, epsilon=op.eps,
                   use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs,
                   **_inits(shape_only, "scale_init", "bias_init"))
    if isinstance(op, P.Linear):
        return nnx.Linear(op.in_features, op.out_features, use_bias=True, dtype=dtype, param_dtype=dtype, rngs=rngs,
                          **_inits(shape_only, "kernel_init", "bias_init"))
    if isinstance(op, P.Dropout):
        return nnx.Dropout(op.rate, deterministic=True)
    raise TypeError(f"flax backend: no layer for plan op {op!r}")


def _attach(owner: nnx.Module, named: Mapping[str, nnx.Module]) -> None:
    """Set every module of ``named`` (relative canonical name -> module, e.g. "conv1.0",
    "downsample.1", "bn1", "layer1.0") on ``owner`` so that its state path is the canonical name.

    Containers whose children are numbered become nnx.List, with None (static, no state) where
    torch's Sequential has a parameter-free op (the ReLUs of the deep stem, the shortcut pool of
    ResNet-D): state keys are then ints, so ``nnx.replace_by_pure_dict`` can match a msgpack
    file's string keys (it converts every digit key to int). Others become nnx.Dict. Containers
    are made whole, since nnx forbids turning a static slot into a module.
    """
    tree: dict = {}
    for dotted, module in named.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = module

    def container(children: dict):
        children = {key: container(value) if isinstance(value, dict) else value for key, value in children.items()}
        if all(key.isdigit() for key in children):
            return nnx.List([children.get(str(i)) for i in range(max(map(int, children)) + 1)])
        return nnx.Dict(children)

    for name, value in tree.items():
        setattr(owner, name, container(value) if isinstance(value, dict) else value)


def _child(root: nnx.Module, path: tuple) -> nnx.Module:
    for part in path:
        root = root[part] if isinstance(part, int) else getattr(root, part)
    return root


def _path(dotted: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))


def _hard_sigmoid(x):
    return jax.nn.relu6(x + 3.0) / 6.0


_ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "hard_sigmoid": _hard_sigmoid}


# --------------------------------------------------------------------------- modules


class _PlanRef:
    """A plan (or part), kept on a module as a static (non-pytree) attribute. nnx hashes static
    attributes into the graph definition (the jit cache key) and a Plan holds a dict (not
    hashable), so this wrapper hashes by the (frozen, hashable) spec and compares the plans
    themselves (two plans of one spec may differ, e.g. a BatchNorm-folded one)."""

    __slots__ = ("plan",)

    def __init__(self, plan):
        self.plan = plan

    def __eq__(self, other) -> bool:
        return isinstance(other, _PlanRef) and (other.plan is self.plan or other.plan == self.plan)

    def __hash__(self) -> int:
        return hash(self.plan.spec) if isinstance(self.plan, P.Plan) else hash(self.plan)

    def __repr__(self) -> str:
        return f"Plan({self.plan.spec.name!r})" if isinstance(self.plan, P.Plan) else f"Part({self.plan.name!r})"


class _Runner(nnx.Module):
    """Runs plan parts over its own submodules, each looked up by canonical name at call time, on
    NHWC arrays. ``_mode`` carries one call's mode overrides (``use_running_average``,
    ``deterministic``, ``rngs``) to the BatchNorm and Dropout modules."""

    def _run_node(self, node, *inputs, mode: dict):
        op = node.op
        x = inputs[0]
        if isinstance(op, P.Conv) or isinstance(op, P.Linear):
            return _child(self, _path(self._local(op)))(x)
        if isinstance(op, P.BatchNorm):
            return _child(self, _path(self._local(op)))(x, use_running_average=mode["use_running_average"])
        if isinstance(op, P.Dropout):
            return _child(self, _path(self._local(op)))(x, deterministic=mode["deterministic"], rngs=mode["rngs"])
        if isinstance(op, P.Act):
            return _ACTIVATIONS[op.kind](x)
        if isinstance(op, P.Add):
            return sum(inputs[1:], x)
        if isinstance(op, P.Mul):
            return x * inputs[1]
        if isinstance(op, P.MaxPool):
            return _max_pool(x, op)
        if isinstance(op, P.AvgPool):
            return _avg_pool(x, op)
        if isinstance(op, P.GlobalAvgPool):
            return jnp.mean(x, axis=(1, 2), keepdims=not op.flatten)
        if isinstance(op, P.Flatten):
            # NCHW order, as the other backends flatten (identical for the 1x1 maps the plans flatten)
            return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1) if x.ndim == 4 else x
        if isinstance(op, P.Concat):
            return jnp.concatenate(inputs, axis=-1)
        if isinstance(op, P.Slice):
            return x[..., op.start:op.stop]
        raise TypeError(f"flax backend: cannot run plan op {op!r}")


class Block(_Runner):
    """One block of the plan on NHWC, with modules named as the plan says."""

    def __init__(self, block: P.Part, *, rngs: nnx.Rngs, shape_only: bool = False, dtype=jnp.float32):
        self._part = _PlanRef(block)  # static: the frozen plan Part (its nodes drive __call__)
        _attach(self, {block.local_name(op): _layer(op, rngs, shape_only, dtype) for op in block.modules})

    def _local(self, op) -> str:
        return self._part.plan.local_name(op)

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None,
                 deterministic: bool | None = None, rngs: nnx.Rngs | None = None) -> jax.Array:
        mode = {"use_running_average": use_running_average, "deterministic": deterministic, "rngs": rngs}
        return run_part(self._part.plan, x, lambda node, *inputs: self._run_node(node, *inputs, mode=mode))


class ResNet(_Runner):
    """A network compiled from a plan, on NHWC arrays.

    ``model(x)`` returns the logits, the last feature map, or (with ``out_indices``) a list of
    stage outputs; ``model(x, taps=True)`` returns ``{tap name: array}`` for every
    ``plan.tap_names`` entry (feature maps NHWC). ``use_running_average`` / ``deterministic``
    override the mode for one call, as on nnx.BatchNorm / nnx.Dropout.

    Constructed directly, parameters get nnx's default initializers (``build`` gives the spec's
    init); with ``shape_only=True`` they are ``jax.ShapeDtypeStruct`` placeholders (as from
    ``nnx.eval_shape``) to be filled, which is what ``build`` does.
    """

    def __init__(self, plan: P.Plan, *, rngs: nnx.Rngs, shape_only: bool = False, dtype=jnp.float32):
        self._plan = _PlanRef(plan)
        self.compute_dtype = jnp.dtype(dtype).name  # static: read per call without walking the state
        modules = {op.name: _layer(op, rngs, shape_only, dtype) for op in plan.stem.modules}
        for stage in plan.stages:
            for block in stage.blocks:
                modules[block.name] = Block(block, rngs=rngs, shape_only=shape_only, dtype=dtype)
        for part in plan.flat_parts[1:]:  # neck, head
            modules.update({op.name: _layer(op, rngs, shape_only, dtype) for op in part.modules})
        _attach(self, modules)

    @property
    def plan(self) -> P.Plan:
        return self._plan.plan

    def _local(self, op) -> str:
        return op.name

    def __call__(self, x: jax.Array, *, taps: bool = False, use_running_average: bool | None = None,
                 deterministic: bool | None = None, rngs: nnx.Rngs | None = None):
        mode = {"use_running_average": use_running_average, "deterministic": deterministic, "rngs": rngs}
        collected: dict[str, jax.Array] | None = {} if taps else None

        def run_block(block, x):
            return _child(self, _path(block.name))(x, **mode)

        out = run_plan(self.plan, x, lambda node, *inputs: self._run_node(node, *inputs, mode=mode),
                       taps=collected, run_block=run_block)
        return collected if taps else out


# --------------------------------------------------------------------------- contract


def is_model(model) -> bool:
    return isinstance(model, ResNet)


def plan_of(model: ResNet) -> P.Plan:
    return model.plan


def _path_key(path) -> str:
    return ".".join(str(part) for part in path)


def _variables(model: ResNet) -> dict[str, nnx.Variable]:
    """Dotted state path -> the model's Variable (Param or BatchStat)."""
    return {_path_key(path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def _dtype(variable):
    return variable.get_value().dtype if hasattr(variable, "get_value") else variable.dtype


def _staged(variables: Mapping, weights: Mapping[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
    """Every canonical tensor converted to its Flax path and layout (and to ``dtype``, default the
    target variable's) and checked against the target variable, before anything is written
    (all-or-nothing)."""
    staged = {}
    for name, value in weights.items():
        array = np.asarray(value)
        path, converted = _canonical_to_flax(name, array)
        if path not in variables:
            raise ValueError(f"{name}: the Flax model has no variable {path!r}")
        target = variables[path]
        if tuple(converted.shape) != tuple(target.shape):
            raise ValueError(f"{name}: expected Flax shape {tuple(target.shape)} at {path!r}, "
                             f"found {converted.shape} (canonical {array.shape})")
        staged[path] = np.ascontiguousarray(converted, dtype=_dtype(target) if dtype is None else dtype)
    return staged


def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> ResNet:
    """An ``nnx.Module`` for ``plan`` holding ``weights`` (complete canonical dict), in eval mode,
    computing in ``dtype`` ("float32", "float64" or "bfloat16"; parameters in that dtype too).

    The module is created with shape-only placeholders (no random init, which the weights would
    overwrite), then every variable is filled from the converted weights.

    Raises:
        ValueError: ``dtype="float64"`` while JAX's 64-bit mode is off. JAX would silently compute
            in float32; enable it first, before creating any arrays:
            ``jax.config.update("jax_enable_x64", True)`` (or ``JAX_ENABLE_X64=1``). It is a
            process-wide switch, so resnet_multi never flips it for you.
    """
    if dtype not in DTYPES:
        raise ValueError(f"flax backend: dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError('flax backend: dtype "float64" needs JAX\'s 64-bit mode, which is off (JAX would '
                         'compute in float32). Call jax.config.update("jax_enable_x64", True) at the start '
                         'of the program (or set JAX_ENABLE_X64=1), then build again.')
    model = ResNet(plan, rngs=nnx.Rngs(0), shape_only=True, dtype=DTYPES[dtype])
    variables = _variables(model)
    # in the model's dtype, not the placeholders': nnx.BatchNorm makes its statistics float32 arrays
    staged = _staged(variables, weights, DTYPES[dtype])
    unfilled = sorted(set(variables) - set(staged))
    if unfilled:  # the core passes complete weights; anything else is a plan/backend mismatch
        raise ValueError(f"flax backend: no weights for {len(unfilled)} variable(s): {', '.join(unfilled[:10])}")
    for path, var in variables.items():
        # every variable in the model's dtype: nnx.BatchNorm keeps its running statistics in
        # float32 whatever param_dtype says, which would round a float64 model's statistics
        var.set_value(jnp.asarray(staged[path], dtype=DTYPES[dtype]))
    return model


def export_weights(model: ResNet) -> dict[str, np.ndarray]:
    """Canonical weights (copies, PyTorch layout) in ``plan.params`` order."""
    variables = _variables(model)
    out = {}
    for path, var in variables.items():
        name, array = _flax_to_canonical(path, np.asarray(var.get_value()))
        out[name] = np.array(array, order="C", copy=True)
    return {name: out[name] for name in model.plan.params}


def import_weights(model: ResNet, weights: Mapping[str, np.ndarray]) -> None:
    """Copy checked canonical ``weights`` (any subset of the plan's names) into ``model``.

    All tensors are converted and shape-checked first and assigned only when every one
    converted, so a failure leaves the model untouched.
    """
    variables = _variables(model)
    staged = _staged(variables, weights)
    for path, array in staged.items():
        variables[path].set_value(jnp.asarray(array))


@nnx.jit
def _eval_taps(model: ResNet, x_nchw: jax.Array) -> dict[str, jax.Array]:
    """Every tap (NHWC feature maps) of an eval-mode forward of NCHW ``x_nchw``.

    nnx.jit keys its cache on the model's graph definition (architecture and static attributes)
    and the input shape, so models of one plan compile once per input shape.
    """
    x = jnp.transpose(x_nchw, (0, 2, 3, 1))
    # Explicit overrides: eval semantics whatever mode the model is in; the model is not touched.
    return model(x, taps=True, use_running_average=True, deterministic=True)


def _nchw(tap: jax.Array) -> np.ndarray:
    array = np.asarray(tap.astype(jnp.float32) if tap.dtype == jnp.bfloat16 else tap)
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if array.ndim == 4 else np.array(array)


def forward(model: ResNet, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward; returns ``{tap name: NCHW array}`` (only the outputs without taps).

    One jit-compiled program (``_eval_taps``) serves both ``taps=False`` and ``taps=True``: XLA
    fuses two different programs differently, so their shared outputs would differ in the last
    bits (seen: 4e-5 on resnet50d logits of magnitude ~10), and the output must equal its tap.
    One program also halves compile time. The cost: every tap is kept in memory until the call
    returns; for large-batch inference call the model itself (``nnx.jit`` of ``model(x_nhwc)``).
    Inside ``jax.disable_jit()`` it runs op by op, which is faster for a one-off call of a deep
    net at a new shape (no whole-program compile).
    """
    dtype = DTYPES[model.compute_dtype]  # the model computes in its dtype
    out = _eval_taps(model, jnp.asarray(x_nchw, dtype=dtype))
    # jax returns dicts with sorted keys: the plan's execution order is restored here
    names = model.plan.tap_names if taps else model.plan.output_names()
    return {name: _nchw(out[name]) for name in names}


# --------------------------------------------------------------------------- inference fast path
# Optional hook of the backend contract (resnet_multi.inference): BatchNorm is already folded by
# the core; this only adds what is XLA's own.


class _PointwiseConv(nnx.Conv):
    """A 1x1 convolution (no padding, no groups) computed as a matrix product over channels of the
    strided input. XLA:CPU runs the product ~25% faster than its convolution for resnet50's 1x1
    convs (batch 8: 0.86 s -> 0.64 s per call); the outputs equal the convolution's within float32
    rounding (bit-identical for resnet50's shapes, ~1e-7 relative for small ones). The 3x3 and 7x7
    convs stay convolutions (im2col plus a product was slower). Same parameters and names as
    ``nnx.Conv``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dtype is not None:  # as nnx.Conv: the input is cast to the conv's dtype
            x = x.astype(self.dtype)
        row_stride, col_stride = self.strides
        y = jnp.einsum("nhwc,co->nhwo", x[:, ::row_stride, ::col_stride, :], self.kernel[0, 0],
                       precision=self.precision)
        return y if self.bias is None else y + self.bias[...]


def _is_pointwise(conv: nnx.Conv) -> bool:
    """A conv ``_PointwiseConv`` computes exactly: 1x1, unpadded, ungrouped, undilated input,
    strides as a pair, no mask, no dtype conversion of the parameters (the product would skip it;
    ``build`` sets dtype = param_dtype, and ``forward`` feeds inputs of that dtype)."""
    return (tuple(conv.kernel_size) == (1, 1) and conv.feature_group_count == 1 and conv.input_dilation in (None, 1)
            and conv.padding == ((0, 0), (0, 0)) and isinstance(conv.strides, tuple) and len(conv.strides) == 2
            and conv.mask is None and conv.dtype in (None, conv.param_dtype))


def optimize(model: ResNet) -> ResNet:
    """Eval-only extras for a (BatchNorm-folded) model: every 1x1 convolution becomes a
    ``_PointwiseConv`` (same state; only the primitive differs). Still an nnx module, so
    ``nnx.jit``, ``nnx.split``/``merge`` and ``rm.forward`` take it as it is."""
    for _, module in nnx.iter_modules(model):
        if type(module) is nnx.Conv and _is_pointwise(module):
            module.__class__ = _PointwiseConv
    return model


# --------------------------------------------------------------------------- native files (.msgpack)

SUFFIXES = (".msgpack",)

# How flax.serialization marks an array it split into chunks (arrays over its MAX_CHUNK_SIZE of
# 1 GiB, because msgpack caps one object at 2**31 - 1 bytes): the leaf becomes a dict holding this
# key. It is part of the file format (msgpack_serialize writes it, msgpack_restore reassembles it),
# not an API: the reader only needs it to treat such a dict as one array, not as a module.
# Pinned by test_chunked_arrays_are_written_and_read_as_flax_does.
_CHUNKED = "__msgpack_chunked_array__"

# Reads from the file in 1 MiB pieces (msgpack's default of 16 KiB means ~15k read calls for ResNet-152).
_READ_SIZE = 1 << 20


def _nested(flat: Mapping[str, np.ndarray]) -> dict:
    """{'a.b.c': x} -> {'a': {'b': {'c': x}}} (string keys throughout, as msgpack state dicts)."""
    root: dict = {}
    for path, array in flat.items():
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    return root


def _flatten(tree, path: str = "") -> dict[str, object]:
    """{'a': {'b': x}} -> {'a.b': x}."""
    if not isinstance(tree, dict):
        return {path: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{path}.{key}" if path else str(key)))
    return flat


def _pop_leaves(tree: dict, prefix: str = ""):
    """(dotted key, leaf) for every leaf of ``tree`` in file order, each removed from the tree as
    it is yielded: the caller's converted copy replaces the encoded bytes instead of adding to
    them. A chunked-array dict counts as one leaf."""
    for key in list(tree):
        value = tree.pop(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and _CHUNKED not in value:
            yield from _pop_leaves(value, dotted)
        else:
            yield dotted, value


def _read_encoded(path: Path):
    """The file's msgpack object with every array still encoded (``msgpack.ExtType`` leaves).

    Streamed from the file: msgpack's C unpacker keeps only the object it is decoding in its
    buffer, so neither the whole file's bytes nor a second decoded copy is ever held (reading the
    bytes and calling ``msgpack_restore`` needed file + arrays = 2x, plus the converted copies).
    Same strictness as ``msgpack.unpackb``: the file must hold exactly one object, and no length
    may claim more than the file's size.
    """
    limit = max(path.stat().st_size, _READ_SIZE)
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=_READ_SIZE, max_buffer_size=limit, raw=False,
                                    strict_map_key=False)  # raw/strict_map_key as msgpack_restore
        tree = unpacker.unpack()  # msgpack.OutOfData on an empty or truncated file
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            return tree
    raise ValueError("extra data after the state dict")


def _decode(path: Path, key: str, leaf):
    """A leaf of ``_read_encoded``'s tree as ``flax.serialization.msgpack_restore`` decodes it:
    the leaf is re-encoded alone and handed to msgpack_restore (public API: Flax's own array,
    scalar, complex and chunk decoding; the cost is one extra copy of one tensor at a time)."""
    if not isinstance(leaf, (msgpack.ExtType, dict)):
        return leaf
    try:
        return serialization.msgpack_restore(msgpack.packb(leaf))
    except Exception as error:  # a corrupt array record: msgpack/numpy raise several types
        raise ValueError(f"{path}: {key} is not a readable Flax array ({type(error).__name__}: {error})") from None


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays (PyTorch layout) from a Flax msgpack state dict (as written by
    ``save_native``, or ``flax.serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model)))``).

    Names are translated by ``_RULES`` alone (last key and rank), so no plan is needed; the
    result is in the file's order (Flax's sorted keys), not ``plan.params`` order. Memory:
    the file is streamed (``_read_encoded``) and its tensors are decoded and converted one at a
    time, each encoded record dropped as its canonical copy is made: the peak is about the
    checkpoint's size plus a few copies of the largest tensor.

    Raises:
        ValueError: the file is not a msgpack state dict (corrupt, truncated, not a dict of
            arrays), or holds a variable no rule translates; the message names the file.
    """
    path = Path(path)
    try:
        tree = _read_encoded(path)
    except Exception as error:  # msgpack raises several types for corrupt/truncated input
        raise ValueError(f"{path}: not a readable Flax msgpack file ({type(error).__name__}: {error})") from None
    if not isinstance(tree, dict) or not tree:
        raise ValueError(f"{path}: expected a nested dict of arrays (a Flax state dict), "
                         f"found {type(tree).__name__}")
    out = {}
    for key, leaf in _pop_leaves(tree):
        value = _decode(path, key, leaf)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: {key} is a {type(value).__name__}, expected an array")
        try:
            name, array = _flax_to_canonical(key, value)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        # a copy: writable, C-ordered, and not a view keeping the decoded buffer alive
        out[name] = np.array(array, order="C", copy=True)
    return out


def _name_tree(names) -> dict:
    """Canonical names as a nested dict of their dotted parts, each leaf the full canonical name:
    the file's modules and how many entries each has, known before any tensor is touched (a
    rule renames only a name's last part)."""
    root: dict = {}
    for name in names:
        node = root
        *parents, leaf = name.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name}: {'.'.join(parents[:depth + 1])} is a tensor, not a module")
        if leaf in node:
            raise ValueError(f"{name}: it is a module (other names extend it), not a tensor")
        node[leaf] = name
    return root


def _write_map(f, packer: msgpack.Packer, node: dict, weights: Mapping[str, np.ndarray], where: str = "") -> None:
    """Write ``node`` (from ``_name_tree``) as ``msgpack_serialize`` writes the nested Flax state
    dict: a map header, then each key and its value; each tensor is converted, encoded and
    written on its own, so the copies of only one tensor exist at a time."""
    entries = []
    for part, child in node.items():
        if isinstance(child, dict):
            entries.append((part, child))
        else:  # the Flax key depends on the tensor's rank: fetched now, transposed lazily (a view)
            flax_path, array = _canonical_to_flax(child, np.asarray(weights[child]))
            entries.append((flax_path.rpartition(".")[2], array))
    # msgpack_serialize (in_place=False) first copies the tree with jax.tree_util, which sorts
    # every dict's keys as Python strings ('10' before '2'): the file's maps are in that order.
    entries.sort(key=lambda entry: entry[0])
    for (key, _), (next_key, _) in zip(entries, entries[1:]):
        if key == next_key:
            raise ValueError(f"{where}{key}: two canonical names map to this Flax key")
    f.write(packer.pack_map_header(len(entries)))
    for key, value in entries:
        f.write(packer.pack(key))
        if isinstance(value, dict):
            _write_map(f, packer, value, weights, f"{where}{key}.")
        else:
            # Flax's public serializer on the lone array writes the very bytes it writes for the
            # array inside a tree (an ext record, or a chunked-array map above 1 GiB), so the file
            # equals msgpack_serialize(whole tree). Its tobytes('C') makes the transposed copy.
            f.write(serialization.msgpack_serialize(value))


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``weights`` as a Flax msgpack state dict: the nested structure of
    ``nnx.state(model)`` (Flax names and layout, string keys), readable with
    ``flax.serialization.msgpack_restore`` and loadable into a model with
    ``nnx.replace_by_pure_dict(state, tree); nnx.update(model, state)``.

    The bytes are exactly ``msgpack_serialize`` of that nested dict (tested; keys sorted, as it
    writes them), written incrementally: the only memory used beyond ``weights`` is a few copies
    of the largest tensor. ``weights[name]`` is fetched once per tensor, when its module is
    written (progress reporting follows the writing).
    """
    tree = _name_tree(weights)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _write_map(f, msgpack.Packer(), tree, weights)


# --------------------------------------------------------------------------- training
# Hooks of resnet_multi.training: the neutral optimizer description (training.SGD / AdamW) as an
# nnx.Optimizer over an optax chain, and the standard nnx train step for check_training.


def optax_transform(spec) -> optax.GradientTransformation:
    """The optax chain for a neutral optimizer description.

    SGD: optax has no weight-decay argument on ``sgd``; ``add_decayed_weights(wd)`` before
    ``sgd`` adds ``wd * p`` to the gradient before momentum, as torch and Paddle do.
    ``optax.sgd``'s trace is torch's momentum buffer (``v = g + m * v``, first ``v = g``) and its
    Nesterov form ``g + m * v`` is torch's. AdamW: ``optax.adamw`` with ``eps_root=0`` adds eps to
    the bias-corrected ``sqrt(v)`` and decays ``lr * wd * p``, decoupled, as torch. Without a mask
    optax decays every leaf it is given; ``nnx.Optimizer(..., wrt=nnx.Param)`` gives it every
    parameter (BatchNorm scales and biases included, as torch and Paddle) and no BatchStat.
    """
    if spec.name == "sgd":
        tx = optax.sgd(spec.lr, momentum=spec.momentum if spec.momentum > 0 else None, nesterov=spec.nesterov)
        return optax.chain(optax.add_decayed_weights(spec.weight_decay), tx) if spec.weight_decay > 0 else tx
    if spec.name == "adamw":
        return optax.adamw(spec.lr, b1=spec.betas[0], b2=spec.betas[1], eps=spec.eps, eps_root=0.0,
                           weight_decay=spec.weight_decay)
    raise ValueError(f"flax backend: no optimizer for {spec!r}")


def make_optimizer(model: ResNet, spec) -> nnx.Optimizer:
    """``nnx.Optimizer(model, optax_transform(spec), wrt=nnx.Param)``: parameters only, never the
    BatchNorm statistics (``nnx.BatchStat``)."""
    return nnx.Optimizer(model, optax_transform(spec), wrt=nnx.Param)


def _training_logits(out) -> jax.Array:
    """Logits for the training loss: the head's, or the output feature map(s) averaged over H, W
    (and concatenated along channels), as resnet_multi.training.check_training defines it."""
    if isinstance(out, (list, tuple)):
        return jnp.concatenate([o.mean(axis=(1, 2)) for o in out], axis=1)
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out


@nnx.jit
def _train_step(model: ResNet, optimizer: nnx.Optimizer, x_nhwc: jax.Array, labels: jax.Array):
    """The standard nnx step: loss and gradients by ``nnx.value_and_grad`` (BatchNorm's batch
    statistics are updated in place by the train-mode forward, inside the jitted function),
    then ``optimizer.update``."""
    def loss_fn(model):
        logits = _training_logits(model(x_nhwc))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads


def train_step(model: ResNet, optimizer: nnx.Optimizer, x_nchw: np.ndarray, labels: np.ndarray):
    """One train-mode step (``model.train()``, then the jitted ``_train_step``).

    Returns:
        (loss as a float, {canonical name: gradient array in canonical layout}).
    """
    model.train()
    dtype = DTYPES[model.compute_dtype]
    x = jnp.asarray(np.transpose(np.asarray(x_nchw), (0, 2, 3, 1)), dtype=dtype)
    loss, grads = _train_step(model, optimizer, x, jnp.asarray(np.asarray(labels, dtype=np.int32)))
    out = {}
    for path, leaf in nnx.to_flat_state(grads):
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        name, array = _flax_to_canonical(_path_key(path), np.asarray(value))
        out[name] = np.array(array, order="C", copy=True)
    return float(loss), out
