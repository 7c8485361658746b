"""Backend name -> module, imported only when asked for (the core never imports a framework).

A backend module provides the same small set of functions (see docs/DESIGN.md, "Backend contract").
Adding a backend is one new file in ``backends/`` plus one line in ``_BACKENDS``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any, Mapping, Protocol, runtime_checkable

# name -> (module, the top-level framework package it needs, the pip extra that installs it)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("resnet_multi.backends.torch_backend", "torch", "torch"),
    "paddle": ("resnet_multi.backends.paddle_backend", "paddle", "paddle"),
    "flax": ("resnet_multi.backends.flax_backend", "flax", "flax"),
}

# Native checkpoint suffix -> backend, as data, so that finding the reader of a file imports no
# framework. Must agree with every backend module's SUFFIXES (a test checks it).
_SUFFIXES: dict[str, str] = {
    ".pt": "torch",
    ".pth": "torch",
    ".pdparams": "paddle",
    ".msgpack": "flax",
}


@runtime_checkable
class Backend(Protocol):
    """What every backend module provides (docs/DESIGN.md, "Backend contract"); a test checks each
    module against it. Optional hooks: ``optimize(model)``, ``export_model`` + ``EXPORT_SUFFIX``."""

    NAME: str
    SUFFIXES: tuple[str, ...]
    DTYPES: Any  # the dtype names ``build`` accepts

    def build(self, plan: Any, weights: Mapping[str, Any], dtype: str = "float32") -> Any: ...
    def is_model(self, model: Any) -> bool: ...
    def plan_of(self, model: Any) -> Any: ...
    def export_weights(self, model: Any) -> dict[str, Any]: ...
    def import_weights(self, model: Any, weights: Mapping[str, Any]) -> None: ...
    def forward(self, model: Any, x_nchw: Any, *, taps: bool = False) -> dict[str, Any]: ...
    def load_native(self, path: Any) -> dict[str, Any]: ...
    def save_native(self, path: Any, weights: Mapping[str, Any]) -> None: ...


class BackendError(ValueError):
    """An unknown backend, or one whose framework is not installed."""


def backend_names() -> tuple[str, ...]:
    """Every backend resnet_multi knows, installed or not."""
    return tuple(_BACKENDS)


def available_backends() -> tuple[str, ...]:
    """The backends whose framework is installed (checked without importing it)."""
    return tuple(name for name, (_, package, _) in _BACKENDS.items()
                 if importlib.util.find_spec(package) is not None)


def native_suffixes() -> dict[str, str]:
    """Native checkpoint suffix (lower case, with the dot) -> the backend that reads and writes it."""
    return dict(_SUFFIXES)


def get_backend(name: str) -> ModuleType:
    """The backend module called ``name``, imported now.

    Raises:
        BackendError: unknown name, or the framework is not installed (names the extra).
    """
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(_BACKENDS)}")
    module, package, extra = _BACKENDS[name]
    if importlib.util.find_spec(package) is None:
        raise BackendError(f"backend {name!r} needs the {package!r} package, which is not installed; "
                           f"install it with: pip install \"resnet_multi[{extra}]\"")
    return importlib.import_module(module)


def backend_of(model: object) -> ModuleType:
    """The backend whose framework made ``model``. Only frameworks already imported are asked,
    since a model of a framework that is not imported cannot exist."""
    for name, (module, package, _) in _BACKENDS.items():
        if package in sys.modules:
            backend = get_backend(name)
            if backend.is_model(model):
                return backend
    raise TypeError(f"not a model built by resnet_multi: {type(model).__module__}.{type(model).__name__}; "
                    "build one with rm.build(spec, backend=...)")
