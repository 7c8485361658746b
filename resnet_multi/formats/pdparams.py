"""Paddle's ``.pdparams`` files, read and written with numpy and pickle alone (no ``import paddle``).

A ``.pdparams`` file is a pickle of a dict ``{state_dict name: array}``, as ``paddle.save`` writes
it. This module works on exactly that: Paddle's own names and layouts (``bn1._mean``, a Linear
weight stored (in, out)); translating them to canonical names is the Paddle backend's business.

Reading is safe: the pickle is read with an allow-list of numpy types (``_SAFE_GLOBALS``), so a
file never runs code (as ``torch.load(weights_only=True)``). What ``paddle.save`` adds beside the
tensors is undone as ``paddle.load`` undoes it: the structured-name table is dropped, tensors
pickled as ``(internal name, array)`` tuples are unwrapped, and tensors split into slices (pickle
protocol 2/3 cannot hold an object over 4 GiB) are joined again.

bfloat16: Paddle keeps it in numpy as uint16 holding the bits. ``paddle.save`` writes a bfloat16
tensor as a uint16 array and ``paddle.load`` turns a uint16 array back into bfloat16 (Paddle has
no uint16 tensors), so in a ``.pdparams`` file uint16 means bfloat16. Here it is
``ml_dtypes.bfloat16`` (the core's bfloat16), same bits, both ways.
"""

from __future__ import annotations

import os
import pickle
from typing import Mapping

import numpy as np

NAME_TABLE = "StructuredToParameterName@@"
"""Key paddle.save adds beside a Layer's tensors: structured name -> Paddle's internal parameter name."""

BIG_PARAM_INFO = "UnpackBigParamInfor@@"
"""Key of protocol 2/3 files saying how tensors over 1 GiB were split into slices (Paddle's spelling)."""

BFLOAT16_AS = np.uint16
"""The numpy dtype a ``.pdparams`` file stores bfloat16 tensors as (their bits)."""

PROTOCOL = 4
"""The pickle protocol written: ``paddle.save``'s default (no slicing of big tensors)."""


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
# Protocol 2 names the builtins module `__builtin__` (Python 2's name; pickle's fix_imports maps
# it back only inside Unpickler.find_class, after this table is asked).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): None,
    ("builtins", "tuple"): tuple,
    ("__builtin__", "tuple"): tuple,
    ("builtins", "eval"): _dense_tensor_data,
    ("__builtin__", "eval"): _dense_tensor_data,
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


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a ``.pdparams`` file may hold (``_SAFE_GLOBALS``) and refuses
    any other global with ``pickle.UnpicklingError``, before anything from the file runs."""

    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a tensor type)")
        replacement = _SAFE_GLOBALS[(module, name)]
        return replacement if replacement is not None else super().find_class(module, name)


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``paddle.save``d state_dict, under Paddle's names, in the file's order.

    What ``paddle.load(path, return_numpy=True)`` gives for a state_dict, without Paddle: the name
    table dropped, ``(name, array)`` tuples unwrapped, sliced big tensors joined, and uint16
    arrays (Paddle's bfloat16) as ``ml_dtypes.bfloat16`` arrays, bit for bit. No code from the
    file runs (module doc).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Paddle state_dict (corrupt, truncated, not a
            dict of arrays, a global outside the allow-list); the message names the file.
    Example:
        >>> state = pdparams.read("resnet50.pdparams")  # {"conv1.weight": ..., "bn1._mean": ..., ...}
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Paddle checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # truncated/corrupt pickles raise many types (EOFError, KeyError, ...)
        raise ValueError(f"{path}: not a readable Paddle .pdparams file "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a Paddle state_dict (expected a dict of arrays, found {type(obj).__name__})")
    obj = dict(obj)
    obj.pop(NAME_TABLE, None)
    slices = obj.pop(BIG_PARAM_INFO, None)
    try:
        if slices:  # reassembled as paddle.load does
            for key, info in slices.items():
                obj[key] = np.concatenate([obj.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    except Exception as exc:
        raise ValueError(f"{path}: malformed {BIG_PARAM_INFO} entry ({exc})") from None
    out, bad = {}, []
    for name, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # paddle.save of a nested dict pickles a tensor as (internal name, array)
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            bad.append(f"{name!r} ({type(value).__name__})")
            continue
        if value.dtype == BFLOAT16_AS:  # Paddle's own numpy form of bfloat16 (module doc)
            import ml_dtypes  # only now: needed for bfloat16 files alone

            value = value.view(ml_dtypes.bfloat16)
        out[name] = value
    if bad:
        raise ValueError(f"{path}: not a Paddle state_dict: {len(bad)} entries are not named arrays: "
                         f"{', '.join(bad[:10])}")
    return out


def write(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    """Write ``state`` (Paddle's names and layouts) as ``paddle.save(state, path, protocol=4)`` does
    for a dict of numpy arrays, byte for byte, so ``paddle.load`` + ``set_state_dict`` accept it.

    Arrays are written C-ordered in their own dtypes; ``ml_dtypes.bfloat16`` arrays as uint16 bits
    (as paddle.save writes a bfloat16 tensor), so paddle.load gives bfloat16 tensors. The file is
    written in place, at ``path``: making the write atomic is the caller's (``formats.atomic``).

    Example:
        >>> with atomic_path("r18.pdparams") as tmp:
        ...     pdparams.write(tmp, {"fc.weight": w.T, "bn1._mean": mean, ...})
    """
    arrays = {}
    for name, value in state.items():
        array = np.ascontiguousarray(value)
        if array.dtype.name == "bfloat16":
            array = array.view(BFLOAT16_AS)  # as paddle.save writes a bfloat16 tensor
        arrays[name] = array
    if not arrays:  # paddle.save takes an empty dict for a Layer's state_dict and adds its (empty) name table
        arrays = {NAME_TABLE: {}}
    with open(path, "wb") as f:
        # paddle.save's own pickler for a dict of numpy arrays (its dispatch table only adds Paddle's
        # tensor types, which a dict of arrays does not hold)
        pickle.Pickler(f, PROTOCOL).dump(arrays)
