"""Sane limits on the size of a network and of its input, checked before anything is built or
allocated, so that an absurd spec (``depth: 1e9``, ``channels: 100000``), whether written by hand
or stored in a file from anywhere, is refused with one clear error instead of exhausting memory
and time.

The limits are far above every preset (the largest, convnext_large, has 198 M parameters) and can
be raised on purpose::

    with rm.limits(max_parameters=10_000_000_000):
        model = rm.build(huge_spec)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator


class LimitError(ValueError):
    """A network or input above a limit of ``resnet_multi.limits`` (the message names the limit)."""


@dataclass
class Limits:
    """The limits in force (``LIMITS``); change them with ``rm.limits(...)``."""

    max_blocks: int = 100_000
    """Blocks in all stages (counted from the spec, before its plan is made)."""
    max_parameters: int = 2_000_000_000
    """Parameters and buffers of the plan (8 GB in float32), before any weight is allocated."""
    max_activation_bytes: int = 16 * 2 ** 30
    """float32 bytes of every tap of one forward at the requested input (what ``taps=True`` holds)."""
    max_macs: int = 10 ** 14
    """Multiply-accumulates of one forward at the requested input."""


LIMITS = Limits()


@contextlib.contextmanager
def limits(**changes) -> Iterator[Limits]:
    """Raise (or lower) limits inside a ``with`` block; each keyword is a field of ``Limits``."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Limits)})
    if unknown:
        raise TypeError(f"rm.limits: unknown limit(s) {', '.join(unknown)}; known: "
                        f"{', '.join(f.name for f in dataclasses.fields(Limits))}")
    saved = dataclasses.replace(LIMITS)
    for name, value in changes.items():
        setattr(LIMITS, name, value)
    try:
        yield LIMITS
    finally:
        for f in dataclasses.fields(Limits):
            setattr(LIMITS, f.name, getattr(saved, f.name))


def _refuse(what: str, value: int, limit: str) -> None:
    raise LimitError(f"{what}: {value:,} is above the limit of {getattr(LIMITS, limit):,} "
                     f"(resnet_multi.limits; raise it on purpose with rm.limits({limit}=...))")


def check_spec_size(spec) -> None:
    """Before a plan is made: the number of blocks."""
    blocks = sum(len(stage.blocks) if stage.blocks is not None else (stage.depth or 0) for stage in spec.stages)
    if blocks > LIMITS.max_blocks:
        _refuse(f"spec {spec.name!r} has too many blocks", blocks, "max_blocks")


def check_plan_size(plan) -> None:
    """Before any weight is allocated: parameters and buffers."""
    count = sum(math.prod(info.shape) for info in plan.params.values())
    if count > LIMITS.max_parameters:
        _refuse(f"spec {plan.spec.name!r} has too many parameters", count, "max_parameters")


def check_run_size(spec_name: str, figures) -> None:
    """Before a forward at an input: ``figures`` is ``ir.trace``'s ``{tap: (shape, MACs)}``."""
    activation = 4 * sum(math.prod(shape) for shape, _ in figures.values())
    macs = sum(m for _, m in figures.values())
    if activation > LIMITS.max_activation_bytes:
        _refuse(f"spec {spec_name!r} at this input needs too much activation memory (float32 bytes)", activation,
                "max_activation_bytes")
    if macs > LIMITS.max_macs:
        _refuse(f"spec {spec_name!r} at this input needs too many multiply-accumulates", macs, "max_macs")
