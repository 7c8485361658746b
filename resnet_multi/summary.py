"""Shapes, parameter counts and multiply-accumulates, from the plan alone (no framework)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .plan import make_plan, trace
from .zoo import resolve_spec


@dataclass(frozen=True)
class SummaryRow:
    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class Summary:
    """Per-stage figures. ``str(summary)`` is a table; totals in ``total_params``/``total_macs``."""

    spec_name: str
    input_shape: tuple[int, ...]
    rows: tuple[SummaryRow, ...]
    total_params: int
    total_buffers: int
    total_macs: int
    output_shapes: dict[str, tuple[int, ...]]

    def __str__(self) -> str:
        header = f"{self.spec_name}  input {self.input_shape}"
        w = max([12] + [len(r.name) + 2 for r in self.rows])  # stage names: "layer3", "features.denseblock1"
        lines = [header, f"{'layer':<{w}}{'output shape':<24}{'params':>14}{'MACs':>18}"]
        for r in self.rows:
            lines.append(f"{r.name:<{w}}{str(r.output_shape):<24}{r.params:>14,}{r.macs:>18,}")
        lines.append(f"{'total':<{w}}{'':<24}{self.total_params:>14,}{self.total_macs:>18,}")
        lines.append(f"{self.total_params / 1e6:.2f} M parameters (+{self.total_buffers:,} BN buffer values), "
                     f"{self.total_macs / 1e9:.2f} G multiply-accumulates")
        return "\n".join(lines)


def trainable_count(plan, *parts) -> int:
    """Trainable parameter values of the modules of ``parts`` (buffers, the running statistics, left out)."""
    return sum(math.prod(plan.params[name].shape) for part in parts for name in plan.part_params(part)
               if not plan.params[name].is_buffer)


def summary(spec, input_shape=None) -> Summary:
    """Output shapes, parameter counts and multiply-accumulates per stage, from the plan.

    Args:
        spec: a ResNetSpec, preset name or spec file.
        input_shape: NCHW; default (1, in_channels, 224, 224).
    Returns:
        A Summary; ``print(rm.summary("resnet50"))`` shows the table.
    Example:
        >>> rm.summary("resnet50").total_params
        25557032
    """
    spec = resolve_spec(spec)
    p = make_plan(spec)
    if input_shape is None:
        input_shape = (1, spec.in_channels, 224, 224)
    input_shape = tuple(int(v) for v in input_shape)
    p.check_input_shape(input_shape, what="input_shape")
    figures = trace(p, input_shape)

    def count(*parts):
        return trainable_count(p, *parts)

    rows = [SummaryRow("stem", figures["stem"][0], count(p.stem), figures["stem"][1])]
    for stage in p.stages:
        macs = sum(figures[b.name][1] for b in stage.blocks)
        rows.append(SummaryRow(stage.name, figures[stage.name][0], count(*stage.blocks), macs))
    if p.neck is not None:  # after the last stage, before the head (DenseNet's norm5, GhostNet's last conv)
        neck_taps = [tap for _, tap in p.neck.taps]
        rows.append(SummaryRow("neck", figures[neck_taps[-1]][0], count(p.neck),
                               sum(figures[tap][1] for tap in neck_taps)))
    if p.head is not None:
        head_taps = [tap for _, tap in p.head.taps]
        rows.append(SummaryRow("head", figures[p.output_names()[0]][0], count(p.head),
                               sum(figures[tap][1] for tap in head_taps)))
    total_params = sum(math.prod(i.shape) for i in p.params.values() if not i.is_buffer)
    total_buffers = sum(math.prod(i.shape) for i in p.params.values() if i.is_buffer)
    return Summary(spec.name, tuple(input_shape), tuple(rows), total_params, total_buffers,
                   sum(r.macs for r in rows), {name: f[0] for name, f in figures.items()})
