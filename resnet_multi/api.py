"""The functions that work on any backend's model: build, forward, export and import weights."""

from __future__ import annotations

import os
from typing import Mapping

from ._lazy import np
from .inference import build_inference
from .plan import Plan, make_plan
from .registry import backend_of, default_backend, get_backend
from .spec import ResNetSpec
from .weights import check_weights, init_weights, warn_nonfinite, widen_bfloat16
from .zoo import resolve_spec


def _weights_from(weights) -> Mapping[str, np.ndarray]:
    if isinstance(weights, (str, os.PathLike)):
        from .convert import read_canonical  # reads any supported checkpoint format

        weights, _ = read_canonical(weights)
    return weights


DTYPES = ("float32", "float64", "bfloat16")
"""Model dtypes: float32 (default), float64 (for proofs: training parity, exact checks), bfloat16
(torch and flax; Paddle has no CPU bfloat16 convolution)."""


def _source(weights) -> str:
    return str(weights) if isinstance(weights, (str, os.PathLike)) else "weights"


def build(spec: ResNetSpec | str, backend: str | None = None, weights=None, *, seed: int = 0,
          strict: bool = True, inference: bool = False, dtype: str = "float32"):
    """Compile ``spec`` into a native model of ``backend``.

    Args:
        spec: a ResNetSpec, a preset name (``"resnet50"``) or a spec file (.json/.yaml).
        backend: "torch", "paddle" or "flax" (see ``available_backends()``); default: the
            registry's first, "torch".
        weights: canonical weights (dict name -> array) or a checkpoint file of any supported
            format; without them the model is initialised as ``spec.init`` says, from ``seed``,
            identically in every backend. Half-precision weights (float16, bfloat16) give a
            float32 model holding exactly their values. Tensors with NaN or Inf are loaded, with
            a NonFiniteWarning naming them.
        seed: the seed of that initialisation.
        strict: with weights, require exactly the plan's names (as torch's load_state_dict).
        inference: build the eval-only fast path instead, as ``optimize_for_inference`` makes it
            (BatchNorm folded into the convs, plus the backend's own speed-ups). ``weights`` are
            the ordinary (unfolded) canonical weights.
        dtype: "float32", "float64" or "bfloat16": the parameters' and computation's dtype. Weights
            of another dtype are cast (a half-precision checkpoint gives an exact upcast). Flax
            float64 needs ``jax.config.update("jax_enable_x64", True)`` first (a clear error
            says so); Paddle refuses bfloat16.
    Returns:
        A ``torch.nn.Module``, ``paddle.nn.Layer`` or ``flax.nnx.Module`` in eval mode.
    Example:
        >>> model = rm.build("resnet18", backend="torch")
    """
    spec = resolve_spec(spec)
    module = get_backend(default_backend() if backend is None else backend)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    plan = make_plan(spec)
    if weights is None:
        initial = init_weights(plan, seed)
    else:
        initial = check_weights(plan, _weights_from(weights), strict=strict)
        warn_nonfinite(initial, source=_source(weights))
        initial = widen_bfloat16(initial)  # exact; frameworks take float32 from numpy, not bfloat16
        if len(initial) < len(plan.params):  # strict=False with a subset: the rest from the spec's init
            initial = {**init_weights(plan, seed), **initial}
    if inference:
        return build_inference(module, plan, initial, dtype=dtype)
    return module.build(plan, initial, dtype=dtype)


def optimize_for_inference(model):
    """An eval-only copy of ``model`` that computes the same function faster.

    Every BatchNorm is folded into the convolution before it (once, in numpy, float64; see
    ``resnet_multi.inference``), the folded plan is compiled by the model's backend, and the
    backend's own speed-ups are applied (torch: channels_last memory format; paddle: eval calls
    run under Paddle Inference with oneDNN; flax: 1x1 convs as channel products; see each
    backend's ``optimize``). Outputs equal ``model``'s within float32 noise; ``rm.forward`` with taps works.
    ``model`` itself is not changed.

    The result is for inference only: training it would train the folded convs, not BatchNorm.
    ``plan_of`` returns the folded plan (no BatchNorm ops; folded convs have a bias) and
    ``export_weights`` the folded weights (``<conv>.bias`` added, no BatchNorm tensors): they
    load into another inference model of the same spec, in any backend, but not into an
    ordinary model.

    Example:
        >>> fast = rm.optimize_for_inference(rm.build("resnet50", "torch", weights="r50.pth"))
        >>> logits = rm.forward(fast, x)
    """
    backend = backend_of(model)
    weights = backend.export_weights(model)
    dtype = next(iter(weights.values())).dtype.name  # the copy keeps the model's dtype
    return build_inference(backend, backend.plan_of(model), weights, dtype=dtype)


def plan_of(model) -> Plan:
    """The plan a model was built from."""
    return backend_of(model).plan_of(model)


def export_weights(model) -> dict[str, np.ndarray]:
    """The model's canonical weights: torchvision names, PyTorch layout, numpy arrays (copies)."""
    return backend_of(model).export_weights(model)


def import_weights(model, weights, *, strict: bool = True) -> None:
    """Load canonical weights (dict or checkpoint file) into ``model``, all or nothing.

    Every missing, unexpected or mis-shaped tensor is reported in one WeightsError and the
    model is left untouched. Values are cast to the model's dtype (float16/bfloat16 into a
    float32 model exactly). Tensors with NaN or Inf are loaded, with a NonFiniteWarning naming them.
    """
    backend = backend_of(model)
    plan = backend.plan_of(model)
    checked = check_weights(plan, _weights_from(weights), strict=strict)
    warn_nonfinite(checked, source=_source(weights))
    backend.import_weights(model, widen_bfloat16(checked))  # widening is exact, see build


def forward(model, x_nchw: np.ndarray, *, taps: bool = False):
    """Eval-mode forward pass: numpy NCHW in, numpy out, whatever the backend's layout.

    Returns:
        The output array (logits, or the last feature map in NCHW), a list of arrays for a
        spec with ``out_indices``, or with ``taps=True`` a dict of every named intermediate
        (``plan.tap_names``) in NCHW.
    """
    backend = backend_of(model)
    plan = backend.plan_of(model)
    x = np.asarray(x_nchw)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"input: expected a floating point array, got dtype {x.dtype}")
    plan.check_input_shape(x.shape)
    # float64 stays float64 (a float64 model computes on it exactly); the backend casts to its dtype
    x = np.ascontiguousarray(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    outputs = backend.forward(model, x, taps=taps)
    if taps:
        return outputs
    names = plan.output_names()
    if plan.out_indices is not None:
        return [outputs[n] for n in names]
    return outputs[names[0]]
