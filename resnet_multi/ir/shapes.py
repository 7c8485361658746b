"""Shapes and multiply-accumulates of every tap, from the plan alone: the walk run with each
op's shape rule (``Op.out_shape``, ``Op.macs``) as its primitive."""

from __future__ import annotations

from .ops import BROADCASTING_OPS
from .walk import run_plan


def trace(plan, input_shape) -> dict[str, tuple[tuple[int, ...], int]]:
    """``{tap name: (NCHW shape, MACs counted since the previous tap)}`` for ``input_shape``.

    Raises:
        ValueError: the input is too small for some op (names the op and the size it would give).
    """
    macs = [0]
    result: dict[str, tuple[tuple[int, ...], int]] = {}

    def apply(node, *shapes):
        op = node.op
        out = op.out_shape(*shapes)
        if len(out) == 4 and (out[2] < 1 or out[3] < 1):
            where = getattr(op, "name", None) or node.output
            raise ValueError(f"input {tuple(input_shape)} is too small: {where} ({type(op).__name__}) "
                             f"would give spatial size {out[2:]}")
        if isinstance(op, BROADCASTING_OPS):
            assert all(s[:2] == out[:2] and s[2:] in (out[2:], (1, 1)) for s in shapes), \
                f"plan error: {node.output} {type(op).__name__} of shapes {shapes}"
        macs[0] += op.macs(shapes[0], out)
        return out

    class Taps(dict):  # each tap takes the MACs counted since the previous one
        def __setitem__(self, name, shape):
            result[name] = (shape, macs[0])
            macs[0] = 0

    run_plan(plan, tuple(int(s) for s in input_shape), apply, taps=Taps())
    return result
