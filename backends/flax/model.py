"""The nnx module tree of a plan, and the contract's model functions (build, forward, weights)."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resnet_multi import layout as L
from resnet_multi import plan as P
from resnet_multi.walk import run_part, run_plan

from .layout import LAYOUT
from .ops import JAX_DTYPES, OPS, Context


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
        # a block whose own modules are numbered (ConvNeXt's downsample ``features.2.0``) holds
        # them as attributes "0", "1": only nnx.List is indexed
        root = root[part] if isinstance(root, nnx.List) else getattr(root, str(part))
    return root


def _path(dotted: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))



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



def _owned(part: P.Part, context: Context, local=lambda op: op.name) -> dict:
    """``{local name: module or parameter}`` of what ``part`` holds: its modules, and the
    parameters of its parameter ops (``ir.PARAMETER_OPS``), each made by its ``OPS`` row."""
    return {local(op): OPS[type(op)].module(op, context) for op in part.ops
            if isinstance(op, P.MODULE_OPS + P.PARAMETER_OPS)}


class _Runner(nnx.Module):
    """Runs plan parts over its own submodules, each looked up by canonical name at call time, on
    NHWC arrays. ``_mode`` carries one call's mode overrides (``use_running_average``,
    ``deterministic``, ``rngs``) to the BatchNorm and Dropout modules."""

    def _run_node(self, node, *inputs, mode: dict):
        op = node.op
        entry = OPS.get(type(op))
        if entry is None:
            raise TypeError(f"flax backend: cannot run plan op {op!r}")
        if entry.call is not None:  # a module: called with the call's mode
            return entry.call(_child(self, _path(self._local(op))), inputs[0], mode)
        if isinstance(op, P.PARAMETER_OPS):  # its parameter, looked up now
            return entry.apply(node, *inputs, _child(self, _path(self._local(op)))[...])
        return entry.apply(node, *inputs)


class Block(_Runner):
    """One block of the plan on NHWC, with modules named as the plan says."""

    def __init__(self, block: P.Part, *, rngs: nnx.Rngs, shape_only: bool = False, dtype=jnp.float32):
        self._part = _PlanRef(block)  # static: the frozen plan Part (its nodes drive __call__)
        _attach(self, _owned(block, Context(rngs, shape_only, dtype), block.local_name))

    def _local(self, op) -> str:
        return self._part.plan.local_name(op)

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None,
                 deterministic: bool | None = None, rngs: nnx.Rngs | None = None) -> jax.Array:
        mode = {"use_running_average": use_running_average, "deterministic": deterministic, "rngs": rngs}
        return run_part(self._part.plan, x, lambda node, *inputs: self._run_node(node, *inputs, mode=mode))


class Network(_Runner):
    """A network compiled from a plan (any family: ResNet, DenseNet, GhostNet, ...), on NHWC arrays.

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
        context = Context(rngs, shape_only, dtype)
        modules = _owned(plan.stem, context)
        for stage in plan.stages:
            for block in stage.blocks:
                if block.is_flat:  # its modules sit on the model itself (a VGG stage)
                    modules.update(_owned(block, context))
                else:
                    modules[block.name] = Block(block, rngs=rngs, shape_only=shape_only, dtype=dtype)
        for part in plan.flat_parts[1:]:  # neck, head
            modules.update(_owned(part, context))
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


ResNet = Network
"""The model class's first name, kept so existing ``isinstance`` checks work."""


def is_model(model) -> bool:
    return isinstance(model, Network)


def plan_of(model: Network) -> P.Plan:
    return model.plan


def _path_key(path) -> str:
    return ".".join(str(part) for part in path)


def _variables(model: Network) -> dict[str, nnx.Variable]:
    """Dotted state path -> the model's Variable (Param or BatchStat)."""
    return {_path_key(path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def _dtype(variable):
    return variable.get_value().dtype if hasattr(variable, "get_value") else variable.dtype


def _staged(plan: P.Plan, variables: Mapping, weights: Mapping[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
    """Every canonical tensor converted to its Flax path and layout (and to ``dtype``, default the
    target variable's) and checked against the target variable, before anything is written
    (all-or-nothing; ``resnet_multi.layout.stage``)."""
    return L.stage(LAYOUT, plan, weights, {path: tuple(var.shape) for path, var in variables.items()},
                   lambda path, array: np.ascontiguousarray(array, dtype=_dtype(variables[path]) if dtype is None
                                                            else dtype))


def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> Network:
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
    if dtype not in JAX_DTYPES:
        raise ValueError(f"flax backend: dtype {dtype!r} is not supported; use one of {', '.join(JAX_DTYPES)}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError('flax backend: dtype "float64" needs JAX\'s 64-bit mode, which is off (JAX would '
                         'compute in float32). Call jax.config.update("jax_enable_x64", True) at the start '
                         'of the program (or set JAX_ENABLE_X64=1), then build again.')
    model = Network(plan, rngs=nnx.Rngs(0), shape_only=True, dtype=JAX_DTYPES[dtype])
    variables = _variables(model)
    # in the model's dtype, not the placeholders': nnx.BatchNorm makes its statistics float32 arrays
    staged = _staged(model.plan, variables, weights, JAX_DTYPES[dtype])
    unfilled = sorted(set(variables) - set(staged))
    if unfilled:  # the core passes complete weights; anything else is a plan/backend mismatch
        raise ValueError(f"flax backend: no weights for {len(unfilled)} variable(s): {', '.join(unfilled[:10])}")
    for path, var in variables.items():
        # every variable in the model's dtype: nnx.BatchNorm keeps its running statistics in
        # float32 whatever param_dtype says, which would round a float64 model's statistics
        var.set_value(jnp.asarray(staged[path], dtype=JAX_DTYPES[dtype]))
    return model


def export_weights(model: Network) -> dict[str, np.ndarray]:
    """Canonical weights (copies, PyTorch layout) in ``plan.params`` order."""
    variables = _variables(model)
    return L.export(LAYOUT, model.plan, lambda native: np.asarray(variables[native].get_value()))


def import_weights(model: Network, weights: Mapping[str, np.ndarray]) -> None:
    """Copy checked canonical ``weights`` (any subset of the plan's names) into ``model``.

    All tensors are converted and shape-checked first (``resnet_multi.layout.stage``: every bad
    name in one WeightsError) and assigned only when every one converted, so a failure leaves the
    model untouched.
    """
    variables = _variables(model)
    staged = _staged(model.plan, variables, weights)
    for path, array in staged.items():
        variables[path].set_value(jnp.asarray(array))


@nnx.jit
def _eval_taps(model: Network, x_nchw: jax.Array) -> dict[str, jax.Array]:
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


def forward(model: Network, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward; returns ``{tap name: NCHW array}`` (only the outputs without taps).

    One jit-compiled program (``_eval_taps``) serves both ``taps=False`` and ``taps=True``: XLA
    fuses two different programs differently, so their shared outputs would differ in the last
    bits (seen: 4e-5 on resnet50d logits of magnitude ~10), and the output must equal its tap.
    One program also halves compile time. The cost: every tap is kept in memory until the call
    returns; for large-batch inference call the model itself (``nnx.jit`` of ``model(x_nhwc)``).
    Inside ``jax.disable_jit()`` it runs op by op, which is faster for a one-off call of a deep
    net at a new shape (no whole-program compile).
    """
    dtype = JAX_DTYPES[model.compute_dtype]  # the model computes in its dtype
    out = _eval_taps(model, jnp.asarray(x_nchw, dtype=dtype))
    # jax returns dicts with sorted keys: the plan's execution order is restored here
    names = model.plan.tap_names if taps else model.plan.output_names()
    return {name: _nchw(out[name]) for name in names}


