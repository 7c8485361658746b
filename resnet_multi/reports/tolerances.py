"""The default bounds of the checks, in one place.

The forward parity check (``resnet_multi.parity``) holds every tap to
``max|out - ref| <= atol + rtol * max|ref|`` with ``BOUNDS[dtype]``; the training check
(``resnet_multi.training``) holds every tensor of a float64 training to a relative ``TRAINING_RTOL``,
with ``FLOOR`` for tensors that are zero in exact arithmetic. The command line's help and every
default argument read them from here.
"""

from __future__ import annotations

BOUNDS: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-6),
    "float64": (1e-10, 1e-12),
    "bfloat16": (3e-2, 1e-3),
}
"""Default (rtol, atol) per model dtype, about 10x (bfloat16: 2x) the noise measured against the
float64 oracle on the presets at 33x47 with random BN statistics. float32: 1e-7 to 3e-6 relative.
float64: up to 1.3e-12 (paddle, resnet50d). bfloat16 (8-bit mantissa, weights and input rounded
to bfloat16 first): inner taps up to 1.5e-2 (resnet50), logits 5e-3 to 7e-3. A porting bug gives
1e-2 and more in float32 and float64; in bfloat16 only gross ones (a transpose, a swapped mean and
variance) stand out, so prove a port in float32 or float64 and use bfloat16 to bound its drift."""

TRAINING_RTOL = 1e-9
"""float64 training bound, relative per tensor. Measured noise between correct backends (torch vs
Paddle vs Flax, tests/test_training.py: 3 steps, batch 2 at 33x47): SGD up to 2e-11, AdamW up to
2e-10 (Adam divides each element by its own gradient's size, so elements near eps amplify the ~1e-12
gradient noise). A convention bug (momentum 1-m, biased variance, eps, decay order, a frozen
tensor) gives 5e-5 to 0.2, or a missing tensor (tests/test_training_faults.py, tiny resnet18).
BatchNorm over very few values per channel (batch 2 with a 1x1 last stage) makes gradients
depend on eps to first order and amplifies noise: keep at least ~8 values per channel (the
default input gives 16)."""

FLOOR = 1e-6
"""A training tensor's errors are relative to max(max|ref|, FLOOR x the largest max|ref| of its
phase and step): a gradient that is zero in exact arithmetic (the bias of a conv before BatchNorm
in train mode) is computed as rounding noise of the gradients around it, not of its own size."""


def parity_bound(dtype: str) -> tuple[float, float]:
    """The default (rtol, atol) of forward parity for models of ``dtype``.

    Raises:
        ValueError: a dtype without a default bound (the message lists the known ones).
    """
    if dtype not in BOUNDS:
        raise ValueError(f"dtype: expected one of {', '.join(BOUNDS)}, got {dtype!r}")
    return BOUNDS[dtype]


def short_number(value: float) -> str:
    """A bound as people write it: 1e-5, 3e-2, 1e-12 (Python's ``g`` gives 1e-05 and 0.03)."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
