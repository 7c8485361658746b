"""The backend contract as data: which submodule of a backend package defines each name.

Every backend package (``resnet_multi.backends.torch``, ``.paddle``, ``.flax``) has the same
submodules (``SUBMODULES``) and defines each contract name in the same one (``CONTRACT``). Its
``__init__`` imports no framework: ``lazy_attributes`` gives it a PEP 562 ``__getattr__`` that
imports the submodule on first use, so ``get_backend("torch").build`` imports torch and reading
``LAYOUT`` or ``FEATURES`` does not. No framework is imported here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

SUBMODULES = ("ops", "model", "layout", "io", "train", "fastpath")
"""The modules every backend package has, with the same names."""

CONTRACT: dict[str, str] = {
    # required (registry.Backend)
    "build": "model",
    "is_model": "model",
    "plan_of": "model",
    "forward": "model",
    "export_weights": "model",
    "import_weights": "model",
    "load_native": "io",
    "save_native": "io",
    "make_optimizer": "train",
    "train_step": "train",
    # optional, declared in the package's FEATURES
    "optimize": "fastpath",
    "export_model": "fastpath",
    "EXPORT_SUFFIX": "fastpath",
}
"""Contract name -> the submodule that defines it, the same in every backend."""

FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "optimize": ("optimize",),
    "export": ("export_model", "EXPORT_SUFFIX"),
}
"""Optional feature (a backend's ``FEATURES``) -> the contract names it provides."""


def lazy_attributes(package: str, features: frozenset, extras: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the backend package ``package``: a contract name (or one of the
    package's ``extras``, name -> submodule) is imported from its submodule on first use. An
    optional hook the package's ``features`` do not declare is an AttributeError, never probed."""
    declared = {name for feature in features for name in FEATURE_NAMES[feature]}
    optional = {name for names in FEATURE_NAMES.values() for name in names}
    extras = dict(extras or {})

    def __getattr__(name: str) -> Any:
        where = extras.get(name) or CONTRACT.get(name)
        if where is None or (name in optional and name not in declared):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where}"), name)

    return __getattr__


@dataclass(frozen=True)
class Op:
    """One row of a backend's ``ops.OPS`` table: how it runs one IR op type.

    ``apply(node, *inputs)``: the primitive, for the op as a function. ``module(op, context)``: the
    factory of the framework module for an op that is a module (``plan.MODULE_OPS``) or a named
    parameterless op (``plan.NAMEABLE_OPS`` with a name); ``context`` is the framework's: the
    nodes that call the module (torch, Paddle: ``_module_tree.register_part``), or the build's
    settings (Flax: ``ops.Context``).
    ``call(module, x, mode)``: how such a module is called (default ``module(x)``), for a
    framework whose modules take per-call mode arguments (Flax's BatchNorm and Dropout).
    """

    apply: Callable | None = None
    module: Callable | None = None
    call: Callable | None = None


def training_logits(out, spatial_mean: Callable, concat_channels: Callable):
    """Logits for the training loss: the head's, or the output feature map(s) averaged over H, W
    (and concatenated along channels), as resnet_multi.training.check_training defines it.
    ``spatial_mean(feature_map)`` and ``concat_channels(list of (N, C))`` are the backend's."""
    if isinstance(out, (list, tuple)):
        return concat_channels([spatial_mean(o) for o in out])
    return spatial_mean(out) if out.ndim == 4 else out
