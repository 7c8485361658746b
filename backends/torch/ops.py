"""PyTorch's primitives: one table (``OPS``) from IR op type to its function and, for ops that
are modules or named parameterless ops, the factory of torch's module (the reference model's own
type). The walk is the only dispatch; ``_module_tree.run_node`` picks the row."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from resnet_multi import plan as P
from resnet_multi.backends._contract import Op


def _remember_running_var(bn: nn.BatchNorm2d, args) -> None:
    """Forward pre-hook of a biased-estimator BatchNorm (see ``_store_biased_running_var``)."""
    if bn.training and bn.track_running_stats and bn.momentum is not None:
        bn._running_var_before = bn.running_var.detach().clone()


def _store_biased_running_var(bn: nn.BatchNorm2d, args, out) -> None:
    """Forward hook that makes a train-mode ``nn.BatchNorm2d`` store the BIASED batch variance in
    ``running_var`` (Paddle's, Flax's and Keras' estimator; spec ``norm.running_var: biased``).

    The output and the running mean are torch's own. torch stores ``(1-m)*old + m*v*n/(n-1)``
    (``v`` the biased variance of ``n`` values per channel), so the biased update
    ``(1-m)*old + m*v`` is that minus ``(new - (1-m)*old) / n``: a per-channel correction, no
    second pass over the activations. Hooks on torch's own module, not a subclass: torch.fx keeps
    a BatchNorm2d as one leaf call (a subclass would be traced into), and the hooks stay attached
    to the traced module. ``SyncBatchNorm.convert_sync_batchnorm`` makes torch's own (unbiased)
    SyncBatchNorm, without them.
    """
    old = bn.__dict__.pop("_running_var_before", None)
    if old is None:
        return
    n = args[0].numel() // args[0].shape[1]
    with torch.no_grad():
        # through .data: autograd saved running_var for the BN backward, and changing the tensor
        # itself in place fails loss.backward(); the train-mode backward never reads its values
        bn.running_var.data.sub_((bn.running_var - (1.0 - bn.momentum) * old) / n)


@torch.fx.wrap  # one node in a torch.fx graph: fx cannot trace a branch on a tensor's dtype
def _hard_sigmoid(x):
    """timm's gate, ``F.hardsigmoid``: bit for bit timm's, forward and backward, in float32 and
    under bfloat16 autocast (it computes in float32 and rounds once). In float64 it is
    ``relu6(x + 3) / 6`` instead: the same forward, but F.hardsigmoid's backward multiplies by
    ``1.0f / 6.0f``, a float32 constant, even for float64 tensors (gradients 2.98e-8 relative
    off, which float64 training parity flags; docs/NUMERICS.md). ``relu6(x + 3) / 6`` for every
    dtype would round twice in bfloat16 (one ulp off timm's gate)."""
    if x.dtype == torch.float64:
        return F.relu6(x + 3.0) / 6.0
    return F.hardsigmoid(x)


def _gelu(x):
    """Exact GELU (erf, never the tanh approximation). A map held channels-last (between the
    Linears of ConvNeXt's and HorNet's MLPs, as ``ChannelLinear`` leaves it) goes through on its
    channels-last view, the contiguous tensor the reference models pass: torch's GELU kernel rounds
    the strided NCHW view of the same memory differently (1e-7)."""
    if x.ndim == 4 and not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous():
        return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.gelu(x)


class GELU(nn.GELU):
    """``nn.GELU`` (exact), on a channels-last map's channels-last view (see ``_gelu``)."""

    def forward(self, x):
        return _gelu(x)


class HardSigmoid(nn.Module):
    """timm's hard-sigmoid gate as a module (``_hard_sigmoid``: exact in float64)."""

    def forward(self, x):
        return _hard_sigmoid(x)


# --------------------------------------------------------------------------- functions


def act(node, x):
    kind = node.op.kind
    if kind == "relu":
        return F.relu(x, inplace=node.inplace)
    if kind == "hard_sigmoid":
        return _hard_sigmoid(x)  # by its global name, which torch.fx.wrap patches
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "gelu":
        return _gelu(x)
    raise TypeError(f"torch backend: no activation {kind!r}")


def add(node, *inputs):
    if node.inplace:  # as torchvision's `out += identity`: no new batch-sized tensor
        out = inputs[0]
        for other in inputs[1:]:
            out += other
        return out
    return sum(inputs[1:], inputs[0])


def max_pool(node, x):
    op = node.op
    return F.max_pool2d(x, op.kernel_size, op.stride, op.padding)


def avg_pool(node, x):
    op = node.op
    return F.avg_pool2d(x, op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                        count_include_pad=op.count_include_pad)


def global_avg_pool(node, x):
    if node.op.flatten:  # torchvision's head ops, so logits are bit-identical to its models'
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return x.mean((2, 3), keepdim=True)  # timm's SE


# --------------------------------------------------------------------------- modules


def conv_module(op: P.Conv, callers) -> nn.Module:
    return nn.Conv2d(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                     dilation=op.dilation, groups=op.groups, bias=op.bias)


def batch_norm_module(op: P.BatchNorm, callers) -> nn.Module:
    bn = nn.BatchNorm2d(op.channels, eps=op.eps, momentum=op.momentum)
    if op.running_var == "biased":
        bn.register_forward_pre_hook(_remember_running_var)
        bn.register_forward_hook(_store_biased_running_var)
    return bn


def act_module(op: P.Act, callers) -> nn.Module:
    """A ReLU module is in place (torchvision's ``ReLU(inplace=True)``) only when every node
    calling it may overwrite its input (``Node.inplace``)."""
    if op.kind == "relu":
        return nn.ReLU(inplace=all(caller.inplace for caller in callers))
    return {"sigmoid": nn.Sigmoid, "hard_sigmoid": HardSigmoid, "gelu": GELU}[op.kind]()


def global_avg_pool_module(op: P.GlobalAvgPool, callers) -> nn.Module:
    if op.flatten:
        raise TypeError(f"torch backend: no module for named plan op {op!r}")
    return nn.AdaptiveAvgPool2d((1, 1))


# --------------------------------------------------------------------------- the ConvNeXt generation


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (or an (N, C) vector), in the reference's form
    (``ir.LAYER_NORM_FORMS``): "fused" is torchvision's ``LayerNorm2d`` (``F.layer_norm`` on the
    channels-last view, as ``nn.LayerNorm`` after a permute), "explicit" HorNet's channels-first
    LayerNorm written out. Its state is ``nn.LayerNorm``'s (``weight``, ``bias``)."""

    def __init__(self, channels: int, eps: float, form: str):
        super().__init__(channels, eps=eps)
        self.form = form

    def forward(self, x):
        if x.ndim == 2:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if self.form == "explicit":
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + self.eps)
            return self.weight[:, None, None] * x + self.bias[:, None, None]
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form!r}"


class ChannelLinear(nn.Linear):
    """``nn.Linear`` over the channels of an NCHW map: applied to its channels-last view, as
    ConvNeXt's and HorNet's MLPs are (between permutes). Its state is ``nn.Linear``'s."""

    def forward(self, x):
        if x.ndim == 2:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Row-mode stochastic depth (torchvision's ``StochasticDepth(p, "row")``): in train mode each
    sample is zeroed with probability ``p`` and the others divided by ``1 - p``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode='row'"


def layer_scale(node, x, scale):
    # the reference's (C, 1, 1) or (C,) parameter, over the channels of x
    return scale.reshape((-1,) + (1,) * (x.ndim - 2)) * x


def interleave(node, a, b):
    n, c, h, w = a.shape
    return torch.cat([a.unsqueeze(2), b.unsqueeze(2)], dim=2).reshape(n, 2 * c, h, w)


def global_filter(node, x, complex_weight):
    """HorNet's filter, in float32 as HorNet computes it (float64 in a float64 model, so that it
    stays exact there)."""
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x = x.to(compute)
    h, w = x.shape[2:]
    spectrum = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
    weight = complex_weight.to(compute)
    if tuple(weight.shape[1:3]) != tuple(spectrum.shape[2:4]):
        weight = F.interpolate(weight.permute(3, 0, 1, 2), size=spectrum.shape[2:4], mode="bilinear",
                               align_corners=True).permute(1, 2, 3, 0)
    weight = torch.view_as_complex(weight.contiguous())
    return torch.fft.irfft2(spectrum * weight, s=(h, w), dim=(2, 3), norm="ortho").to(dtype)


def _adaptive_avg_pool_module(op, callers) -> nn.Module:
    return nn.AdaptiveAvgPool2d((op.size, op.size))


def _no_function(node, *inputs):
    raise TypeError(f"torch backend: plan op {node.op!r} runs only as a registered module")


OPS: dict[type, Op] = {
    P.Conv: Op(_no_function, conv_module),
    P.BatchNorm: Op(_no_function, batch_norm_module),
    P.Linear: Op(_no_function, lambda op, callers: nn.Linear(op.in_features, op.out_features)),
    P.Dropout: Op(_no_function, lambda op, callers: nn.Dropout(op.rate)),
    P.Act: Op(act, act_module),
    P.MaxPool: Op(max_pool, lambda op, callers: nn.MaxPool2d(op.kernel_size, op.stride, op.padding)),
    P.AvgPool: Op(avg_pool, lambda op, callers: nn.AvgPool2d(op.kernel_size, op.stride, op.padding,
                                                             ceil_mode=op.ceil_mode,
                                                             count_include_pad=op.count_include_pad)),
    P.GlobalAvgPool: Op(global_avg_pool, global_avg_pool_module),
    P.Flatten: Op(lambda node, x: torch.flatten(x, 1), lambda op, callers: nn.Flatten(1)),
    P.Add: Op(add),
    P.Mul: Op(lambda node, x, gate: x * gate),
    P.Concat: Op(lambda node, *inputs: torch.cat(inputs, 1)),
    P.Slice: Op(lambda node, x: x[:, node.op.start:node.op.stop]),
    P.AdaptiveAvgPool: Op(lambda node, x: F.adaptive_avg_pool2d(x, node.op.size), _adaptive_avg_pool_module),
    P.LayerNorm: Op(_no_function, lambda op, callers: LayerNorm2d(op.channels, op.eps, op.form)),
    P.ChannelLinear: Op(_no_function, lambda op, callers: ChannelLinear(op.in_features, op.out_features)),
    P.LayerScale: Op(layer_scale),
    P.DropPath: Op(_no_function, lambda op, callers: DropPath(op.rate)),
    P.Scale: Op(lambda node, x: x * node.op.factor),
    P.Interleave: Op(interleave),
    P.GlobalFilter: Op(global_filter),
}
"""IR op type -> how torch runs it."""


def spatial_mean(x):
    """Mean over H and W of an NCHW tensor (training logits of a headless model)."""
    return x.mean((2, 3))


def concat_channels(tensors):
    return torch.cat(tensors, 1)
