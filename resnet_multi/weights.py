"""Canonical weights: a dict ``name -> np.ndarray`` with torchvision's names and PyTorch's layout.

This module validates such a dict against a plan (all problems reported at once), makes the
initial weights every backend starts from (so one seed gives the same model in every
framework), and makes randomized weights for parity checks.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .plan import Plan

FRAMEWORK_EXTRAS = ("num_batches_tracked",)
"""Buffers frameworks keep that are not canonical: dropped on import, recreated by the backend."""


class WeightsError(ValueError):
    """Weights that do not fit a plan. ``missing``, ``unexpected`` and ``mismatched`` list every
    problem; the message names each tensor with its expected and found shape."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def _describe(names, limit=20) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_weights(plan: Plan, weights: Mapping[str, object], *, strict: bool = True,
                  source: str = "weights") -> dict[str, np.ndarray]:
    """Validate canonical ``weights`` against ``plan`` and return them as numpy arrays.

    Every missing, unexpected and mis-shaped tensor is reported in one WeightsError. With
    ``strict=False`` missing and unexpected names are allowed (shapes are still checked).
    Known framework extras such as ``bn1.num_batches_tracked`` are dropped explicitly.
    The input mapping is never modified.

    Returns:
        ``{name: np.ndarray}`` in the plan's order, holding only names of the plan.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"{source}: expected a mapping of name -> array, got {type(weights).__name__}")
    expected = plan.params
    arrays: dict[str, np.ndarray] = {}
    unexpected, mismatched, not_float = [], [], []
    for name, value in weights.items():
        if name.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            continue
        if name not in expected:
            unexpected.append(name)
            continue
        array = np.asarray(value)
        if array.shape != expected[name].shape:
            mismatched.append(f"{name} (expected {expected[name].shape}, found {array.shape})")
        elif not np.issubdtype(array.dtype, np.floating):
            not_float.append(f"{name} (dtype {array.dtype})")
        else:
            arrays[name] = array
    missing = [name for name in expected if name not in weights]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} mis-shaped: {_describe(mismatched)}")
    if not_float:
        problems.append(f"{len(not_float)} not floating point: {_describe(not_float)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing: {_describe(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_describe(unexpected)}")
    if problems:
        raise WeightsError(
            f"{source} do not fit {plan.spec.name!r}: " + "; ".join(problems),
            missing if strict else (), unexpected if strict else (), mismatched,
        )
    return {name: arrays[name] for name in expected if name in arrays}


def init_weights(plan: Plan, seed: int = 0) -> dict[str, np.ndarray]:
    """The initial weights the spec's ``init`` describes (float32), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, info in plan.params.items():
        scheme, scale = info.init
        if scheme == "normal":
            out[name] = (rng.standard_normal(info.shape, dtype=np.float32) * np.float32(scale))
        elif scheme == "uniform":
            out[name] = rng.uniform(-scale, scale, info.shape).astype(np.float32)
        elif scheme == "ones":
            out[name] = np.ones(info.shape, np.float32)
        else:
            out[name] = np.zeros(info.shape, np.float32)
    return out


def random_weights(plan: Plan, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for parity tests, chosen so that a wrong port cannot pass unnoticed.

    Convs and linears get the spec's init scale (so activations stay O(1) through deep nets),
    BN scales are in [0.5, 1.5] and biases in [-0.5, 0.5] (not 1 and 0), running means in
    [-0.5, 0.5] and running variances in [0.5, 2.0] (swapping mean and var changes the output),
    and no BN is zero-initialised.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, info in plan.params.items():
        role = info.role
        if role in ("conv_weight", "linear_weight"):
            scale = info.init[1] or 0.1
            if info.init[0] == "uniform":
                scale = scale / np.sqrt(3.0)
            w = rng.standard_normal(info.shape) * scale
        elif role == "bn_weight":
            w = rng.uniform(0.5, 1.5, info.shape)
        elif role == "bn_var":
            w = rng.uniform(0.5, 2.0, info.shape)
        else:  # biases and running means
            w = rng.uniform(-0.5, 0.5, info.shape)
        out[name] = w.astype(np.float32)
    return out
