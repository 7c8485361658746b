"""Flax's inference fast path (optional hook of the backend contract, resnet_multi.inference):
BatchNorm is already folded by the core; this only adds what is XLA's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .model import Network


class _PointwiseConv(nnx.Conv):
    """A 1x1 convolution (no padding, no groups) computed as a matrix product over channels of the
    strided input. XLA:CPU runs the product faster than its convolution for resnet50's 1x1
    convs (benchmarks/RESULTS.md); the outputs equal the convolution's within float32
    rounding (bit-identical for resnet50's shapes, ~1e-7 relative for small ones). The 3x3 and 7x7
    convs stay convolutions (im2col plus a product was slower). Same parameters and names as
    ``nnx.Conv``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dtype is not None:  # as nnx.Conv: the input is cast to the conv's dtype
            x = x.astype(self.dtype)
        row_stride, col_stride = self.strides
        y = jnp.einsum("nhwc,co->nhwo", x[:, ::row_stride, ::col_stride, :], self.kernel[0, 0],
                       precision=self.precision)
        return y if self.bias is None else y + self.bias[...]


def _is_pointwise(conv: nnx.Conv) -> bool:
    """A conv ``_PointwiseConv`` computes exactly: 1x1, unpadded, ungrouped, undilated input,
    strides as a pair, no mask, no dtype conversion of the parameters (the product would skip it;
    ``build`` sets dtype = param_dtype, and ``forward`` feeds inputs of that dtype)."""
    return (tuple(conv.kernel_size) == (1, 1) and conv.feature_group_count == 1 and conv.input_dilation in (None, 1)
            and conv.padding == ((0, 0), (0, 0)) and isinstance(conv.strides, tuple) and len(conv.strides) == 2
            and conv.mask is None and conv.dtype in (None, conv.param_dtype))


def optimize(model: Network) -> Network:
    """Eval-only extras for a (BatchNorm-folded) model: every 1x1 convolution becomes a
    ``_PointwiseConv`` (same state; only the primitive differs). Still an nnx module, so
    ``nnx.jit``, ``nnx.split``/``merge`` and ``rm.forward`` take it as it is."""
    for _, module in nnx.iter_modules(model):
        if type(module) is nnx.Conv and _is_pointwise(module):
            module.__class__ = _PointwiseConv
    return model
