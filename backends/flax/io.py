"""Flax's native files (``.msgpack``) as canonical weights: the nested state dict of
``nnx.state(model)`` as ``flax.serialization`` writes it, streamed in and out one tensor at a time.
The file codec is ``resnet_multi.formats.msgpack_stream``; this module translates Flax's names and
layouts by the layout (``LAYOUT``). No framework is imported, so these files are read and written
without JAX or Flax."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from resnet_multi import layout as L
from resnet_multi.formats import msgpack_stream
from resnet_multi.formats.atomic import atomic_path

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


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays (PyTorch layout) from a Flax msgpack state dict (as written by
    ``save_native``, or ``flax.serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model)))``).

    Names are translated by the layout alone (last key and rank), so no plan is needed; the
    result is in the file's order (Flax's sorted keys), not ``plan.params`` order. Memory:
    the file is streamed (``msgpack_stream.iter_arrays``) and its tensors are decoded and converted one at a
    time, each encoded record dropped as its canonical copy is made: the peak is about the
    checkpoint's size plus a few copies of the largest tensor.

    Raises:
        ValueError: the file is not a msgpack state dict (corrupt, truncated, not a dict of
            arrays), or holds a variable no rule translates; the message names the file.
    """
    path = Path(path)
    out = {}
    for key, value in msgpack_stream.iter_arrays(path):
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


class _FlaxModule(Mapping):
    """One module of the file (a node of ``_name_tree``) under Flax's keys, for
    ``msgpack_stream.dump``: its tensors are fetched, renamed and transposed (lazily, a view) when
    the writer asks for its ``items()``, i.e. when the module is written, so only one module's
    converted tensors exist at a time and progress reporting follows the writing."""

    def __init__(self, node: dict, weights: Mapping[str, np.ndarray], where: str = ""):
        self._node, self._weights, self._where = node, weights, where

    def items(self):
        entries = []
        for part, child in self._node.items():
            if isinstance(child, dict):
                entries.append((part, _FlaxModule(child, self._weights, f"{self._where}{part}.")))
            else:  # the Flax key depends on the tensor's rank: fetched now
                flax_path, array = _canonical_to_flax(child, np.asarray(self._weights[child]))
                entries.append((flax_path.rpartition(".")[2], array))
        keys = sorted(key for key, _ in entries)
        for key, next_key in zip(keys, keys[1:]):
            if key == next_key:
                raise ValueError(f"{self._where}{key}: two canonical names map to this Flax key")
        return entries

    def __getitem__(self, key: str):
        return dict(self.items())[key]

    def __iter__(self) -> Iterator[str]:
        return iter(key for key, _ in self.items())

    def __len__(self) -> int:
        return len(self._node)


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``weights`` as a Flax msgpack state dict: the nested structure of
    ``nnx.state(model)`` (Flax names and layout, string keys), readable with
    ``flax.serialization.msgpack_restore`` and loadable into a model with
    ``nnx.replace_by_pure_dict(state, tree); nnx.update(model, state)``.

    The bytes are exactly ``msgpack_serialize`` of that nested dict (tested; keys sorted, as it
    writes them), written incrementally by ``msgpack_stream``: the only memory used beyond
    ``weights`` is a few copies of the largest tensor. ``weights[name]`` is fetched once per
    tensor, when its module is written (progress reporting follows the writing).
    """
    tree = _FlaxModule(_name_tree(weights), weights)
    with atomic_path(path) as tmp:  # the caller's temporary file when it has made the write atomic already
        msgpack_stream.write(tmp, tree)
