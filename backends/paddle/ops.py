"""Paddle's primitives: one table (``OPS``) from IR op type to its function and, for ops that
are modules or named parameterless ops, the factory of Paddle's layer (paddle.vision's own
type). The walk is the only dispatch; ``_module_tree.run_node`` picks the row.

Numerics that differ from PyTorch and are translated here (see docs/NUMERICS.md):
- BN momentum: Paddle's is the weight of the OLD running value, so it gets ``1 - momentum``.
- AvgPool: Paddle's ``exclusive`` is ``not count_include_pad`` (its default, True, is the
  opposite of PyTorch's default), always passed explicitly with ``ceil_mode``.
- Train-mode BN: Paddle stores the biased batch variance in ``_variance``; a spec with
  ``norm.running_var: unbiased`` (PyTorch's, every torchvision preset) gets ``BatchNorm2D``,
  which stores the unbiased one.
- float64 BN: Paddle's kernel holds momentum and epsilon as float32 attributes, so float64
  models normalize with ``BatchNorm2D``'s elementary ops instead (exact momentum and epsilon, in
  train and eval mode).
"""

from __future__ import annotations

import paddle
from paddle import ParamAttr, nn
from paddle.nn import functional as F
from paddle.nn.initializer import Constant

from resnet_multi import plan as P
from resnet_multi.backends._contract import Op

# build() overwrites every parameter, so none is initialised by Paddle: layers are created under
# paddle.LazyGuard (no memory allocated until set_value), and the initializer recorded for a
# later param.initialize() is a cheap zero fill, not Paddle's random ones.
_PLACEHOLDER = Constant(0.0)


def _param() -> ParamAttr:
    return ParamAttr(initializer=_PLACEHOLDER)


def add_parameter(layer: nn.Layer, name: str, shape: tuple) -> None:
    """A parameter of ``layer`` itself (``ir.PARAMETER_OPS``), in the default dtype."""
    layer.add_parameter(name, layer.create_parameter(list(shape), attr=_param()))


class BatchNorm2D(nn.BatchNorm2D):
    """``nn.BatchNorm2D`` that follows the spec exactly where Paddle's own kernel does not: the
    UNBIASED running variance (PyTorch's estimator, ``norm.running_var: unbiased``, torchvision's
    models), and in float64 the exact momentum and epsilon.

    float32 models run Paddle's kernel; in training, the kernel updates copies of the running
    statistics, from which the batch statistics are recovered exactly (a per-channel equation, no
    second pass over the activations) and the spec's update is assigned. The running statistics
    themselves are never inputs of the op, so the in-place assignment does not disturb the
    backward pass (also under ``paddle.jit.to_static``).

    float64 models compute the normalization from Paddle's elementary ops (``_exact_forward``):
    the kernel takes momentum AND epsilon as float32 attributes, so it normalizes by
    ``sqrt(var + float32(eps))``: 1.2e-9 relative off where a channel's variance is 1e-4, 1.2e-8
    at 1e-6 (a trained model's small running variances, or a batch with few values per channel),
    too coarse to prove two float64 models equal (docs/NUMERICS.md).
    """

    def __init__(self, *args, unbiased: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self._unbiased = unbiased

    def forward(self, x):
        if x.dtype == paddle.float64:
            return self._exact_forward(x)
        if not self.training or self._use_global_stats:
            return super().forward(x)
        mean, var = self._mean.detach().clone(), self._variance.detach().clone()
        out = F.batch_norm(x, mean, var, weight=self.weight, bias=self.bias, training=True, momentum=self._momentum,
                           epsilon=self._epsilon, data_format=self._data_format)
        kept = self._momentum  # Paddle's: the weight of the old value
        if kept == 1.0:  # spec momentum 0: the statistics never move
            return out
        with paddle.no_grad():
            if paddle.in_dynamic_mode():
                # the kernel updated the copies in place: recover the batch statistics from them
                batch_mean = (mean - kept * self._mean.detach()) / (1.0 - kept)
                batch_var = (var - kept * self._variance.detach()) / (1.0 - kept)  # biased
            else:  # a static program (to_static) has no in-place copies to read: reduce once more
                batch_mean = paddle.mean(x, axis=[0, 2, 3])
                batch_var = paddle.mean(paddle.square(x - batch_mean.reshape([1, -1, 1, 1])), axis=[0, 2, 3])
            self._update_running_stats(x, batch_mean, batch_var)
        return out

    def _update_running_stats(self, x, batch_mean, batch_var) -> None:
        """Move the running statistics towards the batch's (``batch_var`` biased), the spec's way."""
        kept = self._momentum
        if kept == 1.0:
            return
        if self._unbiased:
            n = paddle.numel(x).astype(batch_var.dtype) / x.shape[1]  # a tensor: right under to_static too
            batch_var = batch_var * n / (n - 1.0)
        # momentum as tensors of the statistics' dtype: in a static program `0.9 * t` is a scale
        # op with a float32 attribute, which would round it again
        keep, take = (paddle.full([], value, dtype=self._mean.dtype) for value in (kept, 1.0 - kept))
        paddle.assign(keep * self._mean.detach() + take * batch_mean, self._mean)
        paddle.assign(keep * self._variance.detach() + take * batch_var, self._variance)

    def _exact_forward(self, x):
        """``(x - mean) / sqrt(var + eps) * weight + bias`` from elementary ops, with the batch's
        statistics in training (the gradient is autograd's, through the mean and variance) and
        the running ones in eval; epsilon is a tensor, never a float32 attribute."""
        shape = [1, -1, 1, 1]
        if self.training and not self._use_global_stats:
            mean = paddle.mean(x, axis=[0, 2, 3])
            centered = x - mean.reshape(shape)
            var = paddle.mean(paddle.square(centered), axis=[0, 2, 3])  # biased: what normalizes
            with paddle.no_grad():
                # copies, not detach(): in a to_static program a detached value shares its
                # buffer, which the executor may then overwrite in place (rsqrt of var + eps):
                # the running variance came out 16-21% off, nondeterministically
                self._update_running_stats(x, mean.clone(), var.clone())
        else:
            centered = x - self._mean.reshape(shape)
            var = self._variance
        epsilon = paddle.full([], self._epsilon, dtype=x.dtype)
        out = centered * paddle.rsqrt(var + epsilon).reshape(shape)
        if self.weight is not None:
            out = out * self.weight.reshape(shape)
        if self.bias is not None:
            out = out + self.bias.reshape(shape)
        return out


def _hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


class HardSigmoid(nn.Layer):
    """timm's hard-sigmoid gate as a layer: ``relu6(x + 3) / 6``."""

    def forward(self, x):
        return _hard_sigmoid(x)


# --------------------------------------------------------------------------- functions

_ACTIVATIONS = {"relu": F.relu, "sigmoid": F.sigmoid, "hard_sigmoid": _hard_sigmoid,
                "gelu": lambda x: F.gelu(x, approximate=False)}


def add(node, *inputs):
    out = inputs[0]
    for other in inputs[1:]:
        out = out + other
    return out


def max_pool(node, x):
    op = node.op
    return F.max_pool2d(x, op.kernel_size, op.stride, op.padding, ceil_mode=False)


def avg_pool(node, x):
    op = node.op
    # exclusive=True means "padding not counted", i.e. PyTorch's count_include_pad=False.
    return F.avg_pool2d(x, op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                        exclusive=not op.count_include_pad)


def global_avg_pool(node, x):
    if node.op.flatten:  # paddle.vision's own head ops (AdaptiveAvgPool2D + flatten): identical outputs
        return paddle.flatten(adaptive_avg_pool(x, 1), 1)
    return paddle.mean(x, axis=[2, 3], keepdim=True)


def adaptive_avg_pool(x, size: int):
    """``F.adaptive_avg_pool2d(x, size)``, except in float64: Paddle's pooling kernels scale their
    float64 gradient by 1/(window area) rounded to float32, 2^-25 relative off wherever the area is
    not a power of two (docs/NUMERICS.md), so a float64 model averages each of PyTorch's windows
    with ``paddle.mean``, whose gradient is exact. float32 models run Paddle's own kernel."""
    if x.dtype != paddle.float64:
        return F.adaptive_avg_pool2d(x, size)
    if size == 1:
        return paddle.mean(x, axis=[2, 3], keepdim=True)
    rows, cols = P.adaptive_windows(x.shape[2], size), P.adaptive_windows(x.shape[3], size)
    return paddle.stack([paddle.stack([x[:, :, r0:r1, c0:c1].mean(axis=[2, 3]) for c0, c1 in cols], axis=-1)
                         for r0, r1 in rows], axis=-2)


class AdaptiveAvgPool2D(nn.AdaptiveAvgPool2D):
    """``nn.AdaptiveAvgPool2D``, the module torchvision's and paddle.vision's heads have (VGG's
    ``avgpool``, size 7; the ResNets' and ConvNeXt's, size 1), computed by ``adaptive_avg_pool``."""

    def forward(self, x):
        return adaptive_avg_pool(x, self._output_size)


# --------------------------------------------------------------------------- layers
# Every argument passed explicitly (Paddle's defaults differ).


def conv_layer(op: P.Conv, callers) -> nn.Layer:
    return nn.Conv2D(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                     dilation=op.dilation, groups=op.groups, padding_mode="zeros", weight_attr=_param(),
                     bias_attr=_param() if op.bias else False, data_format="NCHW")


def batch_norm_layer(op: P.BatchNorm, callers) -> nn.Layer:
    # Paddle's momentum weighs the old running value: the plan's (PyTorch's) m becomes 1 - m.
    args = dict(momentum=1.0 - op.momentum, epsilon=op.eps, weight_attr=_param(), bias_attr=_param(),
                data_format="NCHW")
    if op.running_var == "biased" and paddle.get_default_dtype() != "float64":
        return nn.BatchNorm2D(op.channels, **args)  # Paddle's own update is the spec's
    return BatchNorm2D(op.channels, unbiased=op.running_var == "unbiased", **args)


def avg_pool_layer(op: P.AvgPool, callers) -> nn.Layer:
    # exclusive=True means "padding not counted", i.e. PyTorch's count_include_pad=False.
    return nn.AvgPool2D(op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                        exclusive=not op.count_include_pad)


def global_avg_pool_layer(op: P.GlobalAvgPool, callers) -> nn.Layer:
    if op.flatten:
        raise TypeError(f"paddle backend: no layer for named plan op {op!r}")
    return AdaptiveAvgPool2D(1)


# --------------------------------------------------------------------------- the ConvNeXt generation


def _normalize_channels(x, eps: float):
    """``(x - mean) / sqrt(biased variance + eps)`` over axis 1, as the references write it. The
    square is a product, not ``pow(2)``: Paddle's ``pow`` is not correctly rounded (4% of float32
    squares differ from ``x * x`` in the last bit; torch's ``pow(2)``, numpy and JAX square
    exactly), and under Paddle Inference's oneDNN kernels at a fixed image size an activation on
    the centred map overwrote it while the division still needed it (docs/NUMERICS.md)."""
    centered = x - x.mean(axis=1, keepdim=True)
    variance = (centered * centered).mean(axis=1, keepdim=True)
    return centered / paddle.sqrt(variance + eps)


class LayerNorm2D(nn.Layer):
    """LayerNorm over the channels of an NCHW map (or an (N, C) vector), state ``weight`` and
    ``bias``. "fused" (``ir.LAYER_NORM_FORMS``): Paddle's ``F.layer_norm`` on the channels-last
    view (it normalizes trailing axes only); "explicit", and every float64 model: written out,
    since Paddle's kernel rounds epsilon to float32 in float64 (docs/NUMERICS.md)."""

    def __init__(self, channels: int, eps: float, form: str):
        super().__init__()
        self.eps, self.form, self.channels = eps, form, channels
        self.weight = self.create_parameter([channels], attr=_param())
        self.bias = self.create_parameter([channels], attr=_param(), is_bias=True)

    def forward(self, x):
        exact = self.form == "explicit" or x.dtype == paddle.float64
        if x.ndim == 2:
            if not exact:
                return F.layer_norm(x, [self.channels], self.weight, self.bias, self.eps)
            return _normalize_channels(x, self.eps) * self.weight + self.bias
        if exact:
            x = _normalize_channels(x, self.eps)
            return self.weight.reshape([-1, 1, 1]) * x + self.bias.reshape([-1, 1, 1])
        x = F.layer_norm(x.transpose([0, 2, 3, 1]), [self.channels], self.weight, self.bias, self.eps)
        return x.transpose([0, 3, 1, 2])


class ChannelLinear(nn.Linear):
    """``nn.Linear`` (weight (in, out)) over the channels of an NCHW map, on its channels-last view."""

    def forward(self, x):
        if x.ndim == 2:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x.transpose([0, 2, 3, 1]), self.weight, self.bias).transpose([0, 3, 1, 2])


class DropPath(nn.Layer):
    """Row-mode stochastic depth: in train mode each sample is zeroed with probability ``p`` and
    the others divided by ``1 - p``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), survival, dtype=x.dtype))
        return x * (noise / survival if survival > 0.0 else noise)


def layer_scale(node, x, scale):
    return scale.reshape([-1] + [1] * (x.ndim - 2)) * x


def interleave(node, a, b):
    n, c, h, w = a.shape
    return paddle.concat([a.unsqueeze(2), b.unsqueeze(2)], axis=2).reshape([n, 2 * c, h, w])


def global_filter(node, x, complex_weight):
    """HorNet's filter, in float32 (float64 in a float64 model)."""
    dtype = x.dtype
    compute = paddle.float64 if dtype == paddle.float64 else paddle.float32
    x = x.astype(compute)
    h, w = x.shape[2:]
    spectrum = paddle.fft.rfft2(x, axes=(2, 3), norm="ortho")
    weight = complex_weight.astype(compute)
    if list(weight.shape[1:3]) != list(spectrum.shape[2:4]):
        # as two matrix products, not F.interpolate, which places its samples in float32 even in float64
        rows = paddle.to_tensor(P.align_corners_matrix(weight.shape[1], spectrum.shape[2]), dtype=compute)
        cols = paddle.to_tensor(P.align_corners_matrix(weight.shape[2], spectrum.shape[3]), dtype=compute)
        weight = paddle.einsum("chwk,ih,jw->cijk", weight, rows, cols)
    weight = paddle.complex(weight[..., 0], weight[..., 1])
    return paddle.fft.irfft2(spectrum * weight, s=(h, w), axes=(2, 3), norm="ortho").astype(dtype)


def _no_function(node, *inputs):
    raise TypeError(f"paddle backend: plan op {node.op!r} runs only as a registered layer")


OPS: dict[type, Op] = {
    P.Conv: Op(_no_function, conv_layer),
    P.BatchNorm: Op(_no_function, batch_norm_layer),
    P.Linear: Op(_no_function, lambda op, callers: nn.Linear(op.in_features, op.out_features,
                                                             weight_attr=_param(), bias_attr=_param())),
    P.Dropout: Op(_no_function, lambda op, callers: nn.Dropout(op.rate, mode="upscale_in_train")),
    P.Act: Op(lambda node, x: _ACTIVATIONS[node.op.kind](x),
              lambda op, callers: {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "hard_sigmoid": HardSigmoid,
                                   "gelu": nn.GELU}[op.kind]()),
    P.MaxPool: Op(max_pool, lambda op, callers: nn.MaxPool2D(op.kernel_size, op.stride, op.padding,
                                                             ceil_mode=False)),
    P.AvgPool: Op(avg_pool, avg_pool_layer),
    P.GlobalAvgPool: Op(global_avg_pool, global_avg_pool_layer),
    P.Flatten: Op(lambda node, x: paddle.flatten(x, 1), lambda op, callers: nn.Flatten(1)),
    P.Add: Op(add),
    P.Mul: Op(lambda node, x, gate: x * gate),
    P.Concat: Op(lambda node, *inputs: paddle.concat(list(inputs), axis=1)),
    P.Slice: Op(lambda node, x: x[:, node.op.start:node.op.stop]),
    P.AdaptiveAvgPool: Op(lambda node, x: adaptive_avg_pool(x, node.op.size),
                          lambda op, callers: AdaptiveAvgPool2D(op.size)),
    P.LayerNorm: Op(_no_function, lambda op, callers: LayerNorm2D(op.channels, op.eps, op.form)),
    P.ChannelLinear: Op(_no_function, lambda op, callers: ChannelLinear(op.in_features, op.out_features,
                                                                        weight_attr=_param(), bias_attr=_param())),
    P.LayerScale: Op(layer_scale),
    P.DropPath: Op(_no_function, lambda op, callers: DropPath(op.rate)),
    P.Scale: Op(lambda node, x: x * node.op.factor),
    P.Interleave: Op(interleave),
    P.GlobalFilter: Op(global_filter),
}
"""IR op type -> how Paddle runs it."""


def spatial_mean(x):
    """Mean over H and W of an NCHW tensor (training logits of a headless model)."""
    return x.mean(axis=[2, 3])


def concat_channels(tensors):
    return paddle.concat(tensors, axis=1)
