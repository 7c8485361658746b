"""Deliberately wrong toy backends, for testing that parity checks catch real porting bugs.

Each toy backend is a plain numpy backend implementing the backend contract (the same
names as ``resnet_multi.backends.torch``), walking the plan with the oracle's primitives
(``resnet_multi.reference``), with ONE classic porting bug injected:

- ``"swap_mean_var"``  BN running mean and variance swapped on import (a rename table mixing up
  Paddle's ``_mean``/``_variance``).
- ``"kernel_hw"``      conv kernels stored transposed in their spatial axes (HWIO -> OIHW with
  ``transpose(3, 2, 1, 0)`` instead of ``(3, 2, 0, 1)``): square kernels keep their shape, so
  only the values (of non-symmetric kernels) reveal it.
- ``"same_padding"``   TensorFlow/Flax 'SAME' padding instead of the plan's symmetric padding:
  identical at stride 1 and on odd sizes at stride 2, but (0, 1) instead of (1, 1) for a 3x3
  at stride 2 on an even size, so it shows only at some sizes.
- ``None``             no bug: the control showing the toy backend itself is right.

They are registered for a test only (``register`` with pytest's ``monkeypatch``), as a real
backend is: one ``registry.BackendInfo`` row, never in the production registry.
"""

from __future__ import annotations

import sys
import types
from typing import Mapping

import numpy as np

from resnet_multi import plan as P
from resnet_multi import reference as R
from resnet_multi import registry
from resnet_multi.backends.torch.layout import LAYOUT as CANONICAL_LAYOUT
from resnet_multi.walk import run_plan

BUGS = ("swap_mean_var", "kernel_hw", "same_padding")


class ToyModel:
    """A plan and the backend's own copy of the weights (float32, possibly mangled by a bug)."""

    def __init__(self, plan: P.Plan, bug: str | None):
        self.plan = plan
        self.bug = bug
        self.params: dict[str, np.ndarray] = {}


def _to_internal(bug, plan: P.Plan, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical -> the toy's storage: where the 'import' bugs live."""
    out = {name: np.array(value, dtype=np.float32) for name, value in weights.items()}
    if bug == "swap_mean_var":
        for name in list(out):
            if plan.params[name].role == "bn_mean":
                var = name[: -len("running_mean")] + "running_var"
                if var in out:
                    out[name], out[var] = out[var], out[name]
    if bug == "kernel_hw":
        for name, value in out.items():
            if plan.params[name].role == "conv_weight":
                hwio = value.transpose(2, 3, 1, 0)            # canonical OIHW -> Flax HWIO
                out[name] = hwio.transpose(3, 2, 1, 0).copy()  # wrong way back: gives OIWH
    return out


def _same_padding(size: int, kernel_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'SAME': total padding so that out = ceil(size / stride), the extra pixel at the end."""
    out = -(-size // stride)
    span = dilation * (kernel_size - 1) + 1
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def _op(model: ToyModel, node: P.Node, *inputs: np.ndarray) -> np.ndarray:
    op, x = node.op, inputs[0]
    if model.bug == "same_padding" and isinstance(op, P.Conv):
        w = model.params
        padding = (_same_padding(x.shape[2], op.kernel_size, op.stride, op.dilation),
                   _same_padding(x.shape[3], op.kernel_size, op.stride, op.dilation))
        return R.conv2d(x, w[f"{op.name}.weight"], w[f"{op.name}.bias"] if op.bias else None, stride=op.stride,
                        padding=padding, dilation=op.dilation, groups=op.groups)
    return R.run_op(op, list(inputs), model.params)


def _forward(model: ToyModel, x: np.ndarray) -> dict[str, np.ndarray]:
    taps = {}
    run_plan(model.plan, x.astype(np.float64), lambda node, *inputs: _op(model, node, *inputs), taps=taps)
    return {name: value.astype(np.float32) for name, value in taps.items()}


def make_backend(bug: str | None) -> types.ModuleType:
    """A backend module (the contract's functions) whose models carry ``bug``."""
    name = f"toy_{bug or 'ok'}"
    module = types.ModuleType(f"_resnet_multi_test_backend_{name}")  # no dots: no parent package to import
    module.NAME = name
    module.SUFFIXES = ()
    module.DTYPES = ("float32", "float64")
    module.FEATURES = frozenset()
    module.LAYOUT = CANONICAL_LAYOUT  # the toy holds canonical names and layout (bugs aside)

    def is_model(model) -> bool:
        return isinstance(model, ToyModel) and model.bug == bug

    def plan_of(model: ToyModel) -> P.Plan:
        return model.plan

    def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> ToyModel:
        model = ToyModel(plan, bug)
        import_weights(model, weights)
        return model

    def export_weights(model: ToyModel) -> dict[str, np.ndarray]:
        return {n: model.params[n].copy() for n in model.plan.params}  # the bug is not undone: it is a bug

    def import_weights(model: ToyModel, weights: Mapping[str, np.ndarray]) -> None:
        model.params.update(_to_internal(bug, model.plan, weights))

    def forward(model: ToyModel, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore"):  # a swapped running mean is a negative variance: nan, as in a framework
            out = _forward(model, x_nchw)
        names = model.plan.tap_names if taps else model.plan.output_names()
        return {n: out[n] for n in names}

    def load_native(path):
        raise NotImplementedError("toy backend: no native files")

    save_native = load_native

    def make_optimizer(model, settings):
        raise NotImplementedError("toy backend: no training")

    train_step = make_optimizer
    for fn in (is_model, plan_of, build, export_weights, import_weights, forward, load_native, save_native,
               make_optimizer, train_step):
        setattr(module, fn.__name__, fn)
    return module


def register(monkeypatch, bug: str | None) -> str:
    """Register the toy backend with ``bug`` for the current test only; returns its name."""
    module = make_backend(bug)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # one row, as every backend; its framework is numpy, which is always there
    info = registry.BackendInfo(module.NAME, module.__name__, "numpy", "test", module.SUFFIXES, module.FEATURES)
    monkeypatch.setitem(registry.BACKENDS, module.NAME, info)
    return module.NAME
