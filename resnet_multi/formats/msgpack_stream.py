"""Flax's ``.msgpack`` state dicts, read and written as a stream with msgpack and numpy alone (no JAX, no Flax).

A Flax msgpack file is ``flax.serialization.msgpack_serialize`` of a nested dict of arrays, e.g.
``nnx.to_pure_dict(nnx.state(model))``. This module works on exactly that: Flax's own names and
layouts (``conv1.kernel`` HWIO, ``bn1.scale``); translating them to canonical names is the Flax
backend's business. Trees are nested dicts with string keys; ``flatten``/``nested`` turn them into
and back from ``{"a.b.c": array}``.

The encoding, as Flax writes it (``flax/serialization.py``): every array is a msgpack ext record
of type 1 holding ``msgpack((shape, dtype name, C-order bytes))`` (bfloat16 by its name,
``"bfloat16"``); numpy scalars are type 3, complex numbers type 2. msgpack caps one object at
2**31 - 1 bytes, so an array over ``MAX_CHUNK_SIZE`` (1 GiB) becomes a map marked ``CHUNKED``
holding its shape and its flat chunks. Maps are written with their keys sorted (msgpack_serialize
copies the tree with ``jax.tree_util`` first, which sorts every dict's keys).

Memory: the reader streams the file (``read_encoded``) and decodes one array at a time; the
writer encodes one array at a time. Neither holds the whole file's bytes beside the arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import msgpack
import numpy as np

CHUNKED = "__msgpack_chunked_array__"
"""The key marking a map that holds one array in chunks (part of the file format, as Flax writes it)."""

MAX_CHUNK_SIZE = 2**30
"""Arrays of more bytes are written in chunks of at most this many bytes (``flax.serialization.MAX_CHUNK_SIZE``)."""

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
"""msgpack ext type codes of Flax's encoding: an array, a Python complex, a numpy scalar."""

READ_SIZE = 1 << 20
"""Reads from the file in 1 MiB pieces (msgpack's default of 16 KiB means ~15k read calls for ResNet-152)."""


# --------------------------------------------------------------------------- trees


def nested(flat: Mapping[str, Any]) -> dict:
    """{'a.b.c': x} -> {'a': {'b': {'c': x}}} (string keys throughout, as msgpack state dicts)."""
    root: dict = {}
    for path, array in flat.items():
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    return root


def flatten(tree, path: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a.b': x}."""
    if not isinstance(tree, dict):
        return {path: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{path}.{key}" if path else str(key)))
    return flat


# --------------------------------------------------------------------------- reading


def read_encoded(path: str | os.PathLike):
    """The file's msgpack object with every array still encoded (``msgpack.ExtType`` leaves).

    Streamed from the file: msgpack's C unpacker keeps only the object it is decoding in its
    buffer, so neither the whole file's bytes nor a second decoded copy is ever held. Same
    strictness as ``msgpack.unpackb``: the file must hold exactly one object, and no length may
    claim more than the file's size.

    Raises:
        msgpack.OutOfData: an empty or truncated file; msgpack's other errors on corrupt input.
        ValueError: data after the object.
    """
    path = Path(path)
    limit = max(path.stat().st_size, READ_SIZE)
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=READ_SIZE, max_buffer_size=limit, raw=False,
                                    strict_map_key=False)  # raw/strict_map_key as flax's msgpack_restore
        tree = unpacker.unpack()  # msgpack.OutOfData on an empty or truncated file
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            return tree
    raise ValueError("extra data after the state dict")


def pop_leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) for every leaf of ``tree`` in file order, each removed from the tree as
    it is yielded: the caller's decoded copy replaces the encoded bytes instead of adding to
    them. A chunked-array map counts as one leaf."""
    for key in list(tree):
        value = tree.pop(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and CHUNKED not in value:
            yield from pop_leaves(value, dotted)
        else:
            yield dotted, value


def _dtype(name: bytes):
    """The dtype Flax's reader makes of a stored dtype name: numpy's, or ml_dtypes' bfloat16
    (``jnp.bfloat16`` is it)."""
    if name == b"bfloat16":
        import ml_dtypes  # only now: needed for bfloat16 files alone

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _array(data: bytes) -> np.ndarray:
    """An array record's value (a read-only view of ``data``'s bytes, as Flax's reader gives it)."""
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=_dtype(dtype_name), count=-1, offset=0).reshape(shape, order="C")


def _ext(code: int, data: bytes):
    """An ext record decoded as Flax's ``_msgpack_ext_unpack`` decodes it (other codes stay ExtType)."""
    if code == EXT_NDARRAY:
        return _array(data)
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    if code == EXT_NPSCALAR:
        return _array(data)[()]
    return msgpack.ExtType(code, data)


def _decoded(value):
    """``value`` (from ``read_encoded``) with every ext record inside it decoded."""
    if isinstance(value, msgpack.ExtType):
        return _ext(value.code, value.data)
    if isinstance(value, dict):
        return {key: _decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value


def _unchunk(chunked: dict) -> np.ndarray:
    """The array a chunked-array map holds (its shape and chunks are maps keyed "0", "1", ...)."""
    shape = tuple(chunked["shape"][str(i)] for i in range(len(chunked["shape"])))
    chunks = chunked["chunks"]
    return np.concatenate(tuple(chunks[str(i)] for i in range(len(chunks)))).reshape(shape)


def decode_leaf(path: str | os.PathLike, key: str, leaf):
    """A leaf of ``read_encoded``'s tree as ``flax.serialization.msgpack_restore`` decodes it: an
    ext record becomes an array (or a numpy scalar, or a complex), a chunked-array map one array;
    other leaves are returned as they are.

    Raises:
        ValueError: a corrupt record; the message names the file and ``key``.
    """
    if not isinstance(leaf, (msgpack.ExtType, dict)):
        return leaf
    try:
        value = _decoded(leaf)
        return _unchunk(value) if isinstance(value, dict) and CHUNKED in value else value
    except Exception as error:  # a corrupt array record: msgpack/numpy raise several types
        raise ValueError(f"{path}: {key} is not a readable Flax array ({type(error).__name__}: {error})") from None


def iter_arrays(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """``(dotted Flax path, array)`` for every array of a Flax msgpack state dict, in the file's order.

    The file is streamed and its arrays decoded one at a time, each encoded record dropped as its
    array is yielded: with a caller that converts and keeps each array, the peak is about the
    arrays plus a few copies of the largest. Arrays are read-only views of their record's bytes
    (as ``msgpack_restore`` gives them); copy one to write to it.

    Raises:
        ValueError: the file is not a msgpack state dict (corrupt, truncated, not a nested dict of
            arrays, a leaf that is not an array); the message names the file (and the leaf).
    """
    path = Path(path)
    try:
        tree = read_encoded(path)
    except Exception as error:  # msgpack raises several types for corrupt/truncated input
        raise ValueError(f"{path}: not a readable Flax msgpack file ({type(error).__name__}: {error})") from None
    if not isinstance(tree, dict) or not tree:
        raise ValueError(f"{path}: expected a nested dict of arrays (a Flax state dict), "
                         f"found {type(tree).__name__}")
    for key, leaf in pop_leaves(tree):
        value = decode_leaf(path, key, leaf)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: {key} is a {type(value).__name__}, expected an array")
        yield key, value


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{dotted Flax path: array}`` of a Flax msgpack state dict (``iter_arrays`` collected); ``nested``
    makes it the tree ``msgpack_restore`` gives.

    Example:
        >>> state = msgpack_stream.read("r18.msgpack")  # {"conv1.kernel": (7, 7, 3, 64) array, ...}
    """
    return dict(iter_arrays(path))


# --------------------------------------------------------------------------- writing


def _array_record(array: np.ndarray, key: str) -> bytes:
    """Flax's record of one array: ``msgpack((shape, dtype name, C-order bytes))``."""
    if array.dtype.hasobject or array.dtype.isalignedstruct:
        raise ValueError(f"{key}: object and structured dtypes cannot be stored (dtype {array.dtype})")
    return msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)


def encode_leaf(value, key: str = "") -> bytes:
    """The bytes ``flax.serialization.msgpack_serialize`` writes for ``value`` inside a tree: an array
    record, or above ``MAX_CHUNK_SIZE`` bytes a chunked-array map; a numpy scalar as Flax's scalar
    record. Anything with ``__array__`` is taken as an array.

    Raises:
        TypeError: ``value`` is no array (``key`` names it).
    """
    if isinstance(value, np.generic):
        return msgpack.packb(msgpack.ExtType(EXT_NPSCALAR, _array_record(np.asarray(value), key)))
    if not isinstance(value, np.ndarray):
        if not hasattr(value, "__array__"):
            raise TypeError(f"{key}: expected an array, found {type(value).__name__}")
        value = np.asarray(value)
    if value.size * value.dtype.itemsize <= MAX_CHUNK_SIZE:
        return msgpack.packb(msgpack.ExtType(EXT_NDARRAY, _array_record(value, key)))
    # As flax's _chunk: the map's keys in this order (it is made after the tree's keys were sorted).
    size = max(1, int(MAX_CHUNK_SIZE / value.dtype.itemsize))
    flat = value.reshape(-1)
    chunked = {CHUNKED: True, "shape": {str(i): n for i, n in enumerate(value.shape)},
               "chunks": {str(i): msgpack.ExtType(EXT_NDARRAY, _array_record(flat[start:start + size], key))
                          for i, start in enumerate(range(0, flat.size, size))}}
    return msgpack.packb(chunked, strict_types=True)


def _write_map(f, packer: msgpack.Packer, node: Mapping, where: str) -> None:
    entries = sorted(node.items(), key=lambda entry: entry[0])  # items() once, as the map is written
    for (key, _), (next_key, _) in zip(entries, entries[1:]):
        if key == next_key:
            raise ValueError(f"{where}{key}: two entries of the map have this key")
    f.write(packer.pack_map_header(len(entries)))
    for key, value in entries:
        f.write(packer.pack(key))
        if isinstance(value, Mapping):
            _write_map(f, packer, value, f"{where}{key}.")
        else:
            f.write(encode_leaf(value, f"{where}{key}"))


def dump(tree: Mapping, f) -> None:
    """Write ``tree`` (a nested mapping of arrays, string keys) to the binary file ``f`` as
    ``flax.serialization.msgpack_serialize(tree)`` writes it, byte for byte, one array at a time.

    Each map's ``items()`` is called once, when that map is written, and its arrays are encoded
    right then: a mapping that makes its arrays on demand (renaming, transposing) keeps only one
    map's arrays alive and sees them fetched in the order the file is written.

    Raises:
        TypeError: a leaf that is no array. ValueError: an object or structured dtype, or a map
            whose ``items()`` gives a key twice.
    """
    _write_map(f, msgpack.Packer(), tree, "")


def write(path: str | os.PathLike, tree: Mapping) -> None:
    """``dump`` ``tree`` to the file ``path``, written in place: making the write atomic is the
    caller's (``formats.atomic``).

    Example:
        >>> with atomic_path("r18.msgpack") as tmp:
        ...     msgpack_stream.write(tmp, nested({"conv1.kernel": kernel, "bn1.scale": scale, ...}))
    """
    with open(path, "wb") as f:
        dump(tree, f)
