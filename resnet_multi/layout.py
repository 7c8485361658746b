"""One weight layout loop for every backend: canonical names and arrays <-> a backend's native ones.

A backend declares its layout as data (``backends/<fw>/layout.py``, a ``Layout``): per parameter
role (``plan.ParamInfo.role``) the native leaf name and the axis order, and the naming scheme of
its module paths (``plan.aliases``). Everything else is here, written once:

- ``native_name`` / ``native_names``: a canonical parameter's native name (module path in the
  backend's scheme, leaf from the layout).
- ``stage``: canonical weights -> native-named arrays in native axis order, checked against the
  model's native tensors before anything is written (import stays all-or-nothing); every bad name
  is listed in one ``WeightsError``, whatever the backend.
- ``export``: the model's native tensors -> canonical weights, in ``plan.params`` order.
- ``canonical``: a native name and array (a gradient) -> canonical name and layout.
- ``file_to_canonical`` / ``canonical_to_file``: the plan-free translation of native files
  (native leaf + rank <-> canonical leaf + axes), derived from the same table.

numpy only: no framework is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from ._lazy import np
from .plan import Plan
from .weights import WeightsError

CANONICAL_LEAVES: dict[str, tuple[str, int]] = {
    "conv_weight": ("weight", 4),    # OIHW
    "conv_bias": ("bias", 1),
    "bn_weight": ("weight", 1),
    "bn_bias": ("bias", 1),
    "bn_mean": ("running_mean", 1),
    "bn_var": ("running_var", 1),
    "linear_weight": ("weight", 2),  # (out, in)
    "linear_bias": ("bias", 1),
    "ln_weight": ("weight", 1),
    "ln_bias": ("bias", 1),
    # parameters that are their own leaf (ir.PARAMETER_OPS: torchvision's layer_scale, HorNet's
    # gamma1 and complex_weight): no fixed leaf or rank, never renamed, never transposed
    "layer_scale": (None, None),
    "complex_weight": (None, None),
}
"""Every parameter role -> its canonical leaf name and rank (PyTorch's names and layout); (None,
None): the parameter is its own leaf, kept as it is by every layout (``Leaf(None)``)."""

ROLES = tuple(CANONICAL_LEAVES)
PARAMETER_LEAVES = ("layer_scale", "gamma", "gamma1", "gamma2", "complex_weight")
"""The leaves of the parameters that are their own leaf (roles layer_scale and complex_weight:
torchvision's and timm's ConvNeXt, HorNet), kept as they are by every file translation; any other
leaf that no role names is an error there. A family naming such a parameter otherwise adds its leaf here."""


@dataclass(frozen=True)
class Leaf:
    """A role's native form: the leaf name and the ``np.transpose`` axes canonical -> native
    (None: the canonical layout)."""

    name: str | None  # None: the canonical leaf (a parameter that is its own leaf)
    axes: tuple[int, ...] | None = None

    @property
    def inverse(self) -> tuple[int, ...] | None:
        """The axes native -> canonical."""
        return None if self.axes is None else tuple(sorted(range(len(self.axes)), key=self.axes.__getitem__))


@dataclass(frozen=True)
class Layout:
    """A backend's weight layout: ``leaves`` (role -> ``Leaf``) and ``naming``, the
    ``plan.aliases`` scheme its module paths follow (None: canonical module paths)."""

    backend: str
    leaves: Mapping[str, Leaf]
    naming: str | None = None
    _file_rules: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        lacking = [role for role in ROLES if role not in self.leaves]
        if lacking:
            raise ValueError(f"layout {self.backend!r}: no leaf for role(s) {', '.join(lacking)}")
        object.__setattr__(self, "_file_rules", file_rules(self))

    def leaf(self, role: str) -> Leaf:
        return self.leaves[role]


def file_rules(layout: Layout) -> dict[str, dict]:
    """The plan-free translation tables of ``layout``:
    ``{"to_canonical": {(native leaf, rank): (canonical leaf, native->canonical axes)},
    "to_native": {(canonical leaf, rank): (native leaf, canonical->native axes)}}``.

    Raises:
        ValueError: two roles with the same native (or canonical) leaf and rank translate
            differently, so a file could not be read (or written) without a plan.
    """
    to_canonical: dict = {}
    to_native: dict = {}
    for role in ROLES:
        canonical, rank = CANONICAL_LEAVES[role]
        leaf = layout.leaves[role]
        if canonical is None:  # its own leaf: passes unchanged (see _renamed)
            continue
        for table, key, value in ((to_canonical, (leaf.name, rank), (canonical, leaf.inverse)),
                                  (to_native, (canonical, rank), (leaf.name, leaf.axes))):
            if table.setdefault(key, value) != value:
                raise ValueError(f"layout {layout.backend!r}: {key[0]!r} ({key[1]}-D) translates two ways: "
                                 f"{table[key]} and {value} (role {role})")
    return {"to_canonical": to_canonical, "to_native": to_native}


def _transposed(array: np.ndarray, axes) -> np.ndarray:
    return array if axes is None else np.transpose(array, axes)


def _renamed(name: str, table: Mapping, rank: int, loose: bool) -> tuple[str, tuple | None] | None:
    prefix, _, last = name.rpartition(".")
    rule = table.get((last, rank))
    if rule is None and last in PARAMETER_LEAVES:
        return name, None  # a parameter that is its own leaf is kept as it is
    if rule is None and loose:  # another rank: the leaf renamed if every rank agrees, never transposed
        renames = {new for (leaf, _), (new, _) in table.items() if leaf == last}
        rule = (renames.pop(), None) if len(renames) == 1 else None
    if rule is None:
        return None
    new, axes = rule
    return (f"{prefix}.{new}" if prefix else new), axes


def file_to_canonical(layout: Layout, name: str, array: np.ndarray, *, loose: bool = False):
    """``(canonical name, array in canonical layout)`` for a native file's tensor, without a plan
    (by its leaf name and rank), or None when no role has that native leaf and rank. ``loose``:
    a leaf of another rank is still renamed (not transposed) when every rank renames it alike."""
    rule = _renamed(name, layout._file_rules["to_canonical"], np.ndim(array), loose)
    return None if rule is None else (rule[0], _transposed(array, rule[1]))


def canonical_to_file(layout: Layout, name: str, array: np.ndarray, *, loose: bool = False):
    """The inverse of ``file_to_canonical``: ``(native name, array in native layout)`` or None."""
    rule = _renamed(name, layout._file_rules["to_native"], np.ndim(array), loose)
    return None if rule is None else (rule[0], _transposed(array, rule[1]))


def native_name(layout: Layout, plan: Plan, name: str) -> str:
    """The native name of canonical parameter ``name``: its module path in the layout's naming
    scheme and the layout's leaf for its role."""
    owner, _, _ = name.rpartition(".")
    if layout.naming is not None:
        owner = plan.aliases.get(layout.naming, {}).get(owner, owner)
    leaf = layout.leaves[plan.params[name].role].name or name.rpartition(".")[2]
    return f"{owner}.{leaf}" if owner else leaf


def native_names(layout: Layout, plan: Plan) -> dict[str, str]:
    """``{canonical name: native name}`` for every entry of ``plan.params``, in its order."""
    return {name: native_name(layout, plan, name) for name in plan.params}


def to_native(layout: Layout, plan: Plan, name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """``(native name, array in native axis order)`` for canonical parameter ``name`` (a view when
    it can be)."""
    return native_name(layout, plan, name), _transposed(array, layout.leaves[plan.params[name].role].axes)


def stage(layout: Layout, plan: Plan, weights: Mapping[str, object], shapes: Mapping[str, tuple],
          convert: Callable[[str, np.ndarray], object] = lambda native, array: array) -> dict[str, object]:
    """The one staging loop of every backend's import: canonical ``weights`` (any subset of the
    plan's names) -> ``{native name: convert(native name, array in native layout)}``, every name
    and shape checked against ``shapes`` (the model's native tensors) before anything is written.

    Raises:
        WeightsError: listing every name that is not a parameter of the plan, whose native tensor
            the model lacks, or whose shape differs, with the expected and found shapes.
    """
    staged: dict[str, object] = {}
    unexpected, mismatched = [], []
    for name, value in weights.items():
        if name not in plan.params:
            unexpected.append(name)
            continue
        array = np.asarray(value)
        native, converted = to_native(layout, plan, name, array)
        if native not in shapes:
            unexpected.append(f"{name} ({layout.backend} has no tensor {native!r})")
            continue
        expected = tuple(shapes[native])
        if tuple(converted.shape) != expected:
            mismatched.append(f"{name} (expected {layout.backend} shape {expected} at {native!r}, "
                              f"found {tuple(converted.shape)}, canonical {tuple(array.shape)})")
            continue
        staged[native] = convert(native, converted)
    if unexpected or mismatched:
        problems = [f"{len(found)} {what}: {', '.join(found[:20])}" + (f", ... ({len(found) - 20} more)"
                                                                       if len(found) > 20 else "")
                    for what, found in (("unexpected", unexpected), ("mis-shaped", mismatched)) if found]
        raise WeightsError(f"weights do not fit the {layout.backend} model of {plan.spec.name!r}: "
                           + "; ".join(problems), (), unexpected, mismatched)
    return staged


def export(layout: Layout, plan: Plan, read: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical weights (C-ordered copies, canonical layout) in ``plan.params`` order, each read
    from the model as ``read(native name)`` (a numpy array in native layout)."""
    out = {}
    for name, native in native_names(layout, plan).items():
        array = _transposed(np.asarray(read(native)), layout.leaves[plan.params[name].role].inverse)
        out[name] = np.array(array, order="C", copy=True)
    return out


def canonical(layout: Layout, plan: Plan) -> Callable[[str, np.ndarray], tuple[str, np.ndarray]]:
    """A function ``(native name, array) -> (canonical name, C-ordered array in canonical layout)``
    for the plan's tensors (gradients by their native names); a name that is not the plan's is a
    WeightsError."""
    of = {native: name for name, native in native_names(layout, plan).items()}

    def to_canonical(native: str, array: np.ndarray) -> tuple[str, np.ndarray]:
        if native not in of:
            raise WeightsError(f"{layout.backend} model of {plan.spec.name!r}: {native!r} is not a tensor "
                               f"of the plan", (), (native,), ())
        name = of[native]
        array = _transposed(np.asarray(array), layout.leaves[plan.params[name].role].inverse)
        return name, np.array(array, order="C", copy=True)

    return to_canonical
