"""The Paddle layer tree of a plan, and the contract's model functions (build, forward, weights)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import paddle
from paddle import nn

from resnet_multi import layout as L
from resnet_multi import plan as P
from resnet_multi.backends import _module_tree as tree
from resnet_multi.walk import run_part, run_plan, run_stage_via_container

from . import DTYPES
from .layout import LAYOUT
from .ops import OPS, add_parameter


# The walk's control flow depends only on the plan, never on tensor values: Paddle's AST
# to_static (paddle.jit.save, to_static(full_graph=True)) runs it as plain Python instead of
# rewriting its loops and branches into graph control flow.
for _walk in (run_part, run_plan):
    paddle.jit.not_to_static(_walk)

ADAPTER = tree.Adapter(children=lambda layer: layer._sub_layers, add_child=nn.Layer.add_sublayer,
                       sequential=nn.Sequential, container=nn.Layer, add_parameter=add_parameter,
                       parameter=getattr)


class _Runner(nn.Layer):
    """A layer that runs one plan part over its registered sublayers, each looked up by its
    canonical name at call time (never through references kept at build time), so replacing one
    (``model.layer1[0].bn1 = nn.Identity()``, SyncBatchNorm conversion) takes effect.

    Control flow depends only on the plan, never on data, so ``paddle.jit.to_static`` converts it.
    """

    def _call(self, path: tuple, x):
        """Call the layer at ``path`` below this one, looked up now (so surgery takes effect)."""
        return tree.call(ADAPTER, self, path, x)

    def _run_node(self, node, *inputs):
        return tree.run_node(ADAPTER, self, self._paths, OPS, node, *inputs)


class Block(_Runner):
    """One block of the plan (its ops wired as ``plan.Part`` says), layers named as the plan says
    (``names``: the plan's "paddle" naming scheme, e.g. PaddleClas' DenseNet names)."""

    def __init__(self, block: P.Part, names: Mapping[str, str]):
        super().__init__()
        self.part = block
        self._paths = tree.register_part(ADAPTER, self, block, OPS, names)

    def forward(self, x):
        return run_part(self.part, x, self._run_node)


class Network(_Runner):
    """A network compiled from a plan (any family: ResNet, DenseNet, GhostNet, ...). ``forward(x)``
    returns logits, the last feature map, or (with ``out_indices``) a list of stage outputs;
    ``forward(x, taps=True)`` returns a dict of every named intermediate instead
    (``plan.tap_names``, in order). A named parameterless op whose Paddle name is "" (PaddleClas
    has no such layer) runs as a function.
    """

    def __init__(self, plan: P.Plan):
        super().__init__()
        self.plan = plan
        names = plan.aliases.get(LAYOUT.naming, {})  # the plan's Paddle names for its modules, if any
        self._paths, self._stages, self._blocks = tree.build_tree(ADAPTER, self, plan, OPS, names,
                                                                  lambda block: Block(block, names))
        self._has_head = plan.head is not None
        self._out_indices = plan.out_indices

    def _weights_changed(self) -> None:
        """Called after ``import_weights`` assigned new values (an inference model drops its engine)."""

    def _run_block(self, block: P.Part, x):
        return self._call(self._blocks[block.name], x)

    def _run_stage(self, stage: P.Stage, x):
        return run_stage_via_container(stage, x, self._stages.get(stage.name), self._run_block, self._call)

    def forward(self, x, taps: bool = False):
        collected = {} if taps else None
        out = run_plan(self.plan, x, self._run_node, taps=collected, run_block=self._run_block,
                       run_stage=self._run_stage)
        return collected if taps else out


ResNet = Network
"""The model class's first name, kept so existing ``isinstance`` checks work."""

_NUMPY_DTYPES = {paddle.float32: np.float32, paddle.float64: np.float64}


def is_model(model) -> bool:
    return isinstance(model, Network)


def plan_of(model: Network) -> P.Plan:
    return model.plan


def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> Network:
    """A ``paddle.nn.Layer`` for ``plan`` holding ``weights`` (complete canonical dict), in eval
    mode, with parameters of ``dtype`` ("float32" or "float64").

    Layers are created under ``paddle.LazyGuard`` (no Paddle initialisation, no allocation);
    assigning the weights allocates each parameter, so every state_dict entry must be covered.
    """
    expected = set(L.native_names(LAYOUT, plan).values())
    missing = [name for name in plan.params if name not in weights]
    if missing:
        raise ValueError(f"paddle build: weights lack {len(missing)} tensor(s) of the plan: {missing[:10]}")
    if dtype not in DTYPES:
        raise ValueError(f"paddle backend: dtype {dtype!r} is not supported (Paddle has no CPU bfloat16 "
                         f"convolution); use one of {', '.join(DTYPES)}")
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)  # layers create their parameters in the default dtype
    try:
        with paddle.LazyGuard():
            model = Network(plan)
    finally:
        paddle.set_default_dtype(previous)
    uncovered = sorted(set(model.state_dict()) - expected)
    if uncovered:  # would stay uninitialised: a Paddle layer grew state the plan does not know
        raise RuntimeError(f"paddle build: state_dict entries without a canonical parameter: {uncovered[:10]}")
    model.built_dtype = dtype
    import_weights(model, weights)
    model.eval()
    return model


def export_weights(model: Network) -> dict[str, np.ndarray]:
    """Canonical weights (copies, PyTorch layout) in the plan's order."""
    state = model.state_dict()
    return L.export(LAYOUT, model.plan, lambda native: state[native].numpy())


def import_weights(model: Network, weights: Mapping[str, np.ndarray]) -> None:
    """Copy checked canonical ``weights`` (any subset of the plan's names) into ``model``.

    Every tensor is converted and shape-checked first (``resnet_multi.layout.stage``: every bad
    name in one WeightsError) and assigned only when all of them converted, so a failure leaves
    the model untouched.
    """
    state = model.state_dict()
    staged = L.stage(LAYOUT, model.plan, weights, {name: tuple(t.shape) for name, t in state.items()},
                     lambda native, array: np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[state[native].dtype]))
    for native, array in staged.items():
        state[native].set_value(array)
    model._weights_changed()


def _dtype_of(model: Network):
    """The parameters' dtype; for a model without parameters (a plan of parameterless ops), the
    dtype it was built in."""
    for param in model.parameters():
        return param.dtype
    return getattr(model, "built_dtype", "float32")


def forward(model: Network, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward without gradients; returns ``{tap name: NCHW array}`` (only the outputs
    without taps). The input is cast to the model's dtype; the model's train/eval mode is restored
    afterwards."""
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            out = model(paddle.to_tensor(x_nchw).astype(_dtype_of(model)), taps=taps)
    finally:
        if was_training:
            model.train()
    if taps:
        return {name: np.ascontiguousarray(t.numpy()) for name, t in out.items()}
    outputs = out if isinstance(out, list) else [out]
    # contiguous: a transposed result (a channels-first LayerNorm's) is a strided view in Paddle 3
    return {name: np.ascontiguousarray(t.numpy()) for name, t in zip(model.plan.output_names(), outputs, strict=True)}


