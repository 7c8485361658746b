"""The plan: every layer of one network with its channels, kernel, stride and padding, and the
canonical parameter table; made by a block family (``resnet_multi.families``) from a spec.

The plan is data, and every consumer (the backends, the numpy oracle, BatchNorm folding, parity
taps, summary, weight naming) walks it the same way, through ``resnet_multi.ir.walk``:
``stem`` (a Part), ``stages`` (each a tuple of block Parts, published as the stage's tap after its
last block), ``neck`` (a Part after the last stage, or None), ``head`` (a Part or None).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from .graph import ParamInfo, Part, Stage
from ..limits import check_run_size
from .ops import PARAMETER_OPS, Conv, Linear
from .shapes import trace


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

    def native_names(self, scheme: str) -> dict[str, str]:
        """``{canonical parameter name: its name in naming scheme}`` for the parameters whose
        module ``aliases[scheme]`` renames (leaves, e.g. ``.weight``, are kept)."""
        modules = self.aliases.get(scheme, {})
        out = {}
        for name in self.params:
            owner, leaf = name.rsplit(".", 1)
            if owner in modules:
                out[name] = f"{modules[owner]}.{leaf}"
        return out

    @functools.cached_property
    def _canonical_of(self) -> dict[str, str]:
        return {other: name for scheme in self.aliases for name, other in self.native_names(scheme).items()}

    def canonical_name(self, name: str) -> str:
        """The canonical name of a parameter called ``name`` in any of the plan's naming schemes
        (``aliases``); a name that is no alias is returned as it is."""
        return self._canonical_of.get(name, name)

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
