"""The framework-neutral ResNet description: frozen dataclasses, validation, dict/JSON/YAML.

A spec says *what* the network is (block kind, depths, channels, strides, stem, shortcut, head,
numerics); the block kind's family (``resnet_multi.families``) turns it into an explicit plan.
``validate_spec`` checks the common fields and hands the kind's own settings to its family's
validation; every error names the field path and the bad value, e.g.
``stages[2].stride: must be >= 1, got 0``.

The dataclasses are the spec file format (every safetensors file embeds one as JSON), so
``BlockSpec`` and ``StageSpec`` keep every family's fields; which family reads which field is
declared by the family (``BlockFamily``), and a field its kind does not read must keep its default.

BatchNorm momentum follows PyTorch's convention: the weight of the NEW batch statistic
(0.1 by default). Backends translate (Paddle and Flax take 1 - momentum).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SPEC_FORMAT_VERSION = 1
ADDED_FIELD = "resnet_multi.added_field"
"""Metadata of a field added after format version 1: it is written only when set, so that every
spec that does not use it (every file written before it existed) reads and writes as before."""

DEFAULT_EXPANSION = {"basic": 1, "bottleneck": 4, "basic_1x1": 1}
"""``block.expansion`` when unset, by residual kind (output channels = ``channels * expansion``)."""
DEFAULT_BN_SIZE = 4
"""DenseNet's bottleneck: the 1x1 conv of a dense layer has ``bn_size * growth_rate`` outputs."""
DEFAULT_COMPRESSION = 0.5
"""DenseNet's transitions keep ``floor(channels * compression)`` channels (torchvision: ``c // 2``)."""
CONV_INITS = ("kaiming_normal_fan_out", "kaiming_normal_fan_in", "torch_default", "trunc_normal")
"""trunc_normal: a normal of std 0.02 truncated at +-2 (absolute), for convs and linears alike, biases
zero (torchvision's ConvNeXt, HorNet)."""
LINEAR_BIAS_INITS = ("torch_default", "zeros")
"""torch_default: uniform in +-1/sqrt(fan_in), as nn.Linear. zeros: torchvision's DenseNet."""
RUNNING_VAR_ESTIMATORS = ("unbiased", "biased")
"""How train-mode BatchNorm updates its running variance. unbiased: the batch variance times
n/(n-1), as PyTorch's BatchNorm. biased: the batch variance itself, as Paddle's, Flax's and
Keras'. (Both normalize the batch with the biased variance; only the stored statistic differs.)"""


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's make_divisible: ``value`` rounded to the nearest multiple of ``divisor`` (at least
    ``divisor``), one step up if rounding lost more than ``1 - round_limit`` of it. Channel widths
    of width-multiplied networks and squeeze-excite reductions use it.

    Example:
        >>> make_divisible(72 * 0.25, 4)
        20
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


class SpecError(ValueError):
    """An invalid spec. The message names the field path and the bad value."""


@dataclass(frozen=True)
class StemSpec:
    """The stem: one conv (``widths=(64,)``) or a deep stem of 3x3 convs (``widths=(32, 32, 64)``).

    Each conv is followed by BN and ReLU; only the first conv has ``stride``. ``pool`` adds
    a 3x3/2 max-pool (padding 1).
    """

    widths: tuple[int, ...] = (64,)
    kernel_size: int = 7
    stride: int = 2
    pool: bool = True

    def __post_init__(self):
        _freeze_lists(self, "widths")


@dataclass(frozen=True)
class BlockSpec:
    """The block used by every stage; ``kind`` is one of ``block_kinds()`` (a registered family).

    ``groups`` and ``width_per_group`` are ResNeXt's cardinality and bottleneck width
    (the 3x3's width is ``int(channels * width_per_group / 64) * groups``); they apply to
    the bottleneck only. ``stride_on`` places a bottleneck's stride on the "3x3"
    (torchvision, "v1.5") or on the first "1x1" (the original paper, Keras: "v1").
    ``se_ratio`` > 0 adds squeeze-and-excitation before the residual add.

    A ``dense`` block (DenseNet) reads ``growth_rate`` (the channels each layer adds; required),
    ``bn_size`` (the 1x1 bottleneck has ``bn_size * growth_rate`` channels; 0: no bottleneck, a
    layer is BN-ReLU-Conv3x3 as in d2l; default 4), ``compression`` (a transition keeps
    ``floor(channels * compression)`` channels; default 0.5) and ``drop_rate`` (in train mode,
    dropout on each layer's new features before they are concatenated, torchvision's
    ``drop_rate``; default 0). Other kinds leave them unset. A ``vgg`` block (VGG) reads
    ``batch_norm``: a BatchNorm after every conv (torchvision's ``vgg*_bn``). ``convnext`` and
    ``hornet`` blocks read ``drop_path_rate`` (the stochastic depth of the last block; earlier
    blocks get a linear ramp from 0, as their references) and ``layer_scale`` (the initial value
    of every layer-scale parameter; 0: none). A ``ghost`` block (GhostNet) is set
    per block in ``stages[i].blocks``.
    """

    kind: str = "basic"
    expansion: int | None = None
    stride_on: str = "3x3"
    groups: int = 1
    width_per_group: int = 64
    se_ratio: float = 0.0
    growth_rate: int | None = None
    bn_size: int | None = None
    compression: float | None = None
    drop_rate: float | None = None
    batch_norm: bool = field(default=False, metadata={ADDED_FIELD: True})
    drop_path_rate: float = field(default=0.0, metadata={ADDED_FIELD: True})
    layer_scale: float = field(default=0.0, metadata={ADDED_FIELD: True})

    @property
    def resolved_expansion(self) -> int:
        return DEFAULT_EXPANSION.get(self.kind, 1) if self.expansion is None else self.expansion

    @property
    def resolved_bn_size(self) -> int:
        return DEFAULT_BN_SIZE if self.bn_size is None else self.bn_size

    @property
    def resolved_compression(self) -> float:
        return DEFAULT_COMPRESSION if self.compression is None else self.compression

    @property
    def resolved_drop_rate(self) -> float:
        return 0.0 if self.drop_rate is None else float(self.drop_rate)

    def transition_channels(self, channels: int) -> int:
        """A dense transition's output channels: ``floor(channels * compression)`` (torchvision's
        ``channels // 2`` at the default 0.5)."""
        return int(channels * self.resolved_compression)


@dataclass(frozen=True)
class BlockSettings:
    """One block's own settings, for block kinds set per block (``ghost``; timm's GhostNet cfgs).

    A ghost bottleneck: ghost module (in -> ``mid_channels``, ReLU); when ``stride`` > 1 a
    depthwise ``kernel_size`` conv with that stride + BN; squeeze-excite when ``se_ratio`` > 0
    (hard-sigmoid gate, reduced channels rounded by make_divisible(divisor=4)); ghost module
    (-> ``channels``, no ReLU); plus the shortcut (identity, or depthwise ``kernel_size``/stride
    conv + BN + 1x1 conv + BN when the stride or the channel count changes); no ReLU after the add.
    """

    channels: int
    mid_channels: int
    kernel_size: int = 3
    stride: int = 1
    se_ratio: float = 0.0


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` blocks of ``channels`` planes (output = channels x expansion).

    ``dilate`` replaces the stage's stride by dilation, as torchvision's
    ``replace_stride_with_dilation`` (output stride 16 or 8).

    By block kind: residual kinds need ``depth`` and ``channels``. ``dense`` needs ``depth``
    (layers), no ``channels`` (``block.growth_rate`` sets them); every stage but the first
    starts with a transition (BN-ReLU-Conv1x1, then AvgPool ``stride`` x ``stride`` when
    ``stride`` > 1), so the first stage's stride must be 1. ``ghost`` takes ``blocks`` (one
    BlockSettings per block) and nothing else. ``hornet`` reads ``order`` (the gnconv's order) and
    ``global_filter`` ((h, w) of the global filter's weight; null: a depthwise 7x7 conv instead).
    """

    depth: int | None = None
    channels: int | None = None
    stride: int = 1
    dilate: bool = False
    blocks: tuple[BlockSettings, ...] | None = None
    order: int | None = field(default=None, metadata={ADDED_FIELD: True})
    global_filter: tuple[int, int] | None = field(default=None, metadata={ADDED_FIELD: True})

    def __post_init__(self):
        _freeze_lists(self, "blocks")

    @property
    def num_blocks(self) -> int:
        """How many blocks the stage has (``depth``, or the number of per-block settings)."""
        return len(self.blocks) if self.blocks is not None else self.depth


@dataclass(frozen=True)
class ShortcutSpec:
    """How a block's input reaches the add when shapes change (see SHORTCUT_KINDS, SHORTCUT_WHEN)."""

    kind: str = "conv_bn"
    when: str = "auto"


@dataclass(frozen=True)
class HeadSpec:
    """Global average pool, [a 1x1 conv with bias + ReLU of ``hidden_channels`` (timm's
    ``conv_head``, GhostNet)], optional dropout, then a linear layer of ``num_classes`` outputs."""

    num_classes: int = 1000
    dropout: float = 0.0
    hidden_channels: int | None = None


@dataclass(frozen=True)
class NormSpec:
    """BatchNorm numerics. ``momentum`` is PyTorch's: the weight of the new batch statistic.
    ``running_var`` is the train-mode estimator stored in the running variance (one of
    RUNNING_VAR_ESTIMATORS): "unbiased" (PyTorch's, the default, so spec files written before
    this field read as before) or "biased" (Paddle's, Flax's, Keras')."""

    eps: float = 1e-5
    momentum: float = 0.1
    running_var: str = "unbiased"


@dataclass(frozen=True)
class InitSpec:
    """Initialisation. ``conv``: one of CONV_INITS. ``zero_init_last_bn`` zeroes each block's
    last BN scale (torchvision's ``zero_init_residual``). ``linear_bias``: one of
    LINEAR_BIAS_INITS, for the head's linear layers."""

    conv: str = "kaiming_normal_fan_out"
    zero_init_last_bn: bool = False
    linear_bias: str = "torch_default"


@dataclass(frozen=True)
class ResNetSpec:
    """A whole ResNet. ``head=None`` returns the last feature map; ``out_indices`` (0-based stage
    indices, no head allowed) returns several stage outputs at once."""

    name: str
    stages: tuple[StageSpec, ...]
    block: BlockSpec = field(default_factory=BlockSpec)
    stem: StemSpec = field(default_factory=StemSpec)
    shortcut: ShortcutSpec = field(default_factory=ShortcutSpec)
    head: HeadSpec | None = field(default_factory=HeadSpec)
    in_channels: int = 3
    conv_bias: bool = False
    out_indices: tuple[int, ...] | None = None
    norm: NormSpec = field(default_factory=NormSpec)
    init: InitSpec = field(default_factory=InitSpec)

    def __post_init__(self):
        _freeze_lists(self, "stages", "out_indices")
        validate_spec(self)

    def replace(self, **changes) -> "ResNetSpec":
        """A copy with some top-level fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON/YAML-ready) with the format version."""
        return {"format_version": SPEC_FORMAT_VERSION, **_to_plain(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResNetSpec":
        """Build and validate a spec from a dict; unknown keys are an error."""
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", SPEC_FORMAT_VERSION)
        if version != SPEC_FORMAT_VERSION:
            raise SpecError(
                f"format_version: this resnet_multi reads version {SPEC_FORMAT_VERSION}, got {version!r}"
            )
        return _from_plain(cls, data, "")


# --------------------------------------------------------------------------- validation


def _freeze_lists(obj, *names: str) -> None:
    """Accept lists where tuples are declared (friendlier in Python code), store tuples."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, list):
            object.__setattr__(obj, name, tuple(value))


def check(ok: bool, path: str, message: str, value: Any) -> None:
    """Raise SpecError ``"<path>: <message>, got <value>"`` unless ``ok``: the one form of every
    spec error, used by the families' validation too."""
    if not ok:
        raise SpecError(f"{path}: {message}, got {value!r}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_positive_int(v: Any, path: str, minimum: int = 1) -> None:
    check(is_int(v), path, "must be an integer", v)
    check(v >= minimum, path, f"must be >= {minimum}", v)


def check_one_of(v: Any, choices: tuple[str, ...], path: str) -> None:
    check(v in choices, path, f"must be one of {', '.join(repr(c) for c in choices)}", v)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- block families


@dataclass(frozen=True)
class BlockFamily:
    """A block family as it registers itself (``resnet_multi.families``): the block kinds it
    builds, which spec settings it reads, its validation of them, and its plan builder.

    A setting the family does not read must keep its default: ``block_fields`` (of BlockSpec),
    ``stage_fields`` (of StageSpec) and ``spec_fields`` (the optional spec features of
    ``OPTIONAL_SPEC_FEATURES``) list what it reads. ``validate(spec)`` checks what it reads and
    raises SpecError; ``build(param_builder) -> (stem, stages, neck, head)`` makes its plan parts.
    """

    name: str
    kinds: tuple[str, ...]
    block_fields: tuple[str, ...]
    stage_fields: tuple[str, ...]
    spec_fields: tuple[str, ...]
    validate: Callable[["ResNetSpec"], None]
    build: Callable[[Any], tuple]


_BLOCK_FAMILIES: dict[str, BlockFamily] = {}


def register_block_family(family: BlockFamily) -> BlockFamily:
    """Make ``family``'s kinds valid ``block.kind`` values (each family module does this once)."""
    for kind in family.kinds:
        if kind in _BLOCK_FAMILIES:
            raise ValueError(f"block kind {kind!r} is registered twice ({_BLOCK_FAMILIES[kind].name}, {family.name})")
        _BLOCK_FAMILIES[kind] = family
    return family


def block_kinds() -> tuple[str, ...]:
    """Every registered ``block.kind``, in registration order."""
    return tuple(_BLOCK_FAMILIES)


def block_family(kind: str) -> BlockFamily:
    """The family that builds block ``kind`` (raises SpecError for an unknown kind)."""
    check_one_of(kind, block_kinds(), "block.kind")
    return _BLOCK_FAMILIES[kind]


def __getattr__(name: str):
    """``BLOCK_KINDS`` and ``RESIDUAL_KINDS``, as before the registry: views of it."""
    if name == "BLOCK_KINDS":
        return block_kinds()
    if name == "RESIDUAL_KINDS":
        return block_family("basic").kinds
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


OPTIONAL_SPEC_FEATURES: dict[str, tuple[Callable[["ResNetSpec"], bool], str]] = {
    "shortcut": (lambda spec: spec.shortcut == ShortcutSpec(), "is fixed by a {kind!r} block; leave it out"),
    "stem.widths": (lambda spec: len(spec.stem.widths) == 1,
                    "must be one width for a {kind!r} network (one stem conv)"),
    "init.zero_init_last_bn": (lambda spec: spec.init.zero_init_last_bn is False,
                               "must be false for a {kind!r} network (it has no residual's last BN to zero)"),
}
"""Spec settings beyond the block and stages that only some families read: path -> (the spec
leaves it at its default, the error when a family that does not read it is given another value)."""


def _unread_message(kind: str, value_default: Any, readers: tuple[str, ...], plural: bool) -> str:
    """Why a setting that block ``kind`` does not read must keep its default."""
    blocks = "blocks" if plural else "block"
    article = "" if plural else "a "
    if value_default is not None:
        default = str(value_default).lower() if isinstance(value_default, bool) else repr(value_default)
        return f"must be {default} for {article}{kind!r} {blocks}"
    if len(readers) == 1:
        return f"is only for {readers[0]!r} blocks, not {kind!r}; leave it out"
    return f"is not used by {article}{kind!r} {blocks}; leave it out"


def _check_unread_settings(spec: "ResNetSpec", family: BlockFamily) -> None:
    """Every setting ``family`` does not read is left at its default (so nothing is silently ignored)."""
    kind = spec.block.kind

    def readers(attribute: str, name: str) -> tuple[str, ...]:
        return tuple(k for k, f in _BLOCK_FAMILIES.items() if name in getattr(f, attribute))

    for f in dataclasses.fields(BlockSpec):
        value = getattr(spec.block, f.name)
        if f.name != "kind" and f.name not in family.block_fields and value != f.default:
            check(False, f"block.{f.name}", _unread_message(kind, f.default, readers("block_fields", f.name), False),
                  value)
    for i, stage in enumerate(spec.stages):
        for f in dataclasses.fields(StageSpec):
            value = getattr(stage, f.name)
            if f.name not in family.stage_fields and value != f.default:
                check(False, f"stages[{i}].{f.name}",
                      _unread_message(kind, f.default, readers("stage_fields", f.name), True), value)
    for path, (is_default, message) in OPTIONAL_SPEC_FEATURES.items():
        if path not in family.spec_fields and not is_default(spec):
            value = spec
            for part in path.split("."):
                value = getattr(value, part)
            check(False, path, message.format(kind=kind), value)


FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
"""The largest finite float32 and the smallest normal one: a float setting outside
``[FLOAT32_TINY, FLOAT32_MAX]`` in magnitude (but 0) cannot be held by a float32 model."""


def _float_fields(obj: Any, path: str):
    """``(path, value)`` of every float-typed setting of dataclass ``obj``, recursively."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            yield from _float_fields(value, where)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _float_fields(item, f"{where}[{i}]")
        elif float in (typing.get_args(hints[f.name]) or (hints[f.name],)) and is_number(value):
            yield where, value


def check_float_settings(spec: "ResNetSpec") -> None:
    """Every float setting is finite and means something in float32: 0, or a magnitude between
    FLOAT32_TINY and FLOAT32_MAX (``norm.eps: .inf`` or ``1e39`` would make every output NaN or
    infinite, and ``1e-50`` is 0 in a float32 model)."""
    for path, value in _float_fields(spec, ""):
        magnitude = abs(float(value))
        check(math.isfinite(magnitude) and (magnitude == 0 or FLOAT32_TINY <= magnitude <= FLOAT32_MAX), path,
              "must be a finite number that float32 can hold (0, or a magnitude in [1.2e-38, 3.4e38])", value)


def check_odd_stem_kernel(spec: "ResNetSpec") -> None:
    """The stem's convs pad symmetrically ('same'-style), which needs an odd kernel."""
    check(spec.stem.kernel_size % 2 == 1, "stem.kernel_size", "must be odd (symmetric padding)",
          spec.stem.kernel_size)


def _check_stage(i: int, stage: StageSpec) -> None:
    """What every stage must be, whatever the family."""
    p = f"stages[{i}]"
    check(isinstance(stage, StageSpec), p, "must be a stage spec", stage)
    check_positive_int(stage.stride, f"{p}.stride")
    check(isinstance(stage.dilate, bool), f"{p}.dilate", "must be true or false", stage.dilate)


def validate_spec(spec: ResNetSpec) -> None:
    """Raise SpecError naming every invalid field (``"a: ...; b: ..."``): the common fields here, the
    block kind's own settings in its family's ``validate`` (``resnet_multi.families``). Independent
    sections are all checked; one whose checks depend on another (the family's, on the stages) only
    when that one is valid."""
    errors: list[str] = []

    def section(checks) -> bool:
        try:
            checks()
        except SpecError as exc:
            errors.append(str(exc.args[0] if exc.args else exc))
            return False
        return True

    section(lambda: check(isinstance(spec.name, str) and spec.name != "", "name", "must be a non-empty string",
                          spec.name))
    section(lambda: check_positive_int(spec.in_channels, "in_channels"))
    section(lambda: check(isinstance(spec.conv_bias, bool), "conv_bias", "must be true or false", spec.conv_bias))
    section(lambda: _check_stem(spec.stem))
    families: list = []
    block_ok = section(lambda: (check(isinstance(spec.block, BlockSpec), "block", "must be a block spec", spec.block),
                                families.append(block_family(spec.block.kind))))
    stages_ok = section(lambda: check(isinstance(spec.stages, tuple) and len(spec.stages) >= 1, "stages",
                                      "must be a non-empty list of stages", spec.stages))
    if stages_ok:
        stages_ok = all([section(lambda i=i, stage=stage: _check_stage(i, stage))  # a list: every stage checked
                         for i, stage in enumerate(spec.stages)])
    shortcut_ok = section(lambda: check(isinstance(spec.shortcut, ShortcutSpec), "shortcut", "must be a shortcut spec",
                                        spec.shortcut))
    if block_ok and stages_ok and shortcut_ok:
        section(lambda: (_check_unread_settings(spec, families[0]), families[0].validate(spec)))
    section(lambda: _check_head(spec))
    if stages_ok:
        section(lambda: _check_out_indices(spec))
    section(lambda: _check_norm(spec.norm))
    section(lambda: _check_init(spec.init))
    if not errors:  # walks every field: only once their types are known to be right
        section(lambda: check_float_settings(spec))
    if errors:
        raise SpecError("; ".join(errors))


def _check_stem(stem) -> None:
    check(isinstance(stem, StemSpec), "stem", "must be a stem spec", stem)
    check(isinstance(stem.widths, tuple) and len(stem.widths) >= 1, "stem.widths",
          "must be a non-empty list of channel counts", stem.widths)
    for i, w in enumerate(stem.widths):
        check_positive_int(w, f"stem.widths[{i}]")
    check_positive_int(stem.kernel_size, "stem.kernel_size")
    check_positive_int(stem.stride, "stem.stride")
    check(isinstance(stem.pool, bool), "stem.pool", "must be true or false", stem.pool)


def _check_head(spec: ResNetSpec) -> None:
    if spec.head is not None:
        check(isinstance(spec.head, HeadSpec), "head", "must be a head spec or null", spec.head)
        check_positive_int(spec.head.num_classes, "head.num_classes")
        check(isinstance(spec.head.dropout, (int, float)) and 0.0 <= spec.head.dropout < 1.0,
              "head.dropout", "must be a number in [0, 1)", spec.head.dropout)
        if spec.head.hidden_channels is not None:
            check_positive_int(spec.head.hidden_channels, "head.hidden_channels")


def _check_out_indices(spec: ResNetSpec) -> None:
    if spec.out_indices is not None:
        check(isinstance(spec.out_indices, tuple) and len(spec.out_indices) >= 1, "out_indices",
              "must be a non-empty list of stage indices or null", spec.out_indices)
        check(spec.head is None, "out_indices", "needs head: null (a feature pyramid has no head)",
              spec.out_indices)
        for i, idx in enumerate(spec.out_indices):
            check(is_int(idx) and 0 <= idx < len(spec.stages), f"out_indices[{i}]",
                  f"must be a stage index in 0..{len(spec.stages) - 1}", idx)
        check(list(spec.out_indices) == sorted(set(spec.out_indices)), "out_indices",
              "must be strictly increasing", spec.out_indices)


def _check_norm(norm) -> None:
    check(isinstance(norm, NormSpec), "norm", "must be a norm spec", norm)
    check(isinstance(norm.eps, (int, float)) and not isinstance(norm.eps, bool) and norm.eps > 0,
          "norm.eps", "must be a positive number", norm.eps)
    check(isinstance(norm.momentum, (int, float)) and not isinstance(norm.momentum, bool)
          and 0.0 <= norm.momentum <= 1.0, "norm.momentum",
          "must be a number in [0, 1] (PyTorch convention: weight of the new statistic)", norm.momentum)
    check_one_of(norm.running_var, RUNNING_VAR_ESTIMATORS, "norm.running_var")


def _check_init(init) -> None:
    check(isinstance(init, InitSpec), "init", "must be an init spec", init)
    check_one_of(init.conv, CONV_INITS, "init.conv")
    check_one_of(init.linear_bias, LINEAR_BIAS_INITS, "init.linear_bias")
    check(isinstance(init.zero_init_last_bn, bool), "init.zero_init_last_bn", "must be true or false",
          init.zero_init_last_bn)


# --------------------------------------------------------------------------- dict round trip


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get(ADDED_FIELD) and getattr(obj, f.name) == f.default)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, recursively, rejecting unknown keys."""
    where = path or "spec"
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    required = [n for n, f in fields.items() if n not in kwargs
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise SpecError(f"{where}: missing required key(s) {', '.join(map(repr, required))}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{path}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float and is_int(value):
        return float(value)
    return value  # scalar types are checked by validate_spec, with the field path


# --------------------------------------------------------------------------- files


def _read_mapping(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a spec file is JSON or "
                        "YAML text") from None
    if not text.strip():
        raise SpecError(f"{path}: the file is empty; a spec file holds a mapping (name, stages, ...)")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not valid JSON ({exc})") from None
    import yaml  # PyYAML reads JSON too, but JSON errors are clearer from json

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # one line: PyYAML's own message quotes the text under a caret
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = " ".join(str(problem or exc).split())
        raise SpecError(f"{path}: not valid YAML ({reason}{where})") from None


def load_spec(path: str | os.PathLike) -> ResNetSpec:
    """Read a spec from a JSON (``.json``) or YAML (``.yaml``/``.yml``) file.

    Args:
        path: the file.
    Returns:
        The validated ResNetSpec.
    Example:
        >>> spec = rm.load_spec("my_net.yaml")
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"spec file not found: {path}") from None
    except OSError as exc:  # a symlink loop, no permission on a directory on the way
        raise SpecError(f"{path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(f"{path}: is a directory, not a spec file" if stat.S_ISDIR(info.st_mode)
                        else f"{path}: not a regular file")
    try:
        return ResNetSpec.from_dict(_read_mapping(path))
    except SpecError as exc:
        message = str(exc.args[0] if exc.args else exc)
        raise SpecError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None


def save_spec(spec: ResNetSpec, path: str | os.PathLike) -> None:
    """Write ``spec`` as JSON or YAML (by suffix), atomically (temporary file, then rename)."""
    from .io_util import atomic_write_text

    path = Path(path)
    data = spec.to_dict()
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise SpecError(f"{path}: unknown spec file suffix {path.suffix!r}; use .json, .yaml or .yml")
    atomic_write_text(path, text)
