"""Cross-backend parity: the same weights and input through every backend, compared tap by tap.

``check_parity`` builds the spec in each backend with one set of canonical weights, runs one
input through all of them and through a reference (the float64 numpy oracle by default), and
compares every tap (stem, each block, each stage, pre_logits, logits) against the reference:

    a tap passes when  max|out - ref| <= atol + rtol * max|ref|

The bound is relative to the scale of the tap compared (deep nets with random weights reach
activations of 1e6), with an absolute floor for taps that are near zero. The defaults per dtype
(``BOUNDS``, from ``resnet_multi.reports.tolerances``) sit several times above summation-order
noise; a real porting bug (padding, pooling, BN convention, a transpose) gives relative errors of
1e-2 and more.

``check_models`` does the same for models that are already built (e.g. after loading
different weights into one of them); both end in ``compare_outputs``. The report itself
(``ParityReport``, ``TapResult``, ``Divergence``) is ``resnet_multi.reports.parity``'s, re-exported here.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

from ._lazy import np
from . import api
from .plan import Plan, make_plan
from .reference import reference_forward
from .registry import BackendError, backend_names, get_backend
from .reports.parity import NUMPY, Divergence, ParityReport, TapResult  # noqa: F401 (re-exported: their old home)
from .reports.tolerances import BOUNDS, parity_bound
from .weights import check_weights, random_weights
from .zoo import resolve_spec

DEFAULT_HW = (33, 47)
"""Default input height and width: small (fast), odd and non-square. Padding and ceil_mode
mistakes show only at some sizes; at 33x47 a torchvision ResNet's stride-2 layers see
17x24, 9x12, 5x6, 3x3: odd and even, square and not."""

FLOAT32_RTOL, FLOAT32_ATOL = BOUNDS["float32"]  # compare_outputs' defaults


# --------------------------------------------------------------------------- comparing


def compare_tap(backend: str, tap: str, out, ref, *, rtol: float, atol: float) -> TapResult:
    """One tap's figures: ``out`` against ``ref`` (missing or mis-shaped outputs fail)."""
    ref = np.asarray(ref, dtype=np.float64)
    max_ref = float(np.max(np.abs(ref))) if ref.size else 0.0
    bound = atol + rtol * max_ref
    if out is None:
        return TapResult(backend, tap, tuple(ref.shape), math.inf, max_ref, math.inf, bound, False,
                         "missing: the backend did not return this tap")
    out = np.asarray(out, dtype=np.float64)
    if out.shape != ref.shape:
        return TapResult(backend, tap, tuple(out.shape), math.inf, max_ref, math.inf, bound, False,
                         f"shape {out.shape} != reference {ref.shape}")
    max_abs = float(np.max(np.abs(out - ref))) if ref.size else 0.0  # nan if out has nan
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    return TapResult(backend, tap, tuple(ref.shape), max_abs, max_ref, rel, bound, bool(max_abs <= bound))


def compare_outputs(plan: Plan, outputs: Mapping[str, Mapping[str, np.ndarray]],
                    reference_outputs: Mapping[str, np.ndarray], *, input_shape: Sequence[int],
                    reference: str = NUMPY, rtol: float = FLOAT32_RTOL, atol: float = FLOAT32_ATOL,
                    dtype: str = "float32") -> ParityReport:
    """A ParityReport from outputs already computed: ``outputs[backend][tap]`` against
    ``reference_outputs[tap]``, for every tap of ``plan.tap_names``."""
    _check_tolerances(rtol, atol)
    results = []
    for backend, taps in outputs.items():
        for tap in plan.tap_names:
            results.append(compare_tap(backend, tap, taps.get(tap), reference_outputs[tap], rtol=rtol, atol=atol))
    return ParityReport(plan.spec.name, tuple(int(s) for s in input_shape), reference, tuple(outputs),
                        plan.tap_names, float(rtol), float(atol), tuple(results), dtype)


def _check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def _as_input(plan: Plan, inputs) -> np.ndarray:
    """The input every backend and the oracle receive: float32 NCHW (the oracle upcasts it)."""
    x = np.asarray(inputs)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"inputs: expected a floating point array, got dtype {x.dtype}")
    plan.check_input_shape(x.shape, what="inputs")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_models(models: Mapping[str, object], inputs: np.ndarray, *, weights: Mapping[str, np.ndarray] | None = None,
                 reference: str = NUMPY, rtol: float | None = None, atol: float | None = None) -> ParityReport:
    """Compare models that are already built (any backends, one plan), tap by tap.

    Args:
        models: label -> model built by ``rm.build`` (labels are usually backend names; any
            string but "numpy" will do, so two models of one backend can be compared).
        inputs: the NCHW input, fed to every model as float32.
        weights: canonical weights for the numpy oracle (needed when ``reference`` is "numpy").
        reference: "numpy" (the float64 oracle on ``weights``) or one of the labels of
            ``models`` (that model is the reference and is not listed as compared).
        rtol, atol: the per-tap bound, max|a - b| <= atol + rtol * max|ref|; default
            ``BOUNDS`` of the models' dtype (they must share one).
    Returns:
        ParityReport.
    Example:
        >>> rm.import_weights(paddle_model, {"layer3.2.bn2.running_var": v}, strict=False)  # one model only
        >>> check_models({"torch": t, "paddle": paddle_model}, x, weights=w).first_divergence
        Divergence(backend='paddle', tap='layer3.2', ...)
    """
    if not models:
        raise ValueError("check_models: no models to compare")
    plans = {label: api.plan_of(model) for label, model in models.items()}
    plan = next(iter(plans.values()))
    for label, other in plans.items():
        if other.spec != plan.spec:
            raise ValueError(f"check_models: {label!r} was built from spec {other.spec.name!r}, "
                             f"not {plan.spec.name!r}; parity needs one spec")
    dtypes = {label: next(iter(api.export_weights(model).values())).dtype.name for label, model in models.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"check_models: the models have different dtypes ({dtypes}); parity needs one")
    dtype = next(iter(dtypes.values()))
    dtype = dtype if dtype in BOUNDS else "float32"
    default_rtol, default_atol = parity_bound(dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    _check_tolerances(rtol, atol)
    x = _as_input(plan, inputs)
    if dtype == "bfloat16":
        x = _bfloat16_values(x)
    if reference == NUMPY:
        if weights is None:
            raise ValueError("check_models: the numpy reference needs the canonical weights (weights=...)")
        if NUMPY in models:
            raise ValueError(f"check_models: {NUMPY!r} names the oracle; label the models otherwise")
        checked = check_weights(plan, weights)
        if dtype == "bfloat16":
            checked = {name: _bfloat16_values(w) for name, w in checked.items()}
        reference_outputs = reference_forward(plan, checked, x, taps=True, precision=_precision(dtype))
    elif reference in models:
        reference_outputs = api.forward(models[reference], x, taps=True)
    else:
        raise ValueError(f"check_models: reference {reference!r} is neither {NUMPY!r} nor one of the models "
                         f"({', '.join(models)})")
    outputs = {label: api.forward(model, x, taps=True) for label, model in models.items() if label != reference}
    return compare_outputs(plan, outputs, reference_outputs, input_shape=x.shape, reference=reference,
                           rtol=rtol, atol=atol, dtype=dtype)


# --------------------------------------------------------------------------- the public entry point


def resolve_spec_and_weights(spec, weights, caller: str = "check_parity"):
    """(spec, weights or None) of a check, from its ``spec`` argument (a ResNetSpec, preset name,
    spec file or None) and its ``weights`` argument (a dict, a checkpoint path of any supported
    format, or None). With ``spec`` None, the spec stored in the checkpoint is used.

    Raises:
        ValueError: no spec given and the weights carry none (the message names ``caller``).
    """
    file_spec = None
    if isinstance(weights, (str, os.PathLike)):
        from .convert import read_canonical  # any supported checkpoint format

        weights, file_spec = read_canonical(weights)
    if spec is None:
        if file_spec is None:
            raise ValueError(f"{caller}: no spec given and the weights carry none; pass a spec")
        spec = file_spec
    return resolve_spec(spec), weights


def check_parity(spec, backends: Iterable[str] = backend_names(), weights=None, inputs=None,
                 input_shape: Sequence[int] | None = None, seed: int = 0, rtol: float | None = None,
                 atol: float | None = None, reference: str = NUMPY, dtype: str = "float32") -> ParityReport:
    """Check that backends compute the same function as a reference, tap by tap.

    Every backend is built with the same canonical weights and fed the same float32 input;
    every tap (stem, each block, each stage, pre_logits, logits) is compared with the
    reference's. A tap passes when max|out - ref| <= atol + rtol * max|ref|.

    Args:
        spec: a ResNetSpec, a preset name or a spec file (None: the spec stored in the
            ``weights`` file).
        backends: the backends to compare (default every registered backend,
            ``rm.backend_names()``); "numpy" may be listed too when ``reference`` is a backend
            (the oracle then appears as one more row).
        weights: canonical weights (dict) or a checkpoint file of any supported format.
            Default: ``random_weights(plan, seed)``: random convs and linears, BN scales,
            biases, running means and variances away from 1 and 0, no zero-init, so a
            swapped mean/var or a missing transpose cannot hide.
        inputs: the NCHW input (default: standard normal, of ``input_shape``, from a
            generator seeded with ``(seed, 1)``).
        input_shape: (N, C, H, W) of the default input; default (1, in_channels, 33, 47):
            small, odd and non-square, where padding and ceil_mode bugs show.
        seed: seed of the default weights and input.
        rtol, atol: the bound; default ``BOUNDS[dtype]`` (float32: about 10x summation-order noise).
        reference: "numpy" (the float64 oracle, default) or a backend name.
        dtype: the models' dtype, "float32", "float64" or "bfloat16" (``rm.build``'s). For
            bfloat16 the weights and input are rounded to bfloat16 first, so the oracle computes on
            the values the models hold; the report states the dtype and its bound.
    Returns:
        ParityReport: ``.ok``, ``.first_divergence`` (None or (backend, tap, max abs, rel)),
        ``.to_dict()``, and ``print(report)`` for a table.
    Example:
        >>> report = rm.check_parity("resnet50", backends=("torch", "paddle", "flax"))
        >>> report.ok, report.first_divergence
        (True, None)
    """
    spec, weights = resolve_spec_and_weights(spec, weights)
    plan = make_plan(spec)
    default_rtol, default_atol = parity_bound(dtype)  # an unknown dtype: ValueError
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    _check_tolerances(rtol, atol)
    backends = tuple(dict.fromkeys(backends))  # keep order, drop repeats
    if not backends:
        raise BackendError("check_parity: no backends to compare")
    for name in backends:
        if name != NUMPY:
            get_backend(name)  # unknown or uninstalled backend: fail before any work
    if reference != NUMPY:
        get_backend(reference)
    if reference == NUMPY and NUMPY in backends:
        raise BackendError("check_parity: 'numpy' is already the reference; list it in backends only when "
                           "reference names a backend")

    if inputs is None:
        shape = tuple(input_shape) if input_shape is not None else (1, plan.in_channels, *DEFAULT_HW)
        plan.check_input_shape(shape, what="input_shape")
        inputs = np.random.default_rng((seed, 1)).standard_normal(shape).astype(np.float32)
    elif input_shape is not None and tuple(np.shape(inputs)) != tuple(input_shape):
        raise ValueError(f"inputs have shape {np.shape(inputs)} but input_shape is {tuple(input_shape)}; "
                         "give one of them")
    x = _as_input(plan, inputs)
    weights = random_weights(plan, seed) if weights is None else check_weights(plan, weights)
    if dtype == "bfloat16":  # what the models hold and see, exactly, for the oracle too
        weights = {name: _bfloat16_values(w) for name, w in weights.items()}
        x = _bfloat16_values(x)

    def run(name: str) -> dict[str, np.ndarray]:
        if name == NUMPY:
            return reference_forward(plan, weights, x, taps=True, precision=_precision(dtype))
        return api.forward(api.build(spec, backend=name, weights=weights, dtype=dtype), x, taps=True)

    reference_outputs = run(reference)
    outputs = {name: run(name) for name in backends if name != reference}
    return compare_outputs(plan, outputs, reference_outputs, input_shape=x.shape, reference=reference,
                           rtol=rtol, atol=atol, dtype=dtype)


def _precision(dtype: str) -> str:
    """What the oracle rounds weights and input to: the models' values (bfloat16 ones are rounded
    before, and are float32-exact)."""
    return "float64" if dtype == "float64" else "float32"


def _bfloat16_values(array) -> np.ndarray:
    """float32 array of the values ``array`` takes when rounded to bfloat16."""
    import ml_dtypes

    return np.asarray(array, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
