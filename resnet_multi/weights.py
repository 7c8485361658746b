"""Canonical weights: a dict ``name -> np.ndarray`` with torchvision's names and PyTorch's layout.

This module validates such a dict against a plan (all problems reported at once), makes the
initial weights every backend starts from (so one seed gives the same model in every
framework), makes randomized weights for parity checks, and reads and writes the neutral
``.safetensors`` file (canonical names and layout, the spec's JSON in the metadata).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ._lazy import np
from .plan import Plan, make_plan

if TYPE_CHECKING:
    from .spec import ResNetSpec

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
    unexpected, mismatched, not_float, seen = [], [], [], {}
    for given, value in weights.items():
        if given.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            continue
        name = plan.canonical_name(given)  # other names the plan declares (plan.aliases)
        if name in seen:
            raise WeightsError(f"{source}: {seen[name]!r} and {given!r} are the same tensor {name!r} of "
                               f"{plan.spec.name!r}; give it once", (), (given,), ())
        seen[name] = given
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


# --------------------------------------------------------------------------- the neutral file (.safetensors)

NEUTRAL_SUFFIX = ".safetensors"
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
        if not np.issubdtype(array.dtype, np.floating):
            bad.append(f"{name} (dtype {array.dtype})")
            continue
        out[name] = array
    if bad:
        raise WeightsError(f"{source}: {len(bad)} tensor(s) that are not floating point arrays: {_describe(bad)}")
    return out


def save_weights(path, weights: Mapping[str, object], spec=None, *, force: bool = True) -> None:
    """Write canonical ``weights`` to a neutral ``.safetensors`` file, with ``spec`` in its metadata.

    Tensors are written as they are (names, shapes and dtypes unchanged: float16 stays float16).
    With a spec, the weights are first checked against its plan (every missing, unexpected and
    mis-shaped tensor reported at once) and the spec's JSON is stored, so that ``load_weights``
    alone can rebuild the model. The file is written to a temporary file and renamed when
    complete, so a failure never leaves a partial file.

    Args:
        path: the output file (``.safetensors``).
        weights: canonical weights, ``{name: array}`` (``num_batches_tracked`` is dropped).
        spec: a ResNetSpec or preset name (optional, but without it the file cannot rebuild a model).
        force: overwrite an existing file (default True, as ``np.save``); False raises FileExistsError.
    Example:
        >>> rm.save_weights("r50.safetensors", rm.export_weights(model), spec="resnet50")
    """
    from safetensors.numpy import save_file

    from .io_util import atomic_path

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
    """Read a neutral ``.safetensors`` file: canonical weights and the spec stored with them.

    Any safetensors file of canonical names is read (e.g. a timm ``model.safetensors``); the spec
    is None when the file has none. When it has one, the weights are checked against it.

    Returns:
        ``(weights, spec)``: ``{name: np.ndarray}`` (dtypes as stored; in the plan's order when
        the file has a spec) and a ResNetSpec or None.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, truncated, written by a newer format version, or an
            invalid spec in the metadata (the message names the file).
        WeightsError: the tensors do not fit the stored spec.
    Example:
        >>> weights, spec = rm.load_weights("r50.safetensors")
    """
    from safetensors import safe_open

    from .spec import ResNetSpec

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        try:
            # pread, not mmap: mapped file pages would count in RSS beside the arrays (2x memory)
            reader = safe_open(os.fspath(path), framework="np", backend="pread")
        except TypeError:  # safetensors < 0.8 has no backend option
            reader = safe_open(os.fspath(path), framework="np")
        with reader as f:
            metadata = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError/ValueError)
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    version = metadata.get(FORMAT_KEY)
    if version is not None and version != FORMAT_VERSION:
        raise ValueError(f"{path}: neutral format version {version!r}; this resnet_multi reads version "
                         f"{FORMAT_VERSION!r} (upgrade resnet_multi)")
    spec = None
    if SPEC_KEY in metadata:
        try:
            spec = ResNetSpec.from_dict(json.loads(metadata[SPEC_KEY]))
        except ValueError as exc:  # json.JSONDecodeError and SpecError are ValueErrors
            # A plain ValueError: the file is bad, not the caller's arguments.
            raise ValueError(f"{path}: invalid spec in the metadata ({exc})") from None
    if spec is not None:
        return check_weights(make_plan(spec), weights, source=str(path)), spec
    return _canonical_arrays(weights, str(path)), None
