"""Paddle's native files (``.pdparams``): a safe reader of ``paddle.save``'s pickle (numpy types
only, never code from the file) and a writer through ``paddle.save``."""

from __future__ import annotations

import os
import pickle
from typing import Mapping

import numpy as np
import paddle

from resnet_multi import layout as L
from resnet_multi.io_util import atomic_path
from resnet_multi.weights import FRAMEWORK_EXTRAS

from .layout import LAYOUT


def _to_canonical(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """A file tensor's canonical name and layout, by the layout's plan-free translation (leaf and
    rank; a leaf of another rank renamed, not transposed). A name no role has is kept as it is,
    so nothing is dropped silently: a name that is not canonical surfaces as "unexpected" in
    check_weights."""
    translated = L.file_to_canonical(LAYOUT, name, array, loose=True)
    if translated is None:
        return name, array
    new, out = translated
    return new, (out if out is array else np.ascontiguousarray(out))


def _to_paddle(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """The inverse of ``_to_canonical``."""
    translated = L.canonical_to_file(LAYOUT, name, array, loose=True)
    if translated is None:
        return name, array
    new, out = translated
    return new, (out if out is array else np.ascontiguousarray(out))


# Keys paddle.save adds beside the tensors; bookkeeping, not weights.
_NAME_TABLE = "StructuredToParameterName@@"  # structured name -> Paddle's internal parameter name
_BIG_PARAM_INFO = "UnpackBigParamInfor@@"  # protocol 2/3: how >1 GiB tensors were split into slices
# Paddle keeps bfloat16 in numpy as uint16 holding the bits: paddle.save writes a bfloat16 tensor
# as a uint16 array, and paddle.load / paddle.to_tensor turn a uint16 array back into bfloat16
# (paddle.to_tensor(np.uint16 array).dtype is paddle.bfloat16: Paddle has no uint16 tensors). So in
# a .pdparams file uint16 means bfloat16; here it is ml_dtypes.bfloat16 (the core's bfloat16), same bits.
_BFLOAT16_AS = np.uint16


def _dense_tensor_data(expression, namespace):
    """paddle.save pickles a bare DenseTensor as ``eval('data', {'data': array})``; give the array
    without evaluating anything."""
    if expression != "data" or not isinstance(namespace, dict) or not isinstance(namespace.get("data"), np.ndarray):
        raise pickle.UnpicklingError(f"unexpected eval({expression!r}, ...) in the pickle")
    return namespace["data"]


def _latin1_bytes(text, encoding="latin1"):
    """Pickle protocol 2 (old paddle.save / fluid.save_dygraph) writes bytes as
    ``_codecs.encode(text, 'latin1')``; only that encoding is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode(..., {encoding!r}) in the pickle")
    return text.encode("latin1")


# What a .pdparams pickle may reference: numpy arrays, dtypes and scalars, ordered dicts, tuples
# (paddle.save's `(name, array)` for tensors), protocol 2's bytes and the eval above. Anything
# else is refused, so loading a file never runs code from it (as torch.load(weights_only=True)).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): None,
    ("builtins", "tuple"): tuple,
    ("builtins", "eval"): _dense_tensor_data,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): None,
    ("numpy", "dtype"): None,
    ("numpy.core.multiarray", "_reconstruct"): None,
    ("numpy.core.multiarray", "scalar"): None,
    ("numpy._core.multiarray", "_reconstruct"): None,
    ("numpy._core.multiarray", "scalar"): None,
    ("numpy.core.numeric", "_frombuffer"): None,
    ("numpy._core.numeric", "_frombuffer"): None,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a tensor type)")
        replacement = _SAFE_GLOBALS[(module, name)]
        return replacement if replacement is not None else super().find_class(module, name)


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays from a ``paddle.save``d state_dict (``.pdparams``).

    Names and layouts are translated by the layout (``LAYOUT``, no plan needed): ``_mean`` ->
    ``running_mean``, ``_variance`` -> ``running_var``, 2-D ``*.weight`` (Linear, stored (in, out))
    transposed to (out, in). Other names are kept as they are. The pickle is read with an
    allow-list of numpy types, so a file never runs code. Dtypes are kept; Paddle's bfloat16
    (uint16 arrays, see ``_BFLOAT16_AS``) becomes ``ml_dtypes.bfloat16``, bit for bit.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Paddle state_dict (corrupt, truncated, not a
            dict of arrays); the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Paddle checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # truncated/corrupt pickles raise many types (EOFError, KeyError, ...)
        raise ValueError(f"{path}: not a readable Paddle .pdparams file "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a Paddle state_dict (expected a dict of arrays, found {type(obj).__name__})")
    obj = dict(obj)
    obj.pop(_NAME_TABLE, None)
    slices = obj.pop(_BIG_PARAM_INFO, None)
    try:
        if slices:  # reassembled as paddle.load does
            for key, info in slices.items():
                obj[key] = np.concatenate([obj.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    except Exception as exc:
        raise ValueError(f"{path}: malformed {_BIG_PARAM_INFO} entry ({exc})") from None
    out, bad = {}, []
    for name, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # paddle.save of a nested dict pickles a tensor as (internal name, array)
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            bad.append(f"{name!r} ({type(value).__name__})")
            continue
        if value.dtype == _BFLOAT16_AS:  # Paddle's own numpy form of bfloat16 (see _BFLOAT16_AS)
            import ml_dtypes

            value = value.view(ml_dtypes.bfloat16)
        new, array = _to_canonical(name, value)
        if new in out:
            raise ValueError(f"{path}: {name!r} and another tensor both map to canonical name {new!r}")
        out[new] = array
    if bad:
        raise ValueError(f"{path}: not a Paddle state_dict: {len(bad)} entries are not named arrays: "
                         f"{', '.join(bad[:10])}")
    return out


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``weights`` as a ``.pdparams`` file that ``paddle.load`` +
    ``set_state_dict`` accept: Paddle names (``_mean``, ``_variance``) and layout (Linear (in, out)).
    Dtypes are kept; bfloat16 is written as paddle.save writes it (uint16 bits), so paddle.load
    gives bfloat16 tensors. Written to a temporary file and renamed, so a failure never leaves a
    partial file."""
    state = {}
    for name, value in weights.items():
        if name.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            continue  # PyTorch's BN step counter: Paddle has none
        new, array = _to_paddle(name, np.asarray(value))
        array = np.ascontiguousarray(array)
        if array.dtype.name == "bfloat16":
            array = array.view(_BFLOAT16_AS)  # as paddle.save writes a bfloat16 tensor
        state[new] = array
    with atomic_path(path) as tmp:
        paddle.save(state, os.fspath(tmp), protocol=4)
