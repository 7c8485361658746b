"""Paddle's native files (``.pdparams``) as canonical weights: the file codec is
``resnet_multi.formats.pdparams`` (a safe reader of ``paddle.save``'s pickle, numpy types only, and a
writer of its bytes), and this module translates Paddle's names and layouts by the layout
(``LAYOUT``). No framework is imported, so these files are read and written without Paddle."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from resnet_multi import layout as L
from resnet_multi.formats import pdparams
from resnet_multi.formats.atomic import atomic_path
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


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays from a ``paddle.save``d state_dict (``.pdparams``).

    Names and layouts are translated by the layout (``LAYOUT``, no plan needed): ``_mean`` ->
    ``running_mean``, ``_variance`` -> ``running_var``, 2-D ``*.weight`` (Linear, stored (in, out))
    transposed to (out, in). Other names are kept as they are. The pickle is read with an
    allow-list of numpy types, so a file never runs code. Dtypes are kept; Paddle's bfloat16
    (uint16 arrays, see ``formats.pdparams``) becomes ``ml_dtypes.bfloat16``, bit for bit.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Paddle state_dict (corrupt, truncated, not a
            dict of arrays); the message names the file.
    """
    out = {}
    for name, value in pdparams.read(path).items():
        new, array = _to_canonical(name, value)
        if new in out:
            raise ValueError(f"{os.fspath(path)}: {name!r} and another tensor both map to canonical name {new!r}")
        out[new] = array
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
        state[new] = array
    with atomic_path(path) as tmp:  # the caller's temporary file when it has made the write atomic already
        pdparams.write(tmp, state)
