"""Canonical weights: a dict ``name -> np.ndarray`` with torchvision's names and PyTorch's layout.

This module validates such a dict against a plan (all problems reported at once), makes the
initial weights every backend starts from (so one seed gives the same model in every
framework), makes randomized weights for parity checks, and reads and writes the neutral
``.safetensors`` file (canonical names and layout, the spec's JSON in the metadata).

Floating point dtypes: float16, bfloat16, float32 and float64 (``DTYPES``). numpy has no bfloat16
of its own; a bfloat16 tensor is a numpy array of ``ml_dtypes.bfloat16``, the type JAX itself
uses (``jnp.bfloat16`` is it) and safetensors' numpy reader returns, so such arrays pass to JAX,
safetensors and ``astype`` without copying bytes around; torch and Paddle files are translated
to and from it by their backends. ``ml_dtypes`` is imported only when a dtype is named by string
(``resolve_dtype``); checking an array's dtype needs no import.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ._lazy import np
from .formats.sniff import NEUTRAL_SUFFIX  # noqa: F401 (the neutral file's suffix, importable from here too)
from .plan import Plan, make_plan

if TYPE_CHECKING:
    from .spec import ResNetSpec

FRAMEWORK_EXTRAS = ("num_batches_tracked",)
"""Buffers frameworks keep that are not canonical: dropped on import, recreated by the backend."""


DTYPES = ("float16", "bfloat16", "float32", "float64")
"""The floating point dtypes weights may have, by name (what ``dtype=``/``--dtype`` accept)."""

# (from, to) casts that keep every value: the target's exponent range and significand contain the
# source's (float16: 5/10 bits, bfloat16: 8/7, float32: 8/23, float64: 11/52). Every other cast
# between different dtypes may round or overflow, and is measured (cast_weights).
_EXACT_CASTS = {("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"),
                ("bfloat16", "float64"), ("float32", "float64")}


class PrecisionWarning(UserWarning):
    """A cast to a narrower dtype changed values (the message gives the largest relative change)."""


class NonFiniteWarning(UserWarning):
    """Tensors holding NaN or Inf (the message names them). They are kept as they are."""


def is_float_dtype(dtype) -> bool:
    """True for numpy's floating dtypes and ``ml_dtypes.bfloat16`` (no import needed to tell)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name == "bfloat16"


def resolve_dtype(dtype):
    """The numpy dtype named by ``dtype`` (one of ``DTYPES``, or a dtype object of one of them).

    Raises:
        ValueError: any other name or dtype (the message lists the accepted ones).
    Example:
        >>> resolve_dtype("bfloat16")
        dtype(bfloat16)
    """
    name = dtype
    if not isinstance(dtype, str):
        try:
            name = np.dtype(dtype).name if dtype is not None else None
        except TypeError:
            name = None
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if name == "bfloat16":
        import ml_dtypes  # only now: it is a numpy extension, not needed for any other dtype

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def cast_weights(weights: Mapping[str, np.ndarray], dtype, *, source: str = "weights",
                 stacklevel: int = 2) -> dict[str, np.ndarray]:
    """``weights`` with every tensor cast to ``dtype`` (round to nearest even, as numpy casts).

    Widening casts (float16/bfloat16 -> float32/float64, float32 -> float64) keep every value
    exactly and say nothing. Any other cast between different dtypes is measured: if it changed a
    value, a PrecisionWarning gives the largest relative change, ``max|cast - x| / max|x|`` per
    tensor (the scale parity bounds use), naming that tensor, and names the tensors in which
    finite values overflowed to +-inf. Tensors already of ``dtype`` are passed through (not copied).

    Args:
        weights: ``{name: array}`` of floating point arrays; never modified.
        dtype: one of ``DTYPES`` (a name or numpy dtype).
        source: what the weights are, for the warning.
        stacklevel: of the warning (2: the caller's line).
    Returns:
        A new dict, same names and order.
    Example:
        >>> half = cast_weights(rm.export_weights(model), "bfloat16")  # warns: up to ~3.9e-03
    """
    target = resolve_dtype(dtype)
    out: dict[str, np.ndarray] = {}
    worst, worst_name, overflowed = 0.0, None, []
    for name, value in weights.items():
        array = np.asarray(value)
        if array.dtype == target:
            out[name] = array
            continue
        with np.errstate(over="ignore"):  # an overflow to inf is reported below, in the PrecisionWarning
            cast = array.astype(target)
        out[name] = cast
        if (array.dtype.name, target.name) in _EXACT_CASTS:
            continue
        # Measured in float32 (float64 for float64 sources): it holds both sides exactly, and their
        # difference too (a rounded value is within a factor 2 of the original: Sterbenz), at half
        # the cost of float64 copies (resnet152 to bfloat16: 1.0 s -> 0.35 s).
        work = np.float64 if array.dtype.itemsize > 4 else np.float32
        wide, back = array.astype(work, copy=False), cast.astype(work)
        finite = np.isfinite(wide)
        if not finite.all():  # NaN/Inf stay NaN/Inf; measure the finite values only
            wide, back = wide[finite], back[finite]
        if wide.size == 0:
            continue
        if not np.isfinite(back).all():
            overflowed.append(name)
            continue
        scale = float(np.max(np.abs(wide)))
        change = float(np.max(np.abs(back - wide))) / scale if scale > 0 else 0.0
        if change > worst:
            worst, worst_name = change, name
    if worst > 0 or overflowed:
        parts = []
        if worst > 0:
            parts.append(f"changed values by up to {worst:.3g} relative (max|cast - x| / max|x| per tensor; "
                         f"largest in {worst_name})")
        if overflowed:
            parts.append(f"values beyond the {target.name} range became +-inf in {len(overflowed)} tensor(s): "
                         f"{_describe(overflowed, 10)}")
        warnings.warn(f"{source}: casting to {target.name} " + "; ".join(parts), PrecisionWarning,
                      stacklevel=stacklevel)
    return out


def count_nonfinite(array) -> str:
    """How many NaN and Inf values ``array`` holds, as a message says it: '3 NaN and 1 Inf value(s)'."""
    array = np.asarray(array)
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    return " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part) + \
        " value(s)"


def nonfinite_tensors(weights: Mapping[str, object]) -> dict[str, str]:
    """``{name: "3 NaN, 1 Inf"}`` for every tensor holding NaN or +-Inf, in ``weights``' order."""
    found = {}
    for name, value in weights.items():
        array = np.asarray(value)
        if not is_float_dtype(array.dtype):
            continue
        # a sum is NaN/Inf whenever an element is (and, rarely, when it overflows): one pass without
        # a boolean array, ~2x faster than isfinite().all(); the exact count runs only after it
        if np.isfinite(array.sum(dtype=np.float64 if array.dtype.itemsize > 4 else np.float32)):
            continue
        finite = np.isfinite(array)
        if finite.all():
            continue
        nan = int(np.count_nonzero(np.isnan(array)))
        inf = array.size - int(np.count_nonzero(finite)) - nan
        found[name] = ", ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)
    return found


def warn_nonfinite(weights: Mapping[str, object], *, source: str = "weights", stacklevel: int = 2) -> dict[str, str]:
    """Warn (NonFiniteWarning) naming every tensor of ``weights`` that holds NaN or Inf; never refuses.

    Returns:
        ``nonfinite_tensors(weights)``.
    """
    found = nonfinite_tensors(weights)
    if found:
        listed = _describe([f"{name} ({what})" for name, what in found.items()], 10)
        warnings.warn(f"{source}: {len(found)} tensor(s) hold NaN or Inf: {listed}", NonFiniteWarning,
                      stacklevel=stacklevel + 1)
    return found


def widen_bfloat16(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``weights`` with bfloat16 arrays as float32 (exact: float32 holds every bfloat16 value),
    others passed through. For handing weights to a framework: ``torch.from_numpy`` and Paddle's
    ``set_value`` refuse ``ml_dtypes.bfloat16`` arrays (Paddle wants bfloat16 as uint16 bits), while
    float32 goes in anywhere, and casting it to a bfloat16 model gives back the same bits."""
    return {name: a.astype(np.float32) if a.dtype.name == "bfloat16" else a for name, a in weights.items()}


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
    The input mapping is never modified. Names of the plan's other naming schemes are read as
    the canonical tensors they stand for (``Plan.alias_of``), reshaped where the scheme stores
    them in another shape (timm's ConvNeXt ``gamma``, a vector); there, the tensor must have the
    scheme's shape.

    Returns:
        ``{name: np.ndarray}`` in the plan's order, holding only canonical names of the plan.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"{source}: expected a mapping of name -> array, got {type(weights).__name__}")
    expected = plan.params
    arrays: dict[str, np.ndarray] = {}
    unexpected, mismatched, not_float, seen = [], [], [], {}
    for given, value in weights.items():
        if given.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            continue
        alias = plan.alias_of(given)  # another name the plan declares (plan.aliases, plan.param_aliases)
        name = given if alias is None else alias.canonical
        if name in seen:
            raise WeightsError(f"{source}: {seen[name]!r} and {given!r} are the same tensor {name!r} of "
                               f"{plan.spec.name!r}; give it once", (), (given,), ())
        seen[name] = given
        if name not in expected:
            unexpected.append(name)
            continue
        array = np.asarray(value)
        if alias is not None and alias.shape != expected[name].shape:  # stored in another shape there
            if array.shape != alias.shape:
                mismatched.append(f"{given} (expected {alias.shape}, found {array.shape}: {alias.scheme}'s name "
                                  f"for {name}, which is {expected[name].shape})")
                continue
            array = array.reshape(expected[name].shape)  # a view: the same values in the same order
        if array.shape != expected[name].shape:
            mismatched.append(f"{name} (expected {expected[name].shape}, found {array.shape})")
        elif not is_float_dtype(array.dtype):
            not_float.append(f"{name} (dtype {array.dtype})")
        else:
            arrays[name] = array
    missing = [name for name in expected if name not in seen]
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
        elif scheme == "trunc_normal":  # torch's trunc_normal_(std=scale): cut at -2 and 2 (absolute)
            out[name] = np.clip(rng.standard_normal(info.shape) * scale, -2.0, 2.0).astype(np.float32)
        elif scheme == "constant":
            out[name] = np.full(info.shape, scale, np.float32)
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
        elif role in ("bn_weight", "ln_weight", "layer_scale"):  # a layer scale of O(1), not 1e-6: the branch counts
            w = rng.uniform(0.5, 1.5, info.shape)
        elif role == "complex_weight":
            w = rng.standard_normal(info.shape) * 0.5
        elif role == "bn_var":
            w = rng.uniform(0.5, 2.0, info.shape)
        else:  # biases and running means
            w = rng.uniform(-0.5, 0.5, info.shape)
        out[name] = w.astype(np.float32)
    return out


# --------------------------------------------------------------------------- the neutral file (.safetensors)

FORMAT_KEY = "resnet_multi.format"
"""Metadata key holding the neutral file's format version (a string, as safetensors requires)."""
FORMAT_VERSION = "1"
SPEC_KEY = "resnet_multi.spec"
"""Metadata key holding ``spec.to_json()``, so the file alone is enough to rebuild the model."""


def _canonical_arrays(weights: Mapping[str, object], source: str) -> dict[str, np.ndarray]:
    """Without a plan: string names, floating point arrays, known framework extras dropped."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"{source}: expected a mapping of name -> array, got {type(weights).__name__}")
    out, bad = {}, []
    for name, value in weights.items():
        if not isinstance(name, str):
            bad.append(f"{name!r} (name is not a string)")
            continue
        if name.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            continue
        array = np.asarray(value)
        if not is_float_dtype(array.dtype):
            bad.append(f"{name} (dtype {array.dtype})")
            continue
        out[name] = array
    if bad:
        raise WeightsError(f"{source}: {len(bad)} tensor(s) that are not floating point arrays: {_describe(bad)}")
    return out


def save_weights(path, weights: Mapping[str, object], spec=None, *, force: bool = True) -> None:
    """Write canonical ``weights`` to a neutral ``.safetensors`` file, with ``spec`` in its metadata.

    Tensors are written as they are (names, shapes and dtypes unchanged: float16 stays float16,
    bfloat16 (``ml_dtypes.bfloat16`` arrays) is stored as safetensors ``BF16``).
    With a spec, the weights are first checked against its plan (every missing, unexpected and
    mis-shaped tensor reported at once) and the spec's JSON is stored, so that ``load_weights``
    alone can rebuild the model. The file is written to a temporary file and renamed when
    complete (this is the one layer that does it: safetensors writes the temporary file in place),
    so a failure never leaves a partial file; it gets normal permissions (umask). The
    directory must exist: it is not created (FileNotFoundError naming it).

    Args:
        path: the output file (``.safetensors``).
        weights: canonical weights, ``{name: array}`` (``num_batches_tracked`` is dropped).
        spec: a ResNetSpec or preset name (optional, but without it the file cannot rebuild a model).
        force: overwrite an existing file (default True, as ``np.save``); False raises FileExistsError.
    Example:
        >>> rm.save_weights("r50.safetensors", rm.export_weights(model), spec="resnet50")
    """
    from safetensors.numpy import save_file

    from .formats.atomic import atomic_path

    path = Path(path)
    metadata = {FORMAT_KEY: FORMAT_VERSION}
    if spec is not None:
        from .zoo import resolve_spec

        spec = resolve_spec(spec)
        arrays = check_weights(make_plan(spec), weights, source=f"weights for {path}")
        metadata[SPEC_KEY] = spec.to_json()
    else:
        arrays = _canonical_arrays(weights, f"weights for {path}")
    # safetensors wants C-contiguous little-endian arrays; ascontiguousarray copies only when needed.
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    if not force and path.exists():  # checked before writing anything
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    with atomic_path(path, overwrite=force) as tmp:
        save_file(arrays, tmp, metadata=metadata)


def load_weights(path) -> tuple[dict[str, np.ndarray], "ResNetSpec | None"]:
    """Read canonical weights from a neutral ``.safetensors`` file, with the spec it stores (the
    reader of every format, ``rm.load_weights``, is ``resnet_multi.convert.load_weights``).

    Any safetensors file of canonical names is read (e.g. a timm ``model.safetensors``); the spec
    is None when the file has none. When it has one, the weights are checked against it.

    Returns:
        ``(weights, spec)``: ``{name: np.ndarray}`` (dtypes as stored; in the plan's order when
        the file has a spec) and a ResNetSpec or None.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable file of its format (unknown suffix, truncated, corrupt), written by a newer format
            version, or an invalid spec in the metadata (the message names the file; CheckpointError for
            the other formats).
        WeightsError: the tensors do not fit the stored spec.
    Example:
        >>> weights, spec = rm.load_weights("r50.safetensors")
    """
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != NEUTRAL_SUFFIX:  # another format: convert.load_weights (rm.load_weights) reads it
        raise ValueError(f"{path}: resnet_multi.weights.load_weights reads the neutral {NEUTRAL_SUFFIX} file only; "
                         f"rm.load_weights (resnet_multi.convert.load_weights) reads every format")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        try:
            # pread, not mmap: mapped file pages would count in RSS beside the arrays (2x memory)
            reader = safe_open(os.fspath(path), framework="np", backend="pread")
        except TypeError:  # safetensors < 0.8 has no backend option
            reader = safe_open(os.fspath(path), framework="np")
        with reader as f:
            # the stored spec is untrusted: checked and sized (resnet_multi.limits) before any tensor is read
            try:
                plan, spec = _stored_plan(path, f.metadata() or {})
            except ValueError as exc:
                raise _StoredSpecError(exc) from None
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except _StoredSpecError as refused:  # its message names the file already
        raise refused.args[0] from None
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError/ValueError)
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if spec is not None:
        return check_weights(plan, weights, source=str(path)), spec
    return _canonical_arrays(weights, str(path)), None


class _StoredSpecError(Exception):
    """Carries the stored spec's own error past the reader's catch-all."""


def _stored_plan(path: Path, metadata: Mapping[str, str]):
    """``(plan, spec)`` of the spec a neutral file stores, or ``(None, None)``; a ValueError naming the
    file if the version is newer, the spec invalid, or its network above ``resnet_multi.limits``."""
    from .limits import LimitError
    from .spec import ResNetSpec

    version = metadata.get(FORMAT_KEY)
    if version is not None and version != FORMAT_VERSION:
        raise ValueError(f"{path}: neutral format version {version!r}; this resnet_multi reads version "
                         f"{FORMAT_VERSION!r} (upgrade resnet_multi)")
    if SPEC_KEY not in metadata:
        return None, None
    try:
        spec = ResNetSpec.from_dict(json.loads(metadata[SPEC_KEY]))
    except ValueError as exc:  # json.JSONDecodeError and SpecError are ValueErrors
        # A plain ValueError: the file is bad, not the caller's arguments.
        raise ValueError(f"{path}: invalid spec in the metadata ({exc})") from None
    try:
        return make_plan(spec), spec
    except LimitError as exc:
        raise LimitError(f"{path}: the spec stored in the file: {exc}") from None
