"""The framework-neutral ResNet description: frozen dataclasses, validation, dict/JSON/YAML.

A spec says *what* the network is (block kind, depths, channels, strides, stem, shortcut, head,
numerics); `plan.py` turns it into explicit layers. Validation lives in one place,
`validate_spec`, and every error names the field path and the bad value, e.g.
``stages[2].stride: must be >= 1, got 0``.

BatchNorm momentum follows PyTorch's convention: the weight of the NEW batch statistic
(0.1 by default). Backends translate (Paddle and Flax take 1 - momentum).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_FORMAT_VERSION = 1

BLOCK_KINDS = ("basic", "bottleneck", "basic_1x1", "dense", "ghost")
"""basic: 3x3-3x3. bottleneck: 1x1-3x3-1x1 with expansion. basic_1x1: 1x1-3x3 (PaddleOCR ResNet45).
dense: DenseNet layers (BN-ReLU-[Conv1x1-BN-ReLU]-Conv3x3, outputs concatenated), stages joined by
transitions (torchvision DenseNet, d2l). ghost: GhostNet bottlenecks (timm), set per block."""
RESIDUAL_KINDS = ("basic", "bottleneck", "basic_1x1")
"""The ResNet block kinds: ``relu(main(x) [* se] + shortcut(x))``, stages of ``depth`` x ``channels``."""
DEFAULT_EXPANSION = {"basic": 1, "bottleneck": 4, "basic_1x1": 1}
DEFAULT_BN_SIZE = 4
"""DenseNet's bottleneck: the 1x1 conv of a dense layer has ``bn_size * growth_rate`` outputs."""
DEFAULT_COMPRESSION = 0.5
"""DenseNet's transitions keep ``floor(channels * compression)`` channels (torchvision: ``c // 2``)."""
STRIDE_POSITIONS = ("3x3", "1x1")
SHORTCUT_KINDS = ("conv_bn", "avgpool_conv_bn", "conv")
"""conv_bn: 1x1 conv (stride) + BN. avgpool_conv_bn: AvgPool 2x2 (ceil_mode, padding not counted)
then 1x1 conv + BN (ResNet-D). conv: a 1x1 conv (stride) with no BN (d2l)."""
SHORTCUT_WHEN = ("auto", "always")
"""auto: project when the stride or channel count changes. always: every stage's first block."""
CONV_INITS = ("kaiming_normal_fan_out", "kaiming_normal_fan_in", "torch_default")
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
    """The residual block used by every stage.

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
    ``drop_rate``; default 0). Other kinds leave them unset. A ``ghost`` block (GhostNet) is set
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
    BlockSettings per block) and nothing else.
    """

    depth: int | None = None
    channels: int | None = None
    stride: int = 1
    dilate: bool = False
    blocks: tuple[BlockSettings, ...] | None = None

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


def _check(ok: bool, path: str, message: str, value: Any) -> None:
    if not ok:
        raise SpecError(f"{path}: {message}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any, path: str, minimum: int = 1) -> None:
    _check(_is_int(v), path, "must be an integer", v)
    _check(v >= minimum, path, f"must be >= {minimum}", v)


def _one_of(v: Any, choices: tuple[str, ...], path: str) -> None:
    _check(v in choices, path, f"must be one of {', '.join(repr(c) for c in choices)}", v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_stage(spec: ResNetSpec, i: int, stage: StageSpec) -> None:
    """One stage, by block kind (see StageSpec)."""
    p = f"stages[{i}]"
    kind = spec.block.kind
    _check(isinstance(stage, StageSpec), p, "must be a stage spec", stage)
    _positive_int(stage.stride, f"{p}.stride")
    _check(isinstance(stage.dilate, bool), f"{p}.dilate", "must be true or false", stage.dilate)
    if kind == "ghost":
        for name in ("depth", "channels"):
            _check(getattr(stage, name) is None, f"{p}.{name}",
                   "is not used by 'ghost' blocks (set per block in blocks[j]); leave it out", getattr(stage, name))
        _check(stage.stride == 1, f"{p}.stride", "must be 1 for 'ghost' blocks: set it per block (blocks[j].stride)",
               stage.stride)
        _check(stage.dilate is False, f"{p}.dilate", "must be false for 'ghost' blocks (no dilation)", stage.dilate)
        _check(isinstance(stage.blocks, tuple) and len(stage.blocks) >= 1, f"{p}.blocks",
               "must be a non-empty list of per-block settings for 'ghost' blocks", stage.blocks)
        for j, settings in enumerate(stage.blocks):
            q = f"{p}.blocks[{j}]"
            _check(isinstance(settings, BlockSettings), q, "must be block settings", settings)
            _positive_int(settings.channels, f"{q}.channels")
            _positive_int(settings.mid_channels, f"{q}.mid_channels")
            _positive_int(settings.kernel_size, f"{q}.kernel_size")
            _check(settings.kernel_size % 2 == 1, f"{q}.kernel_size", "must be odd (symmetric padding)",
                   settings.kernel_size)
            _positive_int(settings.stride, f"{q}.stride")
            _check(_is_number(settings.se_ratio) and 0.0 <= settings.se_ratio <= 1.0, f"{q}.se_ratio",
                   "must be a number in [0, 1]", settings.se_ratio)
        return
    _check(stage.blocks is None, f"{p}.blocks", f"per-block settings are for 'ghost' blocks, not {kind!r}",
           stage.blocks)
    _check(stage.depth is not None, f"{p}.depth", f"is required for {kind!r} blocks", stage.depth)
    _positive_int(stage.depth, f"{p}.depth")
    if kind == "dense":
        _check(stage.channels is None, f"{p}.channels",
               "is not used by 'dense' blocks (block.growth_rate sets the width); leave it out", stage.channels)
        _check(stage.dilate is False, f"{p}.dilate", "must be false for 'dense' blocks (no dilation)", stage.dilate)
        if i == 0:
            _check(stage.stride == 1, f"{p}.stride",
                   "must be 1 for the first 'dense' stage (strides are the transitions' pools between stages)",
                   stage.stride)
        return
    _check(stage.channels is not None, f"{p}.channels", f"is required for {kind!r} blocks", stage.channels)
    _positive_int(stage.channels, f"{p}.channels")
    block = spec.block
    if kind == "bottleneck":
        width = int(stage.channels * block.width_per_group / 64) * block.groups
        _check(width >= block.groups, f"{p}.channels",
               f"gives a bottleneck width of {width}, fewer than block.groups={block.groups}", stage.channels)


def validate_spec(spec: ResNetSpec) -> None:
    """Raise SpecError naming the first invalid field; the only place specs are validated."""
    _check(isinstance(spec.name, str) and spec.name != "", "name", "must be a non-empty string", spec.name)
    _positive_int(spec.in_channels, "in_channels")
    _check(isinstance(spec.conv_bias, bool), "conv_bias", "must be true or false", spec.conv_bias)

    stem = spec.stem
    _check(isinstance(stem, StemSpec), "stem", "must be a stem spec", stem)
    _check(isinstance(stem.widths, tuple) and len(stem.widths) >= 1, "stem.widths",
           "must be a non-empty list of channel counts", stem.widths)
    for i, w in enumerate(stem.widths):
        _positive_int(w, f"stem.widths[{i}]")
    _positive_int(stem.kernel_size, "stem.kernel_size")
    _check(stem.kernel_size % 2 == 1, "stem.kernel_size", "must be odd (symmetric padding)", stem.kernel_size)
    _positive_int(stem.stride, "stem.stride")
    _check(isinstance(stem.pool, bool), "stem.pool", "must be true or false", stem.pool)

    block = spec.block
    _check(isinstance(block, BlockSpec), "block", "must be a block spec", block)
    _one_of(block.kind, BLOCK_KINDS, "block.kind")
    kind = block.kind
    if block.expansion is not None:
        _positive_int(block.expansion, "block.expansion")
        _check(kind in RESIDUAL_KINDS, "block.expansion", f"is not used by a {kind!r} block; leave it out",
               block.expansion)
    _one_of(block.stride_on, STRIDE_POSITIONS, "block.stride_on")
    _positive_int(block.groups, "block.groups")
    _positive_int(block.width_per_group, "block.width_per_group")
    if kind != "bottleneck":
        _check(block.groups == 1, "block.groups", f"must be 1 for a {kind!r} block", block.groups)
        _check(block.width_per_group == 64, "block.width_per_group",
               f"must be 64 for a {kind!r} block", block.width_per_group)
        _check(block.stride_on == "3x3", "block.stride_on",
               f"must be '3x3' for a {kind!r} block", block.stride_on)
    _check(_is_number(block.se_ratio) and 0.0 <= block.se_ratio <= 1.0, "block.se_ratio",
           "must be a number in [0, 1]", block.se_ratio)
    if kind == "dense":
        _check(block.se_ratio == 0, "block.se_ratio", "must be 0 for a 'dense' block (no squeeze-excite)",
               block.se_ratio)
        _check(block.growth_rate is not None, "block.growth_rate", "is required for a 'dense' block",
               block.growth_rate)
        _positive_int(block.growth_rate, "block.growth_rate")
        if block.bn_size is not None:
            _positive_int(block.bn_size, "block.bn_size", minimum=0)
        if block.compression is not None:
            _check(_is_number(block.compression) and 0.0 < block.compression <= 1.0, "block.compression",
                   "must be a number in (0, 1]", block.compression)
        if block.drop_rate is not None:
            _check(_is_number(block.drop_rate) and 0.0 <= block.drop_rate < 1.0, "block.drop_rate",
                   "must be a number in [0, 1)", block.drop_rate)
    else:
        for field_name in ("growth_rate", "bn_size", "compression", "drop_rate"):
            value = getattr(block, field_name)
            _check(value is None, f"block.{field_name}", f"is only for 'dense' blocks, not {kind!r}; leave it out",
                   value)
    if kind == "ghost":
        _check(block.se_ratio == 0, "block.se_ratio",
               "must be 0 for 'ghost' blocks: set it per block (stages[i].blocks[j].se_ratio)", block.se_ratio)

    _check(isinstance(spec.stages, tuple) and len(spec.stages) >= 1, "stages",
           "must be a non-empty list of stages", spec.stages)
    for i, stage in enumerate(spec.stages):
        _validate_stage(spec, i, stage)

    if kind not in RESIDUAL_KINDS:
        _check(len(stem.widths) == 1, "stem.widths", f"must be one width for a {kind!r} network (one stem conv)",
               stem.widths)
    if kind == "dense":
        channels = stem.widths[0]
        for i, stage in enumerate(spec.stages):
            if i > 0:
                channels = block.transition_channels(channels)
                _check(channels >= 1, "block.compression", f"leaves no channels in the transition to stages[{i}]",
                       block.compression)
            channels += stage.depth * block.growth_rate

    shortcut = spec.shortcut
    _check(isinstance(shortcut, ShortcutSpec), "shortcut", "must be a shortcut spec", shortcut)
    _one_of(shortcut.kind, SHORTCUT_KINDS, "shortcut.kind")
    _one_of(shortcut.when, SHORTCUT_WHEN, "shortcut.when")
    if kind not in RESIDUAL_KINDS:
        _check(shortcut == ShortcutSpec(), "shortcut",
               f"is fixed by a {kind!r} block (dense: concatenation; ghost: timm's); leave it out", shortcut)

    if spec.head is not None:
        _check(isinstance(spec.head, HeadSpec), "head", "must be a head spec or null", spec.head)
        _positive_int(spec.head.num_classes, "head.num_classes")
        _check(isinstance(spec.head.dropout, (int, float)) and 0.0 <= spec.head.dropout < 1.0,
               "head.dropout", "must be a number in [0, 1)", spec.head.dropout)
        if spec.head.hidden_channels is not None:
            _positive_int(spec.head.hidden_channels, "head.hidden_channels")

    if spec.out_indices is not None:
        _check(isinstance(spec.out_indices, tuple) and len(spec.out_indices) >= 1, "out_indices",
               "must be a non-empty list of stage indices or null", spec.out_indices)
        _check(spec.head is None, "out_indices", "needs head: null (a feature pyramid has no head)",
               spec.out_indices)
        for i, idx in enumerate(spec.out_indices):
            _check(_is_int(idx) and 0 <= idx < len(spec.stages), f"out_indices[{i}]",
                   f"must be a stage index in 0..{len(spec.stages) - 1}", idx)
        _check(list(spec.out_indices) == sorted(set(spec.out_indices)), "out_indices",
               "must be strictly increasing", spec.out_indices)

    norm = spec.norm
    _check(isinstance(norm, NormSpec), "norm", "must be a norm spec", norm)
    _check(isinstance(norm.eps, (int, float)) and not isinstance(norm.eps, bool) and norm.eps > 0,
           "norm.eps", "must be a positive number", norm.eps)
    _check(isinstance(norm.momentum, (int, float)) and not isinstance(norm.momentum, bool)
           and 0.0 <= norm.momentum <= 1.0, "norm.momentum",
           "must be a number in [0, 1] (PyTorch convention: weight of the new statistic)", norm.momentum)
    _one_of(norm.running_var, RUNNING_VAR_ESTIMATORS, "norm.running_var")

    init = spec.init
    _check(isinstance(init, InitSpec), "init", "must be an init spec", init)
    _one_of(init.conv, CONV_INITS, "init.conv")
    _one_of(init.linear_bias, LINEAR_BIAS_INITS, "init.linear_bias")
    _check(isinstance(init.zero_init_last_bn, bool), "init.zero_init_last_bn", "must be true or false",
           init.zero_init_last_bn)
    if kind not in RESIDUAL_KINDS:
        _check(init.zero_init_last_bn is False, "init.zero_init_last_bn",
               f"must be false for a {kind!r} network (it has no residual's last BN to zero)", init.zero_init_last_bn)


# --------------------------------------------------------------------------- dict round trip


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
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
    if hint is float and _is_int(value):
        return float(value)
    return value  # scalar types are checked by validate_spec, with the field path


# --------------------------------------------------------------------------- files


def _read_mapping(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not valid JSON ({exc})") from None
    import yaml  # PyYAML reads JSON too, but JSON errors are clearer from json

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None


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
    if not path.is_file():
        raise FileNotFoundError(f"spec file not found: {path}")
    try:
        return ResNetSpec.from_dict(_read_mapping(path))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


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
