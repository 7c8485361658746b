"""The backends: one row each (``BACKENDS``), imported only when asked for (the core never
imports a framework).

A backend is a package ``resnet_multi.backends.<name>`` with the same submodules as every other
(``backends/_contract.py``) and the functions of the ``Backend`` Protocol; its optional hooks are
declared in its row's ``features``, never probed. Adding a backend is one folder in ``backends/``,
one row here and one pip extra (docs/DESIGN.md, "Adding a backend").
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True)
class BackendInfo:
    """One backend: its ``name``, the ``package`` that implements it, the top-level
    ``framework`` package it needs, the pip ``extra`` that installs it, its native checkpoint
    ``suffixes`` (lower case, with the dot) and its optional ``features`` ("optimize", "export").
    Data only, so asking which backend reads a file imports no framework."""

    name: str
    package: str
    framework: str
    extra: str
    suffixes: tuple[str, ...]
    features: frozenset[str] = frozenset()


def _row(name: str, suffixes: tuple[str, ...], features: tuple[str, ...]) -> BackendInfo:
    return BackendInfo(name, f"resnet_multi.backends.{name}", name, name, suffixes, frozenset(features))


BACKENDS: dict[str, BackendInfo] = {
    "torch": _row("torch", (".pt", ".pth"), ("optimize", "export")),
    "paddle": _row("paddle", (".pdparams",), ("optimize", "export")),
    "flax": _row("flax", (".msgpack",), ("optimize",)),
}
"""Every backend resnet_multi knows, in order; the first is the default. Each row must agree
with its package's ``NAME``, ``SUFFIXES`` and ``FEATURES`` (a test checks it)."""


@runtime_checkable
class Backend(Protocol):
    """What every backend package provides (docs/DESIGN.md, "Backend contract"); a test checks
    each against it. Optional hooks, declared in ``FEATURES`` (and the registry row):
    "optimize" (``optimize(model)``), "export" (``export_model`` + ``EXPORT_SUFFIX``)."""

    NAME: str
    SUFFIXES: tuple[str, ...]
    DTYPES: tuple[str, ...]  # the dtype names ``build`` accepts
    FEATURES: frozenset[str]
    LAYOUT: Any  # resnet_multi.layout.Layout

    def build(self, plan: Any, weights: Mapping[str, Any], dtype: str = "float32") -> Any: ...
    def is_model(self, model: Any) -> bool: ...
    def plan_of(self, model: Any) -> Any: ...
    def export_weights(self, model: Any) -> dict[str, Any]: ...
    def import_weights(self, model: Any, weights: Mapping[str, Any]) -> None: ...
    def forward(self, model: Any, x_nchw: Any, *, taps: bool = False) -> dict[str, Any]: ...
    def load_native(self, path: Any) -> dict[str, Any]: ...
    def save_native(self, path: Any, weights: Mapping[str, Any]) -> None: ...
    # training (resnet_multi.training): the neutral optimizer settings as the framework's own
    # optimizer, and one ordinary train step returning (loss, {canonical name: gradient})
    def make_optimizer(self, model: Any, settings: Any) -> Any: ...
    def train_step(self, model: Any, optimizer: Any, x_nchw: Any, labels: Any) -> tuple[float, dict[str, Any]]: ...


class BackendError(ValueError):
    """An unknown backend, or one whose framework is not installed."""


def backend_names() -> tuple[str, ...]:
    """Every backend resnet_multi knows, installed or not."""
    return tuple(BACKENDS)


def default_backend() -> str:
    """The backend used when none is named (the registry's first)."""
    return next(iter(BACKENDS))


def backend_info(name: str) -> BackendInfo:
    """The registry row of backend ``name``.

    Raises:
        BackendError: unknown name.
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def available_backends() -> tuple[str, ...]:
    """The backends whose framework is installed (checked without importing it)."""
    return tuple(name for name, info in BACKENDS.items() if importlib.util.find_spec(info.framework) is not None)


def backends_with(feature: str) -> tuple[str, ...]:
    """The backends (installed or not) that declare the optional ``feature``."""
    return tuple(name for name, info in BACKENDS.items() if feature in info.features)


def native_suffixes() -> dict[str, str]:
    """Native checkpoint suffix (lower case, with the dot) -> the backend that reads and writes it."""
    return {suffix: name for name, info in BACKENDS.items() for suffix in info.suffixes}


def layout_of(name: str):
    """Backend ``name``'s weight layout (``resnet_multi.layout.Layout``), imported without its
    framework (a backend package's ``layout`` module needs only numpy)."""
    return importlib.import_module(f"{backend_info(name).package}.layout").LAYOUT


def get_backend(name: str) -> ModuleType:
    """The backend package called ``name``, imported now (its framework on first use of a
    contract function).

    Raises:
        BackendError: unknown name, or the framework is not installed (names the extra).
    """
    info = backend_info(name)
    if importlib.util.find_spec(info.framework) is None:
        raise BackendError(f"backend {name!r} needs the {info.framework!r} package, which is not installed; "
                           f"install it with: pip install \"resnet_multi[{info.extra}]\"")
    return importlib.import_module(info.package)


def has_feature(backend: ModuleType, feature: str) -> bool:
    """Whether ``backend`` (a backend package) declares the optional ``feature`` in its registry row
    (which a test keeps equal to the package's ``FEATURES``)."""
    return feature in backend_info(backend.NAME).features


def backend_of(model: object) -> ModuleType:
    """The backend whose framework made ``model``. Only frameworks already imported are asked,
    since a model of a framework that is not imported cannot exist."""
    for name, info in BACKENDS.items():
        if info.framework in sys.modules:
            backend = get_backend(name)
            if backend.is_model(model):
                return backend
    raise TypeError(f"not a model built by resnet_multi: {type(model).__module__}.{type(model).__name__}; "
                    "build one with rm.build(spec, backend=...)")
