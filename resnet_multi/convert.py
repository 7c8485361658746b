"""File-to-file conversion between checkpoint formats, through canonical weights.

Every conversion is ``read native -> canonical weights -> check against a spec -> write native``.
The formats:

- ``.safetensors``: the neutral file (``weights.save_weights``/``load_weights``), canonical names
  and layout, the spec's JSON in the metadata.
- every backend's native files (``registry.native_suffixes()``: ``.pt``/``.pth`` torch,
  ``.pdparams`` Paddle, ``.msgpack`` Flax), read and written by the backend's
  ``load_native``/``save_native`` (``registry.native_io``), which translate names and layouts to and
  from canonical. ``.pdparams`` and ``.msgpack`` need only numpy (their backends declare "numpy_io");
  ``.pt``/``.pth`` need torch.

Safety, as the CLI promises it: the format is detected from the suffix and checked against the
content before the framework is asked to parse it (``formats.sniff``); any reader failure becomes a
CheckpointError naming the file; an existing output is refused without ``force``, and a missing
output directory is refused (never created), before any work is done; the output is written to a
temporary file and renamed only when complete, with normal file permissions (``formats.atomic``:
``write_canonical`` is the one layer that does it, one temporary file per write); the input is only read.

Conversion moves bits, not values: tensors keep their dtype and bytes. float16, bfloat16, float32
and float64 are kept by every format, bit for bit (tested for every pair of formats). bfloat16 is
``ml_dtypes.bfloat16`` on the numpy side (see ``weights``); each format stores it natively:
safetensors ``BF16``, ``torch.bfloat16`` tensors, Paddle's bfloat16 (uint16 bits, as paddle.save
writes it), Flax msgpack's ``bfloat16`` arrays; no value passes through float32. ``dtype=``
(``--dtype``) casts on the way: widening is exact, narrowing warns with the largest change it
made (``weights.cast_weights``). Tensors holding NaN or Inf are converted as they are, with a
NonFiniteWarning naming them (``inspect_file`` warns and lists them too).

``num_batches_tracked`` (torch BN step counters) is not canonical: it is left out on reading and
the torch writer recreates it (as zeros). Names and shapes alone cannot tell some spec fields
apart (stride on the 1x1 or the 3x3, dilation, BN epsilon): ``infer_spec`` picks the preset whose
parameter table matches, so pass ``spec=`` when the network differs in those.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ._lazy import np
from .formats.atomic import atomic_path, check_output_dir
# the format names, suffixes and content sniffing live in formats.sniff; these names stay importable from here
from .formats.sniff import NEUTRAL, CheckpointError, detect_format, format_of_suffix, formats
from .plan import make_plan
from .registry import native_io
from .spec import HeadSpec, ResNetSpec, SpecError
from .weights import NEUTRAL_SUFFIX
from .weights import load_weights as load_neutral
from .weights import (FRAMEWORK_EXTRAS, WeightsError, cast_weights, check_weights, resolve_dtype,
                      save_weights, warn_nonfinite)
from .zoo import get_spec, list_specs, resolve_spec

# --------------------------------------------------------------------------- reading and writing


def _read(path: Path) -> tuple[str, dict[str, np.ndarray], list[str], ResNetSpec | None]:
    """(format, canonical weights, dropped extras, spec stored in the file or None)."""
    fmt = detect_format(path)
    if fmt == NEUTRAL:  # the core's own format: no backend involved
        weights, spec = load_neutral(path)
        return fmt, weights, [], spec
    backend = native_io(fmt)  # a framework only if the format needs one (a clear error if it is missing)
    try:
        raw = backend.load_native(path)
    except Exception as exc:  # frameworks raise anything on corrupt input (RuntimeError, EOFError, ...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if str(path) not in message:
            message = f"{path}: cannot read it as a {fmt} checkpoint ({type(exc).__name__}: {message})"
        raise CheckpointError(message) from exc
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{path}: no tensors found in the {fmt} checkpoint")
    weights, extras = {}, []
    for name, value in raw.items():
        if name.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            extras.append(name)
        else:
            weights[name] = np.asarray(value)
    return fmt, weights, extras, None


class PrefixWarning(UserWarning):
    """The network's tensors were read from under a prefix (``backbone.``); the message says which, and
    how many other tensors (a detector's neck and head) were left out."""


def select_prefix(weights: Mapping[str, np.ndarray], prefix: str, *, source: str = "weights") -> dict[str, np.ndarray]:
    """The tensors under ``prefix`` (``"backbone."``, or ``"backbone"``: the dot is added), without it.

    Raises:
        WeightsError: no tensor has the prefix (the message lists the prefixes the names do have).
    """
    prefix = prefix if prefix.endswith(".") else prefix + "."
    selected = {name[len(prefix):]: value for name, value in weights.items() if name.startswith(prefix)}
    if not selected:
        tops = sorted({name.split(".", 1)[0] + "." for name in weights if "." in name})
        raise WeightsError(f"{source}: no tensor name starts with {prefix!r}; the names start with "
                           f"{', '.join(tops[:10]) or 'no prefix'}")
    return selected


def _detect_prefix(weights: Mapping[str, np.ndarray]) -> str | None:
    """The one top-level prefix (``backbone.``) under which the tensors match a preset exactly, when the
    names as they are match none: how PaddleDetection, PaddleOCR and many torch detectors save a whole
    model around its backbone. None if there is no such prefix, or more than one."""
    if not weights or match_presets(weights)[0].differences == 0:
        return None
    tops = sorted({name.split(".", 1)[0] for name in weights if "." in name})
    found = [top + "." for top in tops
             if match_presets(select_prefix(weights, top + "."))[0].differences == 0]
    return found[0] if len(found) == 1 else None


def _apply_prefix(weights: dict, prefix: str | None, source: str, *, detect: bool) -> dict:
    """``weights`` under ``prefix`` (given, or detected when ``detect``), with a PrefixWarning saying so."""
    import warnings

    given = prefix is not None
    if prefix is None and detect:
        prefix = _detect_prefix(weights)
    if prefix is None:
        return weights
    selected = select_prefix(weights, prefix, source=source)
    prefix = prefix if prefix.endswith(".") else prefix + "."
    left = len(weights) - len(selected)
    how = "as asked (--prefix)" if given else "found: no preset matches the names as they are"
    warnings.warn(f"{source}: read the {len(selected)} tensors under {prefix!r} ({how}); {left} other tensor(s) "
                  "left out", PrefixWarning, stacklevel=3)
    return selected


def load_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], ResNetSpec | None]:
    """Read canonical weights from a checkpoint of any supported format, with the spec it stores
    (``rm.load_weights``).

    A neutral ``.safetensors`` file is read by ``weights.load_weights`` (its spec, when it has
    one, checks the tensors). Any other format (``.pt``/``.pth``, ``.pdparams``, ``.msgpack``) is
    read by its backend's reader and translated to canonical names and layouts
    (``read_canonical``); the spec is then None (infer it with ``rm.infer_spec``).

    Example:
        >>> weights, spec = rm.load_weights("resnet50.pdparams")
    """
    if Path(path).suffix.lower() == NEUTRAL_SUFFIX:
        return load_neutral(path)
    return read_canonical(path)


def read_canonical(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], ResNetSpec | None]:
    """Canonical weights from a checkpoint of any supported format.

    Framework extras (``num_batches_tracked``) are left out; dtypes are as stored (bfloat16 as
    ``ml_dtypes.bfloat16`` arrays).

    Returns:
        ``(weights, spec)``; spec is the one stored in a neutral file, else None.
    Raises:
        FileNotFoundError, ValueError (unknown suffix), CheckpointError (unreadable content),
        WeightsError (a neutral file whose tensors do not fit its own spec).
    Example:
        >>> weights, _ = read_canonical("resnet50.pth")
    """
    _, weights, _, spec = _read(Path(path))
    return weights, spec


class _Reporting(Mapping):
    """A read-only view of ``weights`` that calls ``on_tensor(array)`` the first time each
    tensor is fetched: a writer walking the weights drives the progress bar."""

    def __init__(self, weights: Mapping[str, np.ndarray], on_tensor: Callable[[np.ndarray], None]):
        self._weights, self._on_tensor, self._seen = weights, on_tensor, set()

    def __getitem__(self, name: str) -> np.ndarray:
        value = self._weights[name]
        if name not in self._seen:
            self._seen.add(name)
            self._on_tensor(value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


def check_naming(plan, naming: str | None, fmt: str) -> None:
    """Raise ValueError unless ``naming`` (None: the format's own) is a naming scheme of ``plan``
    that a ``fmt`` file can hold (the neutral file holds canonical names only)."""
    if naming is None:
        return
    if fmt == NEUTRAL:
        raise ValueError(f"naming {naming!r}: the neutral {NEUTRAL_SUFFIX} file holds canonical names only; "
                         "write a framework format (.pth, .pdparams, .msgpack) to use another naming")
    if naming not in plan.schemes:
        known = ", ".join(repr(s) for s in plan.schemes) or "none"
        raise ValueError(f"naming {naming!r}: not a naming scheme of {plan.spec.name!r} (its schemes: {known})")


def write_canonical(path: str | os.PathLike, weights: Mapping[str, np.ndarray], spec=None, force: bool = False,
                    *, on_tensor: Callable[[np.ndarray], None] | None = None, naming: str | None = None) -> Path:
    """Write canonical ``weights`` in the format ``path``'s suffix names, atomically.

    Tensors are written in their own dtypes. The directory of ``path`` must exist (it is not
    created); the file gets normal permissions (umask), as ``open`` would give it.

    Args:
        path: output file (``.pt``/``.pth``, ``.pdparams``, ``.msgpack``, ``.safetensors``).
        weights: canonical weights.
        spec: ResNetSpec or preset name; with it the weights are checked against its plan before
            anything is written (and a neutral file stores it).
        force: overwrite an existing file.
        on_tensor: called with each tensor as the writer takes it (progress reporting).
        naming: write the tensors under this naming scheme of the spec's plan (``Plan.schemes``,
            e.g. "timm" for a ConvNeXt: timm's names and shapes); needs ``spec``. Default: the
            format's own scheme where the plan has one (Paddle's DenseNet names), else canonical.
    Returns:
        ``path`` as a Path.
    Raises:
        FileExistsError (exists, no force), FileNotFoundError (no such directory), WeightsError,
        ValueError (a naming the plan lacks, or the neutral format).
    """
    path = Path(path)
    fmt = format_of_suffix(path)
    check_output_dir(path)
    if not force and path.exists():
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    if naming is not None and spec is None:
        raise ValueError(f"naming {naming!r}: needs the spec whose naming schemes it names")
    if spec is not None:
        spec = resolve_spec(spec)
        plan = make_plan(spec)
        check_naming(plan, naming, fmt)
        weights = check_weights(plan, weights, source=f"weights for {path}")
        if fmt != NEUTRAL:  # another naming, or the format's own module names if the plan has any (aliases)
            weights = plan.to_scheme(naming or fmt, weights)
    if on_tensor is not None:
        weights = _Reporting(weights, on_tensor)
    if fmt == NEUTRAL:
        save_weights(path, weights, spec, force=force)
        return path
    backend = native_io(fmt)
    with atomic_path(path, overwrite=force) as tmp:
        backend.save_native(tmp, weights)
    return path


# --------------------------------------------------------------------------- spec inference


_plan = functools.lru_cache(maxsize=128)(make_plan)


@functools.lru_cache(maxsize=128)
def _param_shapes(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    return {name: info.shape for name, info in make_plan(spec).params.items()}


@dataclass(frozen=True)
class Match:
    """How well a checkpoint's names and shapes fit one preset (adapted to the checkpoint)."""

    preset: str
    spec: ResNetSpec
    adaptations: dict = field(default_factory=dict)  # spec field -> value read from the shapes
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()  # "name (expected (..), found (..))"

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mis-shaped", self.mismatched)):
            if names:
                more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
                parts.append(f"{len(names)} {label}: {', '.join(names[:limit])}{more}")
        return "; ".join(parts) or "no differences"


def _adapt(preset: str, shapes: Mapping[str, tuple[int, ...]]) -> tuple[ResNetSpec, dict]:
    """The preset with in_channels and head read from the checkpoint's shapes, where they differ."""
    spec = get_spec(preset)
    adaptations: dict = {}
    found = shapes.get(f"{make_plan(spec).first_conv}.weight")  # the conv that reads the image
    if found is not None and len(found) == 4 and found[1] != spec.in_channels:
        adaptations["in_channels"] = found[1]
    head_spec = spec.head or HeadSpec()
    classifier = make_plan(dataclasses.replace(spec, head=head_spec, out_indices=None)).classifier
    fc_weight, fc_bias = shapes.get(f"{classifier}.weight"), shapes.get(f"{classifier}.bias")
    if fc_weight is None and fc_bias is None:
        if spec.head is not None:
            adaptations["head"] = None
    elif fc_weight is not None and len(fc_weight) == 2:
        if spec.head is None or fc_weight[0] != spec.head.num_classes:
            adaptations["head"] = dataclasses.replace(head_spec, num_classes=fc_weight[0])
    if adaptations:
        try:
            spec = dataclasses.replace(spec, **adaptations)
        except SpecError:  # an adaptation this preset cannot take (e.g. a head with out_indices)
            adaptations = {}
    return spec, adaptations


def _canonical_shape(plan, name: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """(canonical name, canonical shape) of a tensor called ``name`` in any of ``plan``'s namings; a
    tensor not in its scheme's shape keeps its own (so it shows as mis-shaped)."""
    alias = plan.alias_of(name)
    if alias is None:
        return name, shape
    canonical = tuple(plan.params[alias.canonical].shape)
    return alias.canonical, (canonical if shape == alias.shape else shape)


def match_presets(weights: Mapping[str, object]) -> list[Match]:
    """Every preset, adapted to the checkpoint (in_channels, head width or no head) and compared
    by names and shapes; best first (fewest differences, then zoo order)."""
    shapes = {name: tuple(np.shape(value)) for name, value in weights.items()
              if name.rsplit(".", 1)[-1] not in FRAMEWORK_EXTRAS}
    matches = []
    for preset in list_specs():
        plan = _plan(get_spec(preset))
        shapes_here = dict(_canonical_shape(plan, name, shape) for name, shape in shapes.items())  # plan.aliases
        spec, adaptations = _adapt(preset, shapes_here)
        expected = _param_shapes(spec)
        matches.append(Match(
            preset, spec, adaptations,
            missing=tuple(n for n in expected if n not in shapes_here),
            unexpected=tuple(n for n in shapes_here if n not in expected),
            mismatched=tuple(f"{n} (expected {expected[n]}, found {shapes_here[n]})"
                             for n in expected if n in shapes_here and shapes_here[n] != expected[n]),
        ))
    return sorted(matches, key=lambda m: m.differences)  # stable: zoo order breaks ties


def _describe_adaptations(adaptations: Mapping) -> str:
    parts = []
    for key, value in adaptations.items():
        if key == "head":
            parts.append("no head" if value is None else f"num_classes={value.num_classes}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def infer_spec(weights: Mapping[str, object], *, source: str = "weights") -> ResNetSpec:
    """The spec of a checkpoint, from its names and shapes: the first preset (zoo order) whose
    parameter table matches exactly, with ``in_channels`` (the stem conv's dim 1), the head width
    (``fc.weight`` rows) or no head (no ``fc.*``) read from the shapes.

    Shapes cannot tell stride position, dilation or BN epsilon apart; pass a spec when the
    network differs from the preset in those.

    Raises:
        WeightsError: no preset matches; the message names the closest preset and what differs.
    Example:
        >>> infer_spec(torchvision.models.resnet50(num_classes=10).state_dict()).head.num_classes
        10
    """
    if not weights:
        raise WeightsError(f"{source}: no tensors, so no spec can be inferred")
    matches = match_presets(weights)
    best = matches[0]
    if best.differences == 0:
        return best.spec
    adapted = f" (adapted: {_describe_adaptations(best.adaptations)})" if best.adaptations else ""
    raise WeightsError(
        f"{source}: the names and shapes match no preset; the closest is {best.preset!r}{adapted} with "
        f"{best.differences} difference(s): {best.describe()}. Pass spec= (--spec) with the right spec.",
        best.missing, best.unexpected, best.mismatched)


# --------------------------------------------------------------------------- convert


def _progress_bar(progress: bool | None, total: int, desc: str):
    """A tqdm bar on stderr: shown when stderr is a terminal (progress=None) or when forced."""
    from tqdm import tqdm

    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not progress, leave=True, dynamic_ncols=True)


def convert(src: str | os.PathLike, dst: str | os.PathLike, spec=None, *, dtype=None, force: bool = False,
            progress: bool | None = None, prefix: str | None = None, naming: str | None = None) -> Path:
    """Convert a checkpoint between any two formats (also to the same format).

    Reads ``src`` into canonical weights, checks them against ``spec`` (given, stored in a
    neutral file, or inferred from the names and shapes) and writes ``dst`` in the format of
    its suffix. Tensors keep their dtype (float16, bfloat16, float32, float64), bit for bit,
    unless ``dtype`` is given. Tensors holding NaN or Inf are converted as they are, with a
    NonFiniteWarning naming them.

    Args:
        src: input checkpoint (``.pt``/``.pth``, ``.pdparams``, ``.msgpack``, ``.safetensors``);
            only read.
        dst: output checkpoint; written to a temporary file and renamed when complete, with
            normal file permissions. Its directory must exist: it is not created (a mistyped path
            fails instead of making a new tree), checked before any work is done.
        spec: ResNetSpec, preset name or spec file; default: the spec stored in ``src`` (neutral
            files) or inferred by ``infer_spec``.
        dtype: "float32", "float16", "bfloat16" or "float64": cast every tensor on the way.
            Widening (e.g. bfloat16 -> float32) is exact; a cast that changes values warns
            (PrecisionWarning) with the largest relative change, ``max|cast - x| / max|x|``
            per tensor, and names tensors that overflowed to inf. Default: keep each tensor's dtype.
        force: overwrite an existing ``dst`` (checked before any work is done).
        progress: tqdm progress bar on stderr: None shows it when stderr is a terminal,
            True/False force it on/off.
        prefix: read only the tensors whose names start with it (``"backbone."``), without it: a
            whole detector saved around its backbone. Default: when neither ``spec`` nor the file
            gives the spec and the names match no preset, the one top-level prefix under which they
            match one is found and used. Either way a PrefixWarning says how many tensors were left out.
        naming: write ``dst`` under this naming scheme of the spec (``Plan.schemes``): "timm" for a
            ConvNeXt writes timm's ``convnext_*`` names and shapes. Default: canonical names (or the
            format's own, Paddle's DenseNet names). Reading needs no such argument: every naming
            the spec declares is read as it is.
    Returns:
        ``dst`` as a Path.
    Raises:
        FileNotFoundError (no src, or no directory for dst), FileExistsError (dst exists, no
        force), KeyError/SpecError (bad spec), ValueError (bad dtype, a naming the spec lacks),
        CheckpointError (unreadable src), WeightsError (tensors do not fit the spec).
    Example:
        >>> rm.convert("resnet50.pth", "resnet50.pdparams")
        >>> rm.convert("resnet50_bf16.pth", "resnet50.safetensors", dtype="float32")  # exact
        >>> rm.convert("convnext_tiny.safetensors", "timm_convnext_tiny.pth", naming="timm")
    """
    src, dst = Path(src), Path(dst)
    dst_format = format_of_suffix(dst)
    format_of_suffix(src)
    if spec is not None:
        spec = resolve_spec(spec)  # a bad spec fails before any file is touched
        check_naming(make_plan(spec), naming, dst_format)  # and so does a naming it lacks
    elif naming is not None and dst_format == NEUTRAL:
        check_naming(None, naming, dst_format)
    target = resolve_dtype(dtype) if dtype is not None else None  # so does a bad dtype
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    check_output_dir(dst)  # first: an output that is a directory is no file to refuse or overwrite
    if dst.exists():
        if os.path.samefile(src, dst):
            raise ValueError(f"{dst}: output is the input file; the input is never modified")
        if not force:
            raise FileExistsError(f"{dst} exists; pass force=True (--force) to overwrite it")
    if dst_format != NEUTRAL:
        native_io(dst_format)  # a missing framework the format needs fails before the input is read
    src_size = src.stat().st_size
    with _progress_bar(progress, total=2 * src_size, desc=f"read {src.name}") as bar:
        _, weights, _, file_spec = _read(src)
        bar.update(src_size)
        weights = _apply_prefix(weights, prefix, str(src), detect=spec is None and file_spec is None)
        spec = spec or file_spec or infer_spec(weights, source=str(src))
        checked = check_weights(make_plan(spec), weights, source=str(src))
        warn_nonfinite(checked, source=str(src))
        if target is not None:
            checked = cast_weights(checked, target, source=f"{src} -> {dst}", stacklevel=3)  # the caller's line
        # the write half of the bar advances by each tensor's share of the file's size
        scale = src_size / max(1, sum(a.nbytes for a in checked.values()))
        bar.set_description(f"write {dst.name}")
        write_canonical(dst, checked, spec, force=force, on_tensor=lambda a: bar.update(a.nbytes * scale),
                        naming=naming)
        bar.update(bar.total - bar.n)
    return dst


# --------------------------------------------------------------------------- inspect


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


_STATS = ("running_mean", "running_var")


def tensor_group(name: str, weights: Mapping[str, object]) -> str:
    """The kind of layer a canonical tensor belongs to, from names and ranks alone (no spec needed):
    "conv", "linear" or "norm" by the rank of its module's ``weight`` (4, 2 or 1; a bias goes with
    its module), "norm stats" for running means and variances, "other" for anything else."""
    module, _, last = name.rpartition(".")
    if last in _STATS:
        return "norm stats"
    weight = weights.get(f"{module}.weight" if module else "weight")
    ndim = np.ndim(weight) if weight is not None else np.ndim(weights[name])
    return {4: "conv", 2: "linear", 1: "norm"}.get(ndim, "other")


@dataclass
class InspectReport:
    """What ``inspect_file`` found: format, tensors, sizes, dtypes and the matching spec."""

    path: str
    format: str
    file_bytes: int
    tensor_count: int
    tensor_bytes: int
    dtypes: dict[str, int]                  # dtype name -> number of tensors
    dtype_groups: dict[str, dict[str, int]]  # tensor group (tensor_group) -> dtype name -> number
    nonfinite: dict[str, str]               # tensors holding NaN/Inf -> "2 NaN, 1 Inf"
    extras: list[str]                       # framework extras left out (num_batches_tracked)
    stored_spec: str | None                 # name of the spec stored in the file (neutral files)
    preset: str | None                      # the matching preset, or None
    adaptations: dict                       # what was read from the shapes (in_channels, head)
    also_matches: list[str]                 # other presets with the same names and shapes
    closest: str | None                     # without a match: the closest preset ...
    differences: dict[str, list[str]]       # ... and what differs: missing/unexpected/mismatched
    naming: str | None = None               # the naming scheme of the names, when not canonical ("timm")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["adaptations"] = {k: (None if v is None else v.num_classes) if k == "head" else v
                               for k, v in self.adaptations.items()}
        return data

    def __str__(self) -> str:
        suffixes = "/".join(s for s, f in formats().items() if f == self.format)
        extras = f" (+{len(self.extras)} {FRAMEWORK_EXTRAS[0]} left out)" if self.extras else ""
        lines = [
            f"file      {self.path}",
            f"format    {self.format} ({suffixes})",
            f"tensors   {self.tensor_count}{extras}",
            f"size      {_megabytes(self.tensor_bytes)} of tensors ({self.tensor_bytes:,} bytes); "
            f"file {_megabytes(self.file_bytes)}",
            f"dtypes    {', '.join(f'{d} ({n})' for d, n in self.dtypes.items())}",
        ]
        width = max((len(group) for group in self.dtype_groups), default=0)
        for group, dtypes in self.dtype_groups.items():
            lines.append(f"  {group:<{width}}  {', '.join(f'{d} ({n})' for d, n in dtypes.items())}")
        if self.nonfinite:
            listed = ", ".join(f"{name} ({what})" for name, what in list(self.nonfinite.items())[:10])
            more = f", ... ({len(self.nonfinite) - 10} more)" if len(self.nonfinite) > 10 else ""
            lines.append(f"NaN/Inf   {len(self.nonfinite)} tensor(s): {listed}{more}")
        if self.stored_spec is not None:
            lines.append(f"spec      {self.stored_spec} (stored in the file)")
        if self.preset is not None:
            adapted = f", with {_describe_adaptations(self.adaptations)}" if self.adaptations else ""
            also = f" (same names and shapes: {', '.join(self.also_matches)})" if self.also_matches else ""
            lines.append(f"preset    {self.preset}{adapted}{also}")
        if self.naming is not None:
            lines.append(f"names     {self.naming} names (read as the canonical tensors they stand for)")
        elif self.closest is not None:
            m = Match(self.closest, get_spec(self.closest), self.adaptations,
                      *(tuple(self.differences[k]) for k in ("missing", "unexpected", "mismatched")))
            adapted = f" (with {_describe_adaptations(self.adaptations)})" if self.adaptations else ""
            lines.append(f"preset    none matches; closest {self.closest}{adapted}, {m.differences} "
                         f"difference(s): {m.describe()}")
        return "\n".join(lines)


def inspect_file(path: str | os.PathLike, *, prefix: str | None = None) -> InspectReport:
    """Format, tensor count, size, dtypes (overall and per tensor group: conv, norm, norm stats,
    linear) of a checkpoint, which preset it matches, the naming scheme of its names when they are
    not canonical (``naming``: "timm" for timm's ConvNeXt names, "legacy" for torchvision's old
    DenseNet keys), and which tensors hold NaN or Inf (also warned, NonFiniteWarning).

    ``prefix``: as ``convert``'s (given, or found when no preset matches the names as they are).

    Raises:
        FileNotFoundError, ValueError (unknown suffix), CheckpointError (unreadable content).
    Example:
        >>> print(rm.inspect_file("resnet50.pth"))
    """
    path = Path(path)
    fmt, weights, extras, stored = _read(path)
    weights = _apply_prefix(weights, prefix, str(path), detect=stored is None)
    dtypes: dict[str, int] = {}
    groups: dict[str, dict[str, int]] = {}
    for name, array in weights.items():
        dtypes[str(array.dtype)] = dtypes.get(str(array.dtype), 0) + 1
        group = groups.setdefault(tensor_group(name, weights), {})
        group[str(array.dtype)] = group.get(str(array.dtype), 0) + 1
    nonfinite = warn_nonfinite(weights, source=str(path))
    matches = match_presets(weights) if weights else []
    exact = [m for m in matches if m.differences == 0]
    best = exact[0] if exact else (matches[0] if matches else None)
    naming = _plan(best.spec).scheme_of(weights) if best is not None else None
    return InspectReport(
        path=str(path), format=fmt, file_bytes=path.stat().st_size, tensor_count=len(weights),
        tensor_bytes=int(sum(a.nbytes for a in weights.values())), dtypes=dtypes,
        dtype_groups=groups, nonfinite=nonfinite, extras=extras,
        stored_spec=stored.name if stored is not None else None,
        preset=best.preset if exact else None,
        adaptations=dict(best.adaptations) if best else {},
        also_matches=[m.preset for m in exact[1:]],
        closest=None if exact or best is None else best.preset,
        differences={} if exact or best is None else {
            "missing": list(best.missing), "unexpected": list(best.unexpected),
            "mismatched": list(best.mismatched)},
        naming=naming,
    )
