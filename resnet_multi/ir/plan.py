"""The plan: every layer of one network with its channels, kernel, stride and padding, and the
canonical parameter table; made by a block family (``resnet_multi.families``) from a spec.

The plan is data, and every consumer (the backends, the numpy oracle, BatchNorm folding, parity
taps, summary, weight naming) walks it the same way, through ``resnet_multi.ir.walk``:
``stem`` (a Part), ``stages`` (each a tuple of block Parts, published as the stage's tap after its
last block), ``neck`` (a Part after the last stage, or None), ``head`` (a Part or None).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .graph import ParamInfo, Part, Stage
from ..limits import check_run_size
from .ops import PARAMETER_OPS, Conv, Linear
from .shapes import trace

SHAPE_RULES = {"vector": lambda shape: (math.prod(shape),)}
"""How a naming scheme may store a role's parameters in another shape (``Plan.alias_shapes``), as a
function of the canonical shape. A reshape, never a transpose: the values and their order are the
canonical ones. "vector": flat, as timm's ConvNeXt ``gamma`` (C,) for torchvision's ``layer_scale``
(C, 1, 1)."""


class Alias(NamedTuple):
    """What a name that is not canonical stands for: the ``canonical`` parameter, the naming
    ``scheme`` it belongs to, and the ``shape`` the tensor has under that name."""

    canonical: str
    scheme: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    spec: Any                      # the ResNetSpec it was made from
    stem: Part
    stages: tuple[Stage, ...]
    head: Part | None
    out_indices: tuple[int, ...] | None
    params: dict[str, ParamInfo]   # canonical name -> info, parameters and buffers, in module order
    neck: Part | None = None       # after the last stage, before the head; part of the features
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    """Other names of the plan's modules: scheme -> {canonical module path: its path there}.
    A backend whose NAME is a scheme names its modules that way (paddle: PaddleClas' DenseNet);
    every reader also accepts them (torchvision's legacy DenseNet keys, scheme "legacy")."""
    param_aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per-parameter renames where a module rename is not enough: scheme -> {canonical parameter
    name: its name there}, ahead of ``aliases`` (timm's ConvNeXt calls torchvision's
    ``features.1.0.layer_scale`` ``stages.0.blocks.0.gamma``: another module and another leaf)."""
    alias_shapes: dict[str, dict[str, str]] = field(default_factory=dict)
    """scheme -> {parameter role: a ``SHAPE_RULES`` rule}: the shape the scheme stores that role's
    parameters in, where it is not the canonical one (timm: layer scales as vectors)."""

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def out_channels(self) -> int:
        """Channels of the last feature map."""
        return (self.neck or self.stages[-1]).out_channels

    @property
    def parts(self) -> tuple[Part, ...]:
        """Every part in execution order: stem, blocks, neck, head."""
        blocks = tuple(block for stage in self.stages for block in stage.blocks)
        return (self.stem, *blocks, *self.flat_parts[1:])

    @property
    def flat_parts(self) -> tuple[Part, ...]:
        """The parts whose modules sit on the model itself (prefix ""): stem, neck, head."""
        return tuple(part for part in (self.stem, self.neck, self.head) if part is not None)

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Named intermediate outputs, in execution order: stem, every block, every stage,
        and with a head pre_logits and logits."""
        names = [tap for _, tap in self.stem.taps]
        for stage in self.stages:
            for block in stage.blocks:
                names.extend(tap for _, tap in block.taps)
            names.append(stage.name)
        for part in self.flat_parts[1:]:
            names.extend(tap for _, tap in part.taps)
        return tuple(names)

    @property
    def first_conv(self) -> str:
        """The module name of the stem's first convolution (the one that reads the input image;
        timm's pretrained cfgs call it ``first_conv``)."""
        return next(op.name for op in self.stem.ops if isinstance(op, Conv))

    @property
    def classifier(self) -> str | None:
        """The module name of the head's classifier (its last Linear), or None without a head."""
        if self.head is None:
            return None
        linears = [op.name for op in self.head.ops if isinstance(op, Linear)]
        return linears[-1] if linears else None

    @property
    def buffers(self) -> tuple[str, ...]:
        """The names in ``params`` that are buffers (running statistics), not trainable parameters."""
        return tuple(name for name, info in self.params.items() if info.is_buffer)

    @property
    def schemes(self) -> tuple[str, ...]:
        """The naming schemes the plan declares (``aliases``, ``param_aliases``), in declaration order."""
        return tuple(dict.fromkeys([*self.aliases, *self.param_aliases]))

    def native_names(self, scheme: str) -> dict[str, str]:
        """``{canonical parameter name: its name in naming scheme}`` for the parameters the scheme
        renames: by ``param_aliases[scheme]``, else by their module's ``aliases[scheme]`` (leaves,
        e.g. ``.weight``, kept)."""
        modules = self.aliases.get(scheme, {})
        params = self.param_aliases.get(scheme, {})
        out = {}
        for name in self.params:
            owner, _, leaf = name.rpartition(".")
            if name in params:
                out[name] = params[name]
            elif owner in modules:
                out[name] = f"{modules[owner]}.{leaf}"
        return out

    def shape_in(self, scheme: str, name: str) -> tuple[int, ...]:
        """The shape canonical parameter ``name`` has in naming ``scheme`` (``alias_shapes``)."""
        info = self.params[name]
        rule = self.alias_shapes.get(scheme, {}).get(info.role)
        return tuple(info.shape) if rule is None else tuple(SHAPE_RULES[rule](info.shape))

    def to_scheme(self, scheme: str, weights: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical ``weights`` (arrays or tensors with ``reshape``) under their names and in their
        shapes in naming ``scheme``, in the given order; names the scheme keeps pass as they are."""
        names = self.native_names(scheme)
        out = {}
        for name, value in weights.items():
            if name in self.params and (shape := self.shape_in(scheme, name)) != tuple(self.params[name].shape):
                value = value.reshape(shape)
            out[names.get(name, name)] = value
        return out

    @functools.cached_property
    def _canonical_of(self) -> dict[str, Alias]:
        return {other: Alias(name, scheme, self.shape_in(scheme, name))
                for scheme in self.schemes for name, other in self.native_names(scheme).items()}

    def alias_of(self, name: str) -> Alias | None:
        """What ``name`` stands for when it is a parameter's name in one of the plan's naming schemes
        (not the canonical one), else None."""
        return self._canonical_of.get(name)

    def canonical_name(self, name: str) -> str:
        """The canonical name of a parameter called ``name`` in any of the plan's naming schemes
        (``aliases``, ``param_aliases``); a name that is no alias is returned as it is."""
        alias = self._canonical_of.get(name)
        return name if alias is None else alias.canonical

    def scheme_of(self, names) -> str | None:
        """The naming scheme that ``names`` (tensor names, canonical leaves) are written in: the
        first scheme that names every one of them and renames at least one; None for canonical
        names, or names no single scheme explains."""
        names = set(names)
        for scheme in self.schemes:
            renamed = self.native_names(scheme)
            if names & set(renamed.values()) and names <= {renamed.get(n, n) for n in self.params}:
                return scheme
        return None

    @functools.cached_property
    def _params_by_module(self) -> dict[str, tuple[str, ...]]:
        by_module: dict[str, list[str]] = {}
        for name in self.params:
            by_module.setdefault(name.rsplit(".", 1)[0], []).append(name)
        return {module: tuple(names) for module, names in by_module.items()}

    def part_params(self, part: Part) -> tuple[str, ...]:
        """The canonical parameter and buffer names of one part's modules, in ``params`` order."""
        # per module, not a scan of every parameter per part: summary is linear in depth
        names = [name for op in part.modules for name in self._params_by_module.get(op.name, ())]
        names += [op.name for op in part.ops if isinstance(op, PARAMETER_OPS)]
        return tuple(sorted(set(names), key=self._param_order.__getitem__))

    @functools.cached_property
    def _param_order(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.params)}

    def output_names(self) -> tuple[str, ...]:
        """Which taps the model returns: logits, the last stage, or the out_indices stages."""
        if self.head is not None:
            return ("logits",)
        if self.out_indices is not None:
            return tuple(self.stages[i].name for i in self.out_indices)
        if self.neck is not None:
            return (self.neck.taps[-1][1],)
        if not self.stages:  # a stem-only plan (the op contract tests run one op this way)
            return (self.stem.taps[-1][1],)
        return (self.stages[-1].name,)

    def shapes(self, input_shape: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
        """NCHW shape of every tap for ``input_shape``; raises ValueError if it does not fit."""
        return {name: info[0] for name, info in trace(self, input_shape).items()}

    def check_input_shape(self, shape: tuple[int, ...], what: str = "input") -> None:
        """Raise ValueError unless ``shape`` is (N, in_channels, H, W) and big enough."""
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(f"{what}: expected a 4-D NCHW array (N, {self.in_channels}, H, W), "
                             f"got shape {shape}")
        if shape[1] != self.in_channels:
            raise ValueError(f"{what}: expected {self.in_channels} input channel(s) (NCHW), got "
                             f"shape {shape}")
        if shape[0] < 1:
            raise ValueError(f"{what}: batch size must be >= 1, got shape {shape}")
        check_run_size(self.spec.name, trace(self, shape))
