"""The numpy oracle: an eval-mode forward pass of any Plan, in plain numpy, in float64.

No framework is imported here: this is the independent reference every backend is compared
against (``check_parity``'s default). It is written to be read. Each primitive is a small
function that spells out the convention the frameworks disagree on (see docs/NUMERICS.md):

- ``conv2d``      im2col + one batched matmul; explicit symmetric padding, stride, dilation, groups.
- ``batch_norm``  eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias.
- ``max_pool2d``  padding counts as -inf (never 0: a window of negatives must stay negative).
- ``avg_pool2d``  PyTorch's ceil_mode and count_include_pad rules, exactly.
- ``linear``, global average pooling, ReLU, sigmoid, hard_sigmoid; concat, slice, add, mul on arrays.

Everything is computed in float64, so the oracle's own rounding error (~1e-16 relative) is far
below the float32 noise of the backends (~1e-7 relative per op): a difference from the
oracle is the backend's. The weights and the input are used as float32 values (what the
backends hold), upcast exactly to float64.

Speed: convolutions are one BLAS matmul each; resnet152 at 1x3x33x47 takes about a second.
"""

from __future__ import annotations

import math

from typing import Mapping

from ._lazy import np
from . import plan as P
from .walk import run_plan

# --------------------------------------------------------------------------- primitives (NCHW, float64)


def _windows(x: np.ndarray, kernel_size: int, stride: int, dilation: int = 1) -> np.ndarray:
    """Every ``kernel_size`` x ``kernel_size`` window of an already padded NCHW array.

    Returns a view of shape (N, C, H_out, W_out, k, k): window (i, j) starts at
    (i * stride, j * stride) and samples every ``dilation``-th pixel.
    """
    span = dilation * (kernel_size - 1) + 1  # the window's extent in the input
    # (N, C, H-span+1, W-span+1, span, span)
    views = np.lib.stride_tricks.sliding_window_view(x, (span, span), axis=(2, 3))
    return views[:, :, ::stride, ::stride, ::dilation, ::dilation]


def _pad(x: np.ndarray, padding, value: float = 0.0) -> np.ndarray:
    """Pad H and W of an NCHW array. ``padding`` is an int (the same on all four sides) or
    ((top, bottom), (left, right))."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    (top, bottom), (left, right) = padding
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, stride: int = 1,
           padding=0, dilation: int = 1, groups: int = 1) -> np.ndarray:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C_in, H, W).
        weight: (C_out, C_in // groups, k, k), OIHW.
        bias: (C_out,) or None.
        padding: zeros on each side: an int, or ((top, bottom), (left, right)).
    Returns:
        (N, C_out, H_out, W_out).
    """
    n, c_in, _, _ = x.shape
    c_out, c_in_per_group, k, _ = weight.shape
    assert c_in == c_in_per_group * groups, f"conv: {c_in} input channels, weight expects {c_in_per_group}x{groups}"
    cols = _windows(_pad(x, padding), k, stride, dilation)            # (N, C_in, Ho, Wo, k, k)
    _, _, h_out, w_out, _, _ = cols.shape
    # im2col per group: rows are output pixels, columns are (input channel, kh, kw) of the group
    cols = cols.reshape(n, groups, c_in_per_group, h_out, w_out, k, k)
    cols = cols.transpose(0, 1, 3, 4, 2, 5, 6).reshape(n, groups, h_out * w_out, c_in_per_group * k * k)
    kernels = weight.reshape(groups, c_out // groups, c_in_per_group * k * k).transpose(0, 2, 1)
    out = cols @ kernels                                              # (N, G, Ho*Wo, C_out/G)
    out = out.transpose(0, 1, 3, 2).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.reshape(1, c_out, 1, 1)
    return out


def batch_norm(x: np.ndarray, weight, bias, running_mean, running_var, eps: float) -> np.ndarray:
    """Eval-mode BatchNorm over the channel axis of NCHW (running statistics, no update)."""
    def per_channel(v):
        return np.asarray(v).reshape(1, -1, 1, 1)

    return (x - per_channel(running_mean)) / np.sqrt(per_channel(running_var) + eps) * per_channel(weight) \
        + per_channel(bias)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def max_pool2d(x: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """Max pooling; padded pixels are -inf, so they never win (PyTorch, Paddle and Flax agree)."""
    return _windows(_pad(x, padding, -np.inf), kernel_size, stride).max(axis=(4, 5))


def _avg_pool_matrix(size: int, out_size: int, kernel_size: int, stride: int, padding: int,
                     count_include_pad: bool) -> np.ndarray:
    """(out_size, size) matrix whose row ``o`` averages output ``o``'s window along one axis.

    PyTorch's rule (aten AvgPool2d): the window is [o*stride - padding, + kernel_size),
    clipped on the right to ``size + padding`` (with ceil_mode the last window may reach past
    the padding: that part is never counted). With ``count_include_pad`` the divisor is that
    clipped window, padding included; without it, only the pixels inside the input.
    Average pooling is separable, and the 2-D divisor is the product of the per-axis ones.
    """
    rows = np.zeros((out_size, size))
    for o in range(out_size):
        start = o * stride - padding
        end = min(start + kernel_size, size + padding)
        inside = slice(max(start, 0), min(end, size))
        divisor = (end - start) if count_include_pad else (inside.stop - inside.start)
        rows[o, inside] = 1.0 / divisor
    return rows


def avg_pool2d(x: np.ndarray, kernel_size: int, stride: int, padding: int = 0, *, ceil_mode: bool = False,
               count_include_pad: bool = True) -> np.ndarray:
    """Average pooling, exactly as ``torch.nn.AvgPool2d`` (and Paddle with ``exclusive`` =
    not ``count_include_pad``), including ``ceil_mode``'s extra partial windows."""
    op = P.AvgPool(kernel_size, stride, padding, ceil_mode, count_include_pad)  # the plan owns the size rule
    _, _, h, w = x.shape
    along_h = _avg_pool_matrix(h, op.out_size(h), kernel_size, stride, padding, count_include_pad)
    along_w = _avg_pool_matrix(w, op.out_size(w), kernel_size, stride, padding, count_include_pad)
    return np.einsum("oh,nchw,pw->ncop", along_h, x, along_w)


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, C): the mean over all spatial positions."""
    return x.mean(axis=(2, 3))


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x @ weight.T + bias, with weight in PyTorch's (out, in) layout."""
    return x @ weight.T + bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- walking the plan


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """timm's hard_sigmoid: relu6(x + 3) / 6."""
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


# --------------------------------------------------------------------------- the ConvNeXt generation

def layer_norm(x: np.ndarray, weight, bias, eps: float) -> np.ndarray:
    """Over axis 1 (channels) of an NCHW map or (N, C) vector, in float64."""
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / np.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)


def gelu(x):
    """Exact GELU, x * (1 + erf(x / sqrt(2))) / 2 (numpy has no erf: math.erf per element)."""
    erf = np.frompyfunc(math.erf, 1, 1)  # made per call: numpy is imported on first use (resnet_multi._lazy)
    return x * (1.0 + erf(x / math.sqrt(2.0)).astype(x.dtype)) / 2.0


def channel_linear(x, weight, bias):
    out = np.einsum("nchw,oc->nohw", x, weight)
    return out + bias.reshape(1, -1, 1, 1)


def layer_scale(x, scale):
    return x * scale.reshape((1, -1) + (1,) * (x.ndim - 2))


def interleave(a, b):
    n, c, h, w = a.shape
    return np.stack([a, b], axis=2).reshape(n, 2 * c, h, w)


def _bilinear_align_corners(weight, out_h, out_w):
    """(C, h, w, 2) -> (C, out_h, out_w, 2), bilinear with align_corners=True (F.interpolate's)."""
    c, h, w, _ = weight.shape

    def axis(n_in, n_out):
        if n_out == 1:
            pos = np.zeros(1)
        else:
            pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
        lo = np.floor(pos).astype(int).clip(0, n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = pos - lo
        return lo, hi, frac

    ylo, yhi, fy = axis(h, out_h)
    xlo, xhi, fx = axis(w, out_w)
    wx = fx[None, None, :, None]
    top = weight[:, ylo][:, :, xlo] * (1 - wx) + weight[:, ylo][:, :, xhi] * wx
    bot = weight[:, yhi][:, :, xlo] * (1 - wx) + weight[:, yhi][:, :, xhi] * wx
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


def global_filter(x, complex_weight):
    n, c, h, w = x.shape
    spectrum = np.fft.rfft2(x, axes=(2, 3), norm="ortho")
    weight = complex_weight
    if weight.shape[1:3] != spectrum.shape[2:4]:
        weight = _bilinear_align_corners(weight, *spectrum.shape[2:4])
    spectrum = spectrum * (weight[..., 0] + 1j * weight[..., 1])
    return np.fft.irfft2(spectrum, s=(h, w), axes=(2, 3), norm="ortho")


def adaptive_avg_pool(x, size):
    n, c, h, w = x.shape
    rows = [(i * h // size, -(-(i + 1) * h // size)) for i in range(size)]
    cols = [(j * w // size, -(-(j + 1) * w // size)) for j in range(size)]
    out = np.empty((n, c, size, size), x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


_ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid, "hard_sigmoid": hard_sigmoid, "gelu": gelu}


def _conv(op: P.Conv, inputs, weights):
    bias = weights[f"{op.name}.bias"] if op.bias else None
    return conv2d(inputs[0], weights[f"{op.name}.weight"], bias, stride=op.stride, padding=op.padding,
                  dilation=op.dilation, groups=op.groups)


def _batch_norm(op: P.BatchNorm, inputs, weights):
    return batch_norm(inputs[0], weights[f"{op.name}.weight"], weights[f"{op.name}.bias"],
                      weights[f"{op.name}.running_mean"], weights[f"{op.name}.running_var"], op.eps)


def _global_avg_pool(op: P.GlobalAvgPool, inputs, weights):
    pooled = global_avg_pool(inputs[0])
    return pooled if op.flatten else pooled[:, :, None, None]


OPS = {
    P.Conv: _conv,
    P.BatchNorm: _batch_norm,
    P.Act: lambda op, inputs, weights: _ACTIVATIONS[op.kind](inputs[0]),
    P.MaxPool: lambda op, inputs, weights: max_pool2d(inputs[0], op.kernel_size, op.stride, op.padding),
    P.AvgPool: lambda op, inputs, weights: avg_pool2d(inputs[0], op.kernel_size, op.stride, op.padding,
                                                      ceil_mode=op.ceil_mode,
                                                      count_include_pad=op.count_include_pad),
    P.GlobalAvgPool: _global_avg_pool,
    P.Flatten: lambda op, inputs, weights: inputs[0].reshape(inputs[0].shape[0], -1),
    P.Linear: lambda op, inputs, weights: linear(inputs[0], weights[f"{op.name}.weight"],
                                                 weights[f"{op.name}.bias"]),
    P.Dropout: lambda op, inputs, weights: inputs[0],  # eval mode
    P.Add: lambda op, inputs, weights: sum(inputs[1:], inputs[0]),
    P.Mul: lambda op, inputs, weights: inputs[0] * inputs[1],
    P.Concat: lambda op, inputs, weights: np.concatenate(inputs, axis=1),
    P.Slice: lambda op, inputs, weights: inputs[0][:, op.start:op.stop],
    P.AdaptiveAvgPool: lambda op, inputs, weights: adaptive_avg_pool(inputs[0], op.size),
    P.LayerNorm: lambda op, inputs, weights: layer_norm(inputs[0], weights[f"{op.name}.weight"],
                                                        weights[f"{op.name}.bias"], op.eps),
    P.ChannelLinear: lambda op, inputs, weights: channel_linear(inputs[0], weights[f"{op.name}.weight"],
                                                                weights[f"{op.name}.bias"]),
    P.LayerScale: lambda op, inputs, weights: layer_scale(inputs[0], weights[op.name]),
    P.DropPath: lambda op, inputs, weights: inputs[0],  # eval mode
    P.Scale: lambda op, inputs, weights: inputs[0] * op.factor,
    P.Interleave: lambda op, inputs, weights: interleave(*inputs),
    P.GlobalFilter: lambda op, inputs, weights: global_filter(inputs[0], weights[op.name]),
}
"""IR op type -> its numpy function ``f(op, inputs, weights)`` (NCHW, float64)."""


def run_op(op, inputs: list[np.ndarray], weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Apply one plan op to its ``inputs``, taking its parameters from canonical ``weights``."""
    function = OPS.get(type(op))
    if function is None:
        raise TypeError(f"reference: no numpy implementation of plan op {op!r}")
    return function(op, inputs, weights)


def reference_forward(plan: P.Plan, weights: Mapping[str, np.ndarray], x_nchw: np.ndarray, *,
                      taps: bool = False, precision: str = "float32") -> dict[str, np.ndarray]:
    """Eval-mode forward pass of ``plan`` in numpy, float64: the framework-free oracle.

    Args:
        plan: the model's plan (``rm.make_plan(spec)``).
        weights: complete canonical weights (torchvision names, PyTorch layout). They are
            rounded to ``precision`` first (what the models compared hold), then computed in float64.
        x_nchw: the input, (N, in_channels, H, W); also rounded to ``precision``, then upcast.
        taps: return every ``plan.tap_names`` entry, not only ``plan.output_names()``.
        precision: "float32" (default: float32 models) or "float64" (float64 models: no rounding).
    Returns:
        ``{tap name: float64 array}``, the same keys and shapes a backend's ``forward``
        returns: feature maps NCHW, ``pre_logits``/``logits`` 2-D. Dropout is off (eval).
    Example:
        >>> plan = rm.make_plan(rm.get_spec("resnet18"))
        >>> out = reference_forward(plan, random_weights(plan), x)["logits"]
    """
    plan.check_input_shape(np.shape(x_nchw))
    missing = [name for name in plan.params if name not in weights]
    if missing:
        raise KeyError(f"reference_forward: {len(missing)} weight(s) missing for {plan.spec.name!r}, "
                       f"e.g. {', '.join(missing[:5])}")
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision: expected 'float32' or 'float64', got {precision!r}")
    held = np.float32 if precision == "float32" else np.float64
    w = {name: np.asarray(weights[name], dtype=held).astype(np.float64) for name in plan.params}
    x = np.asarray(x_nchw, dtype=held).astype(np.float64)
    collected: dict[str, np.ndarray] = {}
    run_plan(plan, x, lambda node, *inputs: run_op(node.op, list(inputs), w), taps=collected)
    names = plan.tap_names if taps else plan.output_names()
    return {name: collected[name] for name in names}
