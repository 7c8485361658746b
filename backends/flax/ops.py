"""Flax's primitives (NHWC): one table (``OPS``) from IR op type to its function, or for ops
that are modules (``plan.MODULE_OPS``) the factory of the nnx module and how it is called with
the call's mode. The walk is the only dispatch.

Numerics (see docs/NUMERICS.md): explicit symmetric padding ``((p, p), (p, p))`` on every conv and
pool (Flax's 'SAME' pads (0, 1) at stride 2 on even sizes); max-pool pads with -inf; average
pooling implements PyTorch's ``ceil_mode`` and ``count_include_pad`` exactly; BatchNorm gets
``momentum = 1 - spec momentum`` (Flax weights the OLD value) and the spec's epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from resnet_multi import plan as P
from resnet_multi.backends._contract import Op

JAX_DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}
"""The dtype names ``build`` accepts -> JAX's dtypes."""


def _pad2d(padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit symmetric (H, W) conv padding. Never 'SAME': at stride 2 on an even size Flax's
    'SAME' pads (0, 1) where PyTorch pads (1, 1). (The pools spell out their padding inline.)"""
    return ((padding, padding), (padding, padding))


def _max_pool(x: jax.Array, op: P.MaxPool) -> jax.Array:
    """PyTorch's MaxPool2d (floor mode) on NHWC: padding counts as -inf, never as a value."""
    k, s, p = op.kernel_size, op.stride, op.padding
    # A Python scalar init, not an array: reduce_window with an array init is not differentiable
    # under jit ("Linearization failed to produce known values for all output primals").
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), (p, p), (p, p), (0, 0)))


def _window_counts(size: int, out: int, op: P.AvgPool) -> np.ndarray:
    """Divisor of each output position along one axis, exactly as PyTorch's avg_pool2d: the
    window [start, start + k) is clipped to [-p, size + p) (with count_include_pad) or to the
    input [0, size) (without); the part beyond the right padding that ceil_mode adds is never
    counted."""
    start = np.arange(out) * op.stride - op.padding
    end = np.minimum(start + op.kernel_size, size + op.padding)
    if not op.count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return (end - start).astype(np.float32)


def _avg_pool(x: jax.Array, op: P.AvgPool) -> jax.Array:
    """PyTorch's AvgPool2d on NHWC with ``ceil_mode`` and ``count_include_pad`` as the plan says
    (Flax's avg_pool has no ceil_mode and counts padding by default). ResNet-D's
    shortcut pool (2x2/2, ceil_mode, padding not counted) averages a partial last window over
    the pixels it covers."""
    _, h, w, _ = x.shape
    k, s, p = op.kernel_size, op.stride, op.padding
    oh, ow = op.out_size(h), op.out_size(w)
    # Right padding that makes reduce_window produce exactly the plan's size: ceil_mode may need
    # more than p (a partial last window), floor mode never does (the remainder is dropped).
    hi_h = max(p, (oh - 1) * s + k - h - p)
    hi_w = max(p, (ow - 1) * s + k - w - p)
    summed = lax.reduce_window(x, 0.0, lax.add, (1, k, k, 1), (1, s, s, 1),
                               ((0, 0), (p, hi_h), (p, hi_w), (0, 0)))
    summed = summed[:, :oh, :ow, :]
    counts = np.outer(_window_counts(h, oh, op), _window_counts(w, ow, op))  # static: constant-folded
    return summed / jnp.asarray(counts, x.dtype)[None, :, :, None]


def _shape_only(key, shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    """An initializer that allocates nothing: the placeholder ``nnx.eval_shape`` would give,
    without tracing the whole init (eval_shape's cost grows quadratically with the number of
    variables)."""
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _inits(shape_only: bool, *names: str) -> dict:
    return {name: _shape_only for name in names} if shape_only else {}

class UnbiasedVarBatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` whose train-mode update stores the UNBIASED batch variance in ``var``
    (PyTorch's estimator; spec ``norm.running_var: unbiased``, torchvision's models).

    The output and the running mean are Flax's own. Flax stores ``mp*old + (1-mp)*v`` (``mp`` its
    momentum, ``v`` the biased variance of ``n`` values per channel), so the unbiased update is
    that plus ``(new - mp*old) / (n-1)``: a per-channel correction, no second pass over the data.
    """

    def __call__(self, x, use_running_average: bool | None = None, **kwargs):
        use_running = self.use_running_average if use_running_average is None else use_running_average
        if use_running:
            return super().__call__(x, use_running_average=True, **kwargs)
        old = self.var.get_value()
        out = super().__call__(x, use_running_average=False, **kwargs)
        n = x.size // x.shape[-1]
        new = self.var.get_value()
        self.var.set_value(new + (new - self.momentum * old) / (n - 1))
        return out


def _conv(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
          dilation: int = 1, groups: int = 1, bias: bool, rngs: nnx.Rngs, shape_only: bool, dtype) -> nnx.Conv:
    # Every numerics argument explicit: symmetric padding (never 'SAME'), use_bias from the plan.
    return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=(stride, stride),
                    padding=_pad2d(padding), kernel_dilation=(dilation, dilation), feature_group_count=groups,
                    use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs,
                    **_inits(shape_only, "kernel_init", "bias_init"))


@dataclass(frozen=True)
class Context:
    """What the module factories need: ``rngs``, ``shape_only`` (placeholders, no init) and the
    parameters' ``dtype``."""

    rngs: nnx.Rngs
    shape_only: bool
    dtype: object


def conv_module(op: P.Conv, ctx: Context) -> nnx.Module:
    return _conv(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                 dilation=op.dilation, groups=op.groups, bias=op.bias, rngs=ctx.rngs, shape_only=ctx.shape_only,
                 dtype=ctx.dtype)


def batch_norm_module(op: P.BatchNorm, ctx: Context) -> nnx.Module:
    # Flax's momentum weights the OLD running value (default 0.99), the spec's the new statistic.
    # use_fast_variance=False: the two-pass variance, as accurate as torch's in train mode.
    cls = UnbiasedVarBatchNorm if op.running_var == "unbiased" else nnx.BatchNorm
    return cls(op.channels, use_running_average=True, momentum=1.0 - op.momentum, epsilon=op.eps,
               use_fast_variance=False, dtype=ctx.dtype, param_dtype=ctx.dtype, rngs=ctx.rngs,
               **_inits(ctx.shape_only, "scale_init", "bias_init"))


def linear_module(op: P.Linear, ctx: Context) -> nnx.Module:
    return nnx.Linear(op.in_features, op.out_features, use_bias=True, dtype=ctx.dtype, param_dtype=ctx.dtype,
                      rngs=ctx.rngs, **_inits(ctx.shape_only, "kernel_init", "bias_init"))


def _hard_sigmoid(x):
    return jax.nn.relu6(x + 3.0) / 6.0


_ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "hard_sigmoid": _hard_sigmoid,
                # exact: jax.nn.gelu's default is the tanh approximation (4.7e-4 off)
                "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


def flatten(node, x):
    # NCHW order, as the other backends flatten (identical for the 1x1 maps the plans flatten)
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1) if x.ndim == 4 else x


# --------------------------------------------------------------------------- the ConvNeXt generation


def _param(shape, dtype, ctx_shape_only: bool, value: float = 0.0) -> nnx.Param:
    """A parameter of ``shape``: a placeholder (``build`` fills it) or a constant."""
    if ctx_shape_only:
        return nnx.Param(jax.ShapeDtypeStruct(tuple(shape), dtype))
    return nnx.Param(jnp.full(tuple(shape), value, dtype))


class ChannelLayerNorm(nnx.Module):
    """LayerNorm over the last (channel) axis, written out: ``u = mean(x)``, ``s = mean((x - u) **
    2)``, ``(x - u) / sqrt(s + eps) * scale + bias`` (nnx.LayerNorm's default fast variance,
    ``E[x^2] - E[x]^2``, cancels catastrophically at large means; docs/NUMERICS.md). Parameters
    ``scale`` and ``bias``, as nnx.LayerNorm's."""

    def __init__(self, channels: int, eps: float, *, dtype, shape_only: bool):
        self.eps = eps
        self.scale = _param((channels,), dtype, shape_only, 1.0)
        self.bias = _param((channels,), dtype, shape_only, 0.0)

    def __call__(self, x):
        u = jnp.mean(x, axis=-1, keepdims=True)
        s = jnp.mean(jnp.square(x - u), axis=-1, keepdims=True)
        return (x - u) / jnp.sqrt(s + self.eps) * self.scale[...] + self.bias[...]


class DropPath(nnx.Module):
    """Row-mode stochastic depth: unless deterministic (eval), each sample is zeroed with
    probability ``rate`` and the others divided by ``1 - rate``; pass ``rngs`` (a "dropout" stream)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.deterministic = True

    def __call__(self, x, *, deterministic: bool | None = None, rngs: nnx.Rngs | None = None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.rate == 0.0:
            return x
        if rngs is None:
            raise ValueError("flax DropPath in train mode needs rngs=nnx.Rngs(dropout=seed)")
        keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.rate, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def _windows_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages PyTorch's adaptive window i (``ir.adaptive_windows``)."""
    matrix = np.zeros((out, size), np.float64)
    for i, (start, stop) in enumerate(P.adaptive_windows(size, out)):
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def adaptive_avg_pool(node, x):
    _, h, w, _ = x.shape
    rows = jnp.asarray(_windows_matrix(h, node.op.size), x.dtype)
    cols = jnp.asarray(_windows_matrix(w, node.op.size), x.dtype)
    return jnp.einsum("nhwc,ih,jw->nijc", x, rows, cols)


def interleave(node, a, b):
    n, h, w, c = a.shape
    return jnp.stack([a, b], axis=-1).reshape(n, h, w, 2 * c)


def _resize_align_corners(weight, out_h: int, out_w: int):
    """(C, h, w, 2) -> (C, out_h, out_w, 2) (jax.image.resize has no align_corners)."""
    _, h, w, _ = weight.shape
    rows = jnp.asarray(P.align_corners_matrix(h, out_h), weight.dtype)
    cols = jnp.asarray(P.align_corners_matrix(w, out_w), weight.dtype)
    return jnp.einsum("chwk,ih,jw->cijk", weight, rows, cols)


def global_filter(node, x, complex_weight):
    """HorNet's filter on NHWC, in float32 (float64 in a float64 model)."""
    dtype = x.dtype
    compute = jnp.float64 if dtype == jnp.float64 else jnp.float32
    x = x.astype(compute)
    _, h, w, _ = x.shape
    spectrum = jnp.fft.rfft2(x, axes=(1, 2), norm="ortho")  # (N, H, W // 2 + 1, C)
    weight = complex_weight.astype(compute)
    if tuple(weight.shape[1:3]) != tuple(spectrum.shape[1:3]):
        weight = _resize_align_corners(weight, *spectrum.shape[1:3])
    weight = jnp.transpose(weight[..., 0] + 1j * weight[..., 1], (1, 2, 0))  # (H', W', C)
    return jnp.fft.irfft2(spectrum * weight, s=(h, w), axes=(1, 2), norm="ortho").astype(dtype)


def layer_norm_module(op: P.LayerNorm, ctx: Context) -> nnx.Module:
    return ChannelLayerNorm(op.channels, op.eps, dtype=ctx.dtype, shape_only=ctx.shape_only)


def channel_linear_module(op: P.ChannelLinear, ctx: Context) -> nnx.Module:
    return nnx.Linear(op.in_features, op.out_features, use_bias=True, dtype=ctx.dtype, param_dtype=ctx.dtype,
                      rngs=ctx.rngs, **_inits(ctx.shape_only, "kernel_init", "bias_init"))


def parameter(op, ctx: Context) -> nnx.Param:
    """The parameter of a parameter op (``ir.PARAMETER_OPS``), of the reference's shape."""
    shape = op.shape if isinstance(op, P.LayerScale) else (op.channels, op.height, op.width, 2)
    return _param(shape, ctx.dtype, ctx.shape_only)


def _no_function(node, *inputs):
    raise TypeError(f"flax backend: plan op {node.op!r} runs only as a module")


OPS: dict[type, Op] = {
    P.Conv: Op(_no_function, conv_module, lambda module, x, mode: module(x)),
    P.BatchNorm: Op(_no_function, batch_norm_module,
                    lambda module, x, mode: module(x, use_running_average=mode["use_running_average"])),
    P.Linear: Op(_no_function, linear_module, lambda module, x, mode: module(x)),
    P.Dropout: Op(_no_function, lambda op, ctx: nnx.Dropout(op.rate, deterministic=True),
                  lambda module, x, mode: module(x, deterministic=mode["deterministic"], rngs=mode["rngs"])),
    P.Act: Op(lambda node, x: _ACTIVATIONS[node.op.kind](x)),
    P.MaxPool: Op(lambda node, x: _max_pool(x, node.op)),
    P.AvgPool: Op(lambda node, x: _avg_pool(x, node.op)),
    P.GlobalAvgPool: Op(lambda node, x: jnp.mean(x, axis=(1, 2), keepdims=not node.op.flatten)),
    P.Flatten: Op(flatten),
    P.Add: Op(lambda node, x, *others: sum(others, x)),
    P.Mul: Op(lambda node, x, gate: x * gate),
    P.Concat: Op(lambda node, *inputs: jnp.concatenate(inputs, axis=-1)),
    P.Slice: Op(lambda node, x: x[..., node.op.start:node.op.stop]),
    P.AdaptiveAvgPool: Op(adaptive_avg_pool),
    P.LayerNorm: Op(_no_function, layer_norm_module, lambda module, x, mode: module(x)),
    P.ChannelLinear: Op(_no_function, channel_linear_module, lambda module, x, mode: module(x)),
    P.LayerScale: Op(lambda node, x, scale: x * scale.reshape(-1), parameter),
    P.DropPath: Op(_no_function, lambda op, ctx: DropPath(op.rate),
                   lambda module, x, mode: module(x, deterministic=mode["deterministic"], rngs=mode["rngs"])),
    P.Scale: Op(lambda node, x: x * node.op.factor),
    P.Interleave: Op(interleave),
    P.GlobalFilter: Op(global_filter, parameter),
}
"""IR op type -> how Flax runs it (NHWC)."""


def spatial_mean(x):
    """Mean over H and W of an NHWC array (training logits of a headless model)."""
    return x.mean(axis=(1, 2))


def concat_channels(arrays):
    return jnp.concatenate(arrays, axis=1)
