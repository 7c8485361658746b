"""The inference fast path, framework-free: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, ``y = (x - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. When ``x`` is a convolution's output ``w * input + b``, the
two collapse into one convolution with

    w' = w * s           (per output channel)
    b' = (b - mean) * s + beta      (b = 0 for a conv without bias)

This module rewrites a Plan and its canonical weights that way, ONCE, in numpy (float64, then
float32), so every backend gets the fast path by compiling the folded plan with its ordinary
``build()``: backends hold no folding code. A backend may add its own speed-ups (torch:
memory format; paddle: a Paddle Inference engine; flax: 1x1 convs as products) through an
optional ``optimize(model) -> model`` function in its module; ``build_inference`` calls it
when present.

The folded plan has the same ``spec``, the same taps (``plan.tap_names``) and the same output
names as the original. Its parameter table differs: no BatchNorm entries, and every conv that
absorbed a BatchNorm keeps its canonical name and gains ``<conv>.bias`` (role ``conv_bias``).
So ``export_weights`` of an inference model returns the folded weights of the folded plan;
they load into another inference model of the same spec (in any backend), but not into the
ordinary (unfolded) model, and the fold cannot be undone.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Mapping

from ._lazy import np
from . import plan as P
from .weights import check_weights


def _sequences(plan: P.Plan):
    """Every op sequence of the plan: the stem, each block's main path and shortcut."""
    yield plan.stem
    for stage in plan.stages:
        for block in stage.blocks:
            yield block.main
            yield block.shortcut


def _pairs(ops):
    """Indices ``i`` where ``ops[i]`` is a Conv and ``ops[i + 1]`` a BatchNorm (the BN it feeds)."""
    return [i for i in range(len(ops) - 1)
            if isinstance(ops[i], P.Conv) and isinstance(ops[i + 1], P.BatchNorm)]


def is_folded(plan: P.Plan) -> bool:
    """True when no BatchNorm of ``plan`` directly follows a conv (``fold_batchnorm`` has nothing to do)."""
    return not any(_pairs(ops) for ops in _sequences(plan))


class _Folder:
    """Folds the Conv + BatchNorm pairs of op sequences, collecting the new conv weights."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self.convs: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # conv name -> folded (weight, bias)
        self.bns: set[str] = set()                                   # names of the folded BatchNorms

    def ops(self, ops: tuple) -> tuple:
        pairs = set(_pairs(ops))
        out, i = [], 0
        while i < len(ops):
            if i in pairs:
                out.append(self._pair(ops[i], ops[i + 1]))
                i += 2
            else:
                out.append(ops[i])
                i += 1
        return tuple(out)

    def _pair(self, conv: P.Conv, bn: P.BatchNorm) -> P.Conv:
        if bn.channels != conv.out_channels:  # a plan error, never a user error
            raise ValueError(f"fold_batchnorm: {bn.name} has {bn.channels} channels, "
                             f"the conv {conv.name} before it {conv.out_channels}")

        def f64(name):  # float64 throughout: the folded values are rounded once, at the end
            return np.asarray(self.weights[name], dtype=np.float64)

        w = f64(f"{conv.name}.weight")
        b = f64(f"{conv.name}.bias") if conv.bias else np.zeros(conv.out_channels)
        scale = f64(f"{bn.name}.weight") / np.sqrt(f64(f"{bn.name}.running_var") + bn.eps)
        bias = (b - f64(f"{bn.name}.running_mean")) * scale + f64(f"{bn.name}.bias")
        self.convs[conv.name] = ((w * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32))
        self.bns.add(bn.name)
        return dataclasses.replace(conv, bias=True)


def fold_batchnorm(plan: P.Plan, weights: Mapping[str, np.ndarray]) -> tuple[P.Plan, dict[str, np.ndarray]]:
    """Fold every BatchNorm that directly follows a conv into that conv (eval-mode semantics).

    Covers the stem (also timm's deep stem), every block's main path and every shortcut
    (``conv_bn`` and ResNet-D's pool + conv + BN). A BatchNorm without a conv right before it
    (none in the presets) is kept as it is. The arithmetic is done in float64 and the results
    are rounded to float32 once.

    Args:
        plan: the plan the weights belong to (folding an already folded plan changes nothing).
        weights: its complete canonical weights (checked against ``plan``; a WeightsError lists
            every problem).
    Returns:
        ``(folded_plan, folded_weights)``: a Plan with the same spec, taps and outputs, whose
        folded convs have ``bias=True`` and whose parameter table has no entries for the folded
        BatchNorms (order otherwise kept, each new ``<conv>.bias`` right after its
        ``<conv>.weight``); and complete float32 canonical weights for it, in that order.
    Example:
        >>> folded_plan, folded = fold_batchnorm(plan, rm.export_weights(model))
    """
    checked = check_weights(plan, weights, strict=True, source="weights to fold")
    folder = _Folder(checked)
    stem = folder.ops(plan.stem)
    stages = tuple(
        dataclasses.replace(stage, blocks=tuple(
            dataclasses.replace(block, main=folder.ops(block.main), shortcut=folder.ops(block.shortcut))
            for block in stage.blocks))
        for stage in plan.stages)

    params: dict[str, P.ParamInfo] = {}
    out: dict[str, np.ndarray] = {}
    for name, info in plan.params.items():
        owner = name.rsplit(".", 1)[0]
        if owner in folder.bns or name in params:  # a folded BN's entry; a conv bias already placed
            continue
        if owner in folder.convs and info.role == "conv_weight":
            bias = f"{owner}.bias"
            out[name], out[bias] = folder.convs[owner]
            params[name] = info
            params[bias] = P.ParamInfo(bias, (info.shape[0],), "conv_bias", ("zeros", 0.0))
        else:
            params[name] = info
            out[name] = np.asarray(checked[name], dtype=np.float32)
    return dataclasses.replace(plan, stem=stem, stages=stages, params=params), out


def build_inference(backend: ModuleType, plan: P.Plan, weights: Mapping[str, np.ndarray]):
    """The inference model of ``backend``: ``backend.build`` of the folded plan, then the
    backend's optional ``optimize(model) -> model`` hook (its own eval-only speed-ups).

    Args:
        backend: a backend module (see ``registry.get_backend``).
        plan, weights: the (unfolded or folded) plan and its complete canonical weights.
    """
    folded_plan, folded = fold_batchnorm(plan, weights)
    model = backend.build(folded_plan, folded)
    optimize = getattr(backend, "optimize", None)
    return optimize(model) if optimize is not None else model
