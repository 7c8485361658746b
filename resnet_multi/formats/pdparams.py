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

import math
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


def _data_bytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` holds (refusing what is not a shape or a plain dtype)."""
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"unexpected array shape {shape!r} in the pickle")
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing an array of Python objects (dtype {dtype}) in the pickle")
    return math.prod(shape) * dtype.itemsize


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: valid only as ``_reconstruct``'s first argument.
    Calling it, as ``ndarray(shape, dtype)``, would allocate uninitialized memory of any size."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing numpy.ndarray(...) in the pickle (an array not filled from the file)")


_NDARRAY = _NdarrayType()


class _FilledArray(np.ndarray):
    """An array under construction by the unpickler. numpy pickles an array as an empty
    ``_reconstruct(ndarray, (0,), b'b')`` then fills it with ``__setstate__``; this one records
    that it was filled, from the file's bytes, exactly to its declared size, within the bytes the
    file has in all (``reader``: the SafeUnpickler that made it)."""

    filled = False
    reader: "SafeUnpickler"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected array state in the pickle")
        shape, dtype, _, data = state[-4:]
        if not isinstance(data, (bytes, bytearray, str)):
            raise pickle.UnpicklingError(f"array data is a {type(data).__name__}, not bytes, in the pickle")
        expected = _data_bytes(shape, dtype)
        if len(data) != expected:
            raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {np.dtype(dtype)} needs {expected:,} "
                                         f"bytes; the file gives {len(data):,}")
        self.reader.count_bytes(expected)
        super().__setstate__(state)
        self.filled = True


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as numpy's own pickles call it: an empty ndarray, to be filled."""
    if subtype is not _NDARRAY or _data_bytes(shape, np.dtype(dtype) if not isinstance(dtype, bytes) else "b"):
        raise pickle.UnpicklingError(f"unexpected _reconstruct({shape!r}, ...) in the pickle (numpy writes an "
                                     "empty array, then fills it from the file)")
    return np.ndarray.__new__(_FilledArray, (0,), "b")


def _frombuffer(buffer, dtype, shape, order):
    """numpy's ``_frombuffer`` (pickle protocol 5), with the buffer's size checked against the shape."""
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("unexpected _frombuffer(...) in the pickle")
    expected = _data_bytes(shape, dtype)
    if len(buffer) != expected:
        raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {np.dtype(dtype)} needs {expected:,} "
                                     f"bytes; the file gives {len(buffer):,}")
    return np.frombuffer(buffer, dtype).reshape(shape, order=order).copy(order=order)


# What a .pdparams pickle may reference: numpy arrays, dtypes and scalars, ordered dicts, tuples
# (paddle.save's `(name, array)` for tensors), protocol 2's bytes and the eval above. Anything
# else is refused, so loading a file never runs code from it (as torch.load(weights_only=True)).
# Every array must be filled from the file's own bytes, to exactly its declared size (_FilledArray,
# _frombuffer): numpy's _reconstruct or ndarray(...) alone would give uninitialized memory of any size.
# Protocol 2 names the builtins module `__builtin__` (Python 2's name; pickle's fix_imports maps
# it back only inside Unpickler.find_class, after this table is asked).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): None,
    ("builtins", "tuple"): tuple,
    ("__builtin__", "tuple"): tuple,
    ("builtins", "eval"): _dense_tensor_data,
    ("__builtin__", "eval"): _dense_tensor_data,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): None,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): None,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): None,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a ``.pdparams`` file may hold (``_SAFE_GLOBALS``) and refuses
    any other global with ``pickle.UnpicklingError``, before anything from the file runs."""

    def __init__(self, file, *args, budget: int | None = None, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._arrays: list[_FilledArray] = []
        self._budget = budget
        self._bytes = 0

    def count_bytes(self, n: int) -> None:
        """Refuse arrays holding more bytes in all than the file has: a pickle may name one chunk of
        its bytes many times (its memo), which would fill any amount of memory from a small file."""
        self._bytes += n
        if self._budget is not None and self._bytes > self._budget:
            raise pickle.UnpicklingError(f"the arrays hold more bytes ({self._bytes:,} so far) than the file "
                                         f"has ({self._budget:,})")

    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a tensor type)")
        replacement = _SAFE_GLOBALS[(module, name)]
        if replacement is _reconstruct:  # remember every array made, to check that each was filled
            def reconstruct(*args):
                array = _reconstruct(*args)
                array.reader = self
                self._arrays.append(array)
                return array
            return reconstruct
        if replacement is _frombuffer:
            def frombuffer(buffer, dtype, shape, order):
                array = _frombuffer(buffer, dtype, shape, order)
                self.count_bytes(array.nbytes)
                return array
            return frombuffer
        return replacement if replacement is not None else super().find_class(module, name)

    def check_filled(self) -> None:
        """Refuse the file if an array it made was never filled from its bytes."""
        empty = sum(not array.filled for array in self._arrays)
        if empty:
            raise pickle.UnpicklingError(f"{empty} array(s) made but never filled from the file's bytes")


WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")
"""Keys a training script saves its state_dict under (``paddle.save({'model': sd, 'epoch': 3})``),
read as torch checkpoints are: the first of them that holds a dict of arrays is the state_dict."""


def _unwrapped(obj: dict) -> dict:
    """The state_dict of ``obj``: ``obj`` itself, or the dict of arrays under a ``WRAPPER_KEYS`` key when
    ``obj`` holds no arrays of its own (the wrapper's other entries, an epoch or an optimizer, are left)."""
    def arrays(value):
        return isinstance(value, np.ndarray) or (isinstance(value, tuple) and len(value) == 2
                                                and isinstance(value[1], np.ndarray))

    if any(arrays(value) for value in obj.values()):
        return dict(obj)
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and any(arrays(value) for value in inner.values()):
            return dict(inner)
    return dict(obj)


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``paddle.save``d state_dict, under Paddle's names, in the file's order.

    What ``paddle.load(path, return_numpy=True)`` gives for a state_dict, without Paddle (or the
    state_dict a training script wrapped: ``{'model': state_dict, 'epoch': 3}``, ``WRAPPER_KEYS``): the name
    table dropped, ``(name, array)`` tuples unwrapped, sliced big tensors joined, and uint16
    arrays (Paddle's bfloat16) as ``ml_dtypes.bfloat16`` arrays, bit for bit. No code from the
    file runs (module doc).

    Every array must be filled from the file's own bytes, to exactly its declared size, and the
    arrays together may not hold more bytes than the file: a pickle can otherwise make numpy
    allocate uninitialized memory of any size, or name one array many times.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Paddle state_dict (corrupt, truncated, not a
            dict of arrays, a global outside the allow-list, an array not filled from the file's
            bytes, more tensor bytes than the file has); the message names the file.
    Example:
        >>> state = pdparams.read("resnet50.pdparams")  # {"conv1.weight": ..., "bn1._mean": ..., ...}
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Paddle checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            unpickler = SafeUnpickler(f, encoding="latin1", budget=os.fstat(f.fileno()).st_size)
            obj = unpickler.load()
            unpickler.check_filled()
    except Exception as exc:  # truncated/corrupt pickles raise many types (EOFError, KeyError, ...)
        reason = " ".join(str(exc).split())  # one line: some pickle errors span two
        raise ValueError(f"{path}: not a readable Paddle .pdparams file ({type(exc).__name__}: {reason})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a Paddle state_dict (expected a dict of arrays, found {type(obj).__name__})")
    obj = _unwrapped(obj)
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
        if isinstance(value, _FilledArray):
            value = value.view(np.ndarray)
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
    total, size = sum(array.nbytes for array in out.values()), os.path.getsize(path)
    if total > size:  # one array under many names (the pickle's memo): each would be copied on the way
        raise ValueError(f"{path}: its tensors declare {total:,} bytes but the file has {size:,}; "
                         "a checkpoint stores every tensor's bytes")
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
