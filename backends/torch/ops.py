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
    return {"sigmoid": nn.Sigmoid, "hard_sigmoid": HardSigmoid}[op.kind]()


def global_avg_pool_module(op: P.GlobalAvgPool, callers) -> nn.Module:
    if op.flatten:
        raise TypeError(f"torch backend: no module for named plan op {op!r}")
    return nn.AdaptiveAvgPool2d((1, 1))


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
    P.Flatten: Op(lambda node, x: torch.flatten(x, 1)),
    P.Add: Op(add),
    P.Mul: Op(lambda node, x, gate: x * gate),
    P.Concat: Op(lambda node, *inputs: torch.cat(inputs, 1)),
    P.Slice: Op(lambda node, x: x[:, node.op.start:node.op.stop]),
}
"""IR op type -> how torch runs it."""


def spatial_mean(x):
    """Mean over H and W of an NCHW tensor (training logits of a headless model)."""
    return x.mean((2, 3))


def concat_channels(tensors):
    return torch.cat(tensors, 1)
