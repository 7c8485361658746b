"""Flax's native files (``.msgpack``): the nested state dict of ``nnx.state(model)`` as
``flax.serialization`` writes it, streamed in and out one tensor at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import msgpack
import numpy as np
from flax import serialization

from resnet_multi import layout as L
from resnet_multi.io_util import atomic_path

from .layout import LAYOUT


def _known(table) -> str:
    return ", ".join(sorted({f"{leaf} ({rank}-D)" for leaf, rank in table}))


def _canonical_to_flax(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """(dotted Flax path, array in Flax layout) for canonical ``name``, by the layout's plan-free
    translation (the name's last part and the tensor's rank)."""
    translated = L.canonical_to_file(LAYOUT, name, array)
    if translated is None:
        raise ValueError(f"{name}: no Flax rule for a {array.ndim}-D tensor called {name.rpartition('.')[2]!r} "
                         f"(known: {_known(L.file_rules(LAYOUT)['to_native'])})")
    return translated


def _flax_to_canonical(path: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """(canonical name, array in PyTorch layout) for the dotted Flax ``path``."""
    translated = L.file_to_canonical(LAYOUT, path, array)
    if translated is None:
        raise ValueError(f"{path}: no rule maps a {array.ndim}-D Flax variable called {path.rpartition('.')[2]!r} "
                         f"to a canonical name (known: {_known(L.file_rules(LAYOUT)['to_canonical'])})")
    return translated


# How flax.serialization marks an array it split into chunks (arrays over its MAX_CHUNK_SIZE of
# 1 GiB, because msgpack caps one object at 2**31 - 1 bytes): the leaf becomes a dict holding this
# key. It is part of the file format (msgpack_serialize writes it, msgpack_restore reassembles it),
# not an API: the reader only needs it to treat such a dict as one array, not as a module.
# Pinned by test_chunked_arrays_are_written_and_read_as_flax_does.
_CHUNKED = "__msgpack_chunked_array__"

# Reads from the file in 1 MiB pieces (msgpack's default of 16 KiB means ~15k read calls for ResNet-152).
_READ_SIZE = 1 << 20


def _nested(flat: Mapping[str, np.ndarray]) -> dict:
    """{'a.b.c': x} -> {'a': {'b': {'c': x}}} (string keys throughout, as msgpack state dicts)."""
    root: dict = {}
    for path, array in flat.items():
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    return root


def _flatten(tree, path: str = "") -> dict[str, object]:
    """{'a': {'b': x}} -> {'a.b': x}."""
    if not isinstance(tree, dict):
        return {path: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{path}.{key}" if path else str(key)))
    return flat


def _pop_leaves(tree: dict, prefix: str = ""):
    """(dotted key, leaf) for every leaf of ``tree`` in file order, each removed from the tree as
    it is yielded: the caller's converted copy replaces the encoded bytes instead of adding to
    them. A chunked-array dict counts as one leaf."""
    for key in list(tree):
        value = tree.pop(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and _CHUNKED not in value:
            yield from _pop_leaves(value, dotted)
        else:
            yield dotted, value


def _read_encoded(path: Path):
    """The file's msgpack object with every array still encoded (``msgpack.ExtType`` leaves).

    Streamed from the file: msgpack's C unpacker keeps only the object it is decoding in its
    buffer, so neither the whole file's bytes nor a second decoded copy is ever held (reading the
    bytes and calling ``msgpack_restore`` needed file + arrays = 2x, plus the converted copies).
    Same strictness as ``msgpack.unpackb``: the file must hold exactly one object, and no length
    may claim more than the file's size.
    """
    limit = max(path.stat().st_size, _READ_SIZE)
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=_READ_SIZE, max_buffer_size=limit, raw=False,
                                    strict_map_key=False)  # raw/strict_map_key as msgpack_restore
        tree = unpacker.unpack()  # msgpack.OutOfData on an empty or truncated file
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            return tree
    raise ValueError("extra data after the state dict")


def _decode(path: Path, key: str, leaf):
    """A leaf of ``_read_encoded``'s tree as ``flax.serialization.msgpack_restore`` decodes it:
    the leaf is re-encoded alone and handed to msgpack_restore (public API: Flax's own array,
    scalar, complex and chunk decoding; the cost is one extra copy of one tensor at a time)."""
    if not isinstance(leaf, (msgpack.ExtType, dict)):
        return leaf
    try:
        return serialization.msgpack_restore(msgpack.packb(leaf))
    except Exception as error:  # a corrupt array record: msgpack/numpy raise several types
        raise ValueError(f"{path}: {key} is not a readable Flax array ({type(error).__name__}: {error})") from None


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays (PyTorch layout) from a Flax msgpack state dict (as written by
    ``save_native``, or ``flax.serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model)))``).

    Names are translated by the layout alone (last key and rank), so no plan is needed; the
    result is in the file's order (Flax's sorted keys), not ``plan.params`` order. Memory:
    the file is streamed (``_read_encoded``) and its tensors are decoded and converted one at a
    time, each encoded record dropped as its canonical copy is made: the peak is about the
    checkpoint's size plus a few copies of the largest tensor.

    Raises:
        ValueError: the file is not a msgpack state dict (corrupt, truncated, not a dict of
            arrays), or holds a variable no rule translates; the message names the file.
    """
    path = Path(path)
    try:
        tree = _read_encoded(path)
    except Exception as error:  # msgpack raises several types for corrupt/truncated input
        raise ValueError(f"{path}: not a readable Flax msgpack file ({type(error).__name__}: {error})") from None
    if not isinstance(tree, dict) or not tree:
        raise ValueError(f"{path}: expected a nested dict of arrays (a Flax state dict), "
                         f"found {type(tree).__name__}")
    out = {}
    for key, leaf in _pop_leaves(tree):
        value = _decode(path, key, leaf)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: {key} is a {type(value).__name__}, expected an array")
        try:
            name, array = _flax_to_canonical(key, value)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        # a copy: writable, C-ordered, and not a view keeping the decoded buffer alive
        out[name] = np.array(array, order="C", copy=True)
    return out


def _name_tree(names) -> dict:
    """Canonical names as a nested dict of their dotted parts, each leaf the full canonical name:
    the file's modules and how many entries each has, known before any tensor is touched (a
    rule renames only a name's last part)."""
    root: dict = {}
    for name in names:
        node = root
        *parents, leaf = name.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name}: {'.'.join(parents[:depth + 1])} is a tensor, not a module")
        if leaf in node:
            raise ValueError(f"{name}: it is a module (other names extend it), not a tensor")
        node[leaf] = name
    return root


def _write_map(f, packer: msgpack.Packer, node: dict, weights: Mapping[str, np.ndarray], where: str = "") -> None:
    """Write ``node`` (from ``_name_tree``) as ``msgpack_serialize`` writes the nested Flax state
    dict: a map header, then each key and its value; each tensor is converted, encoded and
    written on its own, so the copies of only one tensor exist at a time."""
    entries = []
    for part, child in node.items():
        if isinstance(child, dict):
            entries.append((part, child))
        else:  # the Flax key depends on the tensor's rank: fetched now, transposed lazily (a view)
            flax_path, array = _canonical_to_flax(child, np.asarray(weights[child]))
            entries.append((flax_path.rpartition(".")[2], array))
    # msgpack_serialize (in_place=False) first copies the tree with jax.tree_util, which sorts
    # every dict's keys as Python strings ('10' before '2'): the file's maps are in that order.
    entries.sort(key=lambda entry: entry[0])
    for (key, _), (next_key, _) in zip(entries, entries[1:]):
        if key == next_key:
            raise ValueError(f"{where}{key}: two canonical names map to this Flax key")
    f.write(packer.pack_map_header(len(entries)))
    for key, value in entries:
        f.write(packer.pack(key))
        if isinstance(value, dict):
            _write_map(f, packer, value, weights, f"{where}{key}.")
        else:
            # Flax's public serializer on the lone array writes the very bytes it writes for the
            # array inside a tree (an ext record, or a chunked-array map above 1 GiB), so the file
            # equals msgpack_serialize(whole tree). Its tobytes('C') makes the transposed copy.
            f.write(serialization.msgpack_serialize(value))


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``weights`` as a Flax msgpack state dict: the nested structure of
    ``nnx.state(model)`` (Flax names and layout, string keys), readable with
    ``flax.serialization.msgpack_restore`` and loadable into a model with
    ``nnx.replace_by_pure_dict(state, tree); nnx.update(model, state)``.

    The bytes are exactly ``msgpack_serialize`` of that nested dict (tested; keys sorted, as it
    writes them), written incrementally: the only memory used beyond ``weights`` is a few copies
    of the largest tensor. ``weights[name]`` is fetched once per tensor, when its module is
    written (progress reporting follows the writing).
    """
    tree = _name_tree(weights)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _write_map(f, msgpack.Packer(), tree, weights)
