"""PyTorch backend: a plan compiled into a ``torch.nn.Module`` whose state_dict names are the
canonical names (torchvision's and timm's), so their checkpoints load with ``strict=True``.

Layout is PyTorch's own (NCHW, OIHW), so canonical weights map one to one; the only extra is
BatchNorm's ``num_batches_tracked`` buffer, which is dropped on export and kept on import.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from resnet_multi import plan as P

NAME = "torch"


# --------------------------------------------------------------------------- modules


def _layer(op) -> nn.Module | None:
    """The torch module for one plan op (None for ops without parameters: they run as functions)."""
    if isinstance(op, P.Conv):
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                         dilation=op.dilation, groups=op.groups, bias=op.bias)
    if isinstance(op, P.BatchNorm):
        return nn.BatchNorm2d(op.channels, eps=op.eps, momentum=op.momentum)
    if isinstance(op, P.ReLU):
        return nn.ReLU(inplace=True)
    if isinstance(op, P.MaxPool):
        return nn.MaxPool2d(op.kernel_size, op.stride, op.padding)
    if isinstance(op, P.AvgPool):
        return nn.AvgPool2d(op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                            count_include_pad=op.count_include_pad)
    raise TypeError(f"torch backend: no layer for plan op {op!r}")


def _attach(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Register ``module`` at ``dotted`` (e.g. "conv1.0" or "downsample.1"), making containers."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(leaf, module)


def _sequence(owner: nn.Module, ops, prefix: str) -> list[nn.Module]:
    """Modules for ``ops`` in order; named ones are registered under their canonical name
    relative to ``prefix``, so the state_dict keys are canonical."""
    seq = []
    for op in ops:
        module = _layer(op)
        name = getattr(op, "name", None)
        if name is not None:
            _attach(owner, name[len(prefix):] if prefix else name, module)
        seq.append(module)
    return seq


class SqueezeExcite(nn.Module):
    def __init__(self, op: P.SqueezeExcite):
        super().__init__()
        self.fc1 = nn.Conv2d(op.channels, op.reduced_channels, 1, bias=True)
        self.fc2 = nn.Conv2d(op.reduced_channels, op.channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Block(nn.Module):
    """relu(main(x) [* se] + shortcut(x)), with modules named as the plan says."""

    def __init__(self, block: P.Block):
        super().__init__()
        prefix = block.name + "."
        # Plain lists keep the execution order; the modules are registered by canonical name.
        self._main = _sequence(self, block.main, prefix)
        self._shortcut = _sequence(self, block.shortcut, prefix)
        if block.se is not None:
            self.se = SqueezeExcite(block.se)

    def forward(self, x):
        out = x
        for m in self._main:
            out = m(out)
        if hasattr(self, "se"):
            out = self.se(out)
        shortcut = x
        for m in self._shortcut:
            shortcut = m(shortcut)
        if out is x:  # no main path (no plan makes one): never write into the input
            return F.relu(out + shortcut)
        # In place, as torchvision's blocks: no new batch-sized tensor per block (resnet50 at
        # batch 8 was ~3-8% slower than torchvision with two). `out` is the main path's own
        # output (BN, conv or SE product), which no backward pass and no tap needs.
        out += shortcut
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    """A ResNet compiled from a plan. ``forward(x)`` returns logits, the last feature map, or
    (with ``out_indices``) a list of stage outputs; ``forward(x, taps={})`` also fills the dict
    with every named intermediate (``plan.tap_names``)."""

    def __init__(self, plan: P.Plan):
        super().__init__()
        self.plan = plan
        self._stem = _sequence(self, plan.stem, "")
        for stage in plan.stages:
            layer = nn.Sequential(*[Block(b) for b in stage.blocks])
            self.add_module(stage.name, layer)
        self._outputs = plan.output_names()
        if plan.head is not None:
            self.dropout = nn.Dropout(plan.head.dropout) if plan.head.dropout > 0 else None
            self.fc = nn.Linear(plan.head.fc.in_features, plan.head.fc.out_features)

    def forward(self, x, taps: dict | None = None):
        for m in self._stem:
            x = m(x)
        if taps is not None:
            taps["stem"] = x
        features = []
        for stage in self.plan.stages:
            layer = getattr(self, stage.name)
            for block, spec_block in zip(layer, stage.blocks):
                x = block(x)
                if taps is not None:
                    taps[spec_block.name] = x
            if taps is not None:
                taps[stage.name] = x
            features.append(x)
        if self.plan.head is None:
            if self.plan.out_indices is not None:
                return [features[i] for i in self.plan.out_indices]
            return x
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if taps is not None:
            taps["pre_logits"] = x
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.fc(x)
        if taps is not None:
            taps["logits"] = x
        return x


# --------------------------------------------------------------------------- contract


def is_model(model) -> bool:
    return isinstance(model, ResNet)


def plan_of(model: ResNet) -> P.Plan:
    return model.plan


def build(plan: P.Plan, weights: Mapping[str, np.ndarray]) -> ResNet:
    """A ``torch.nn.Module`` for ``plan`` holding ``weights`` (complete canonical dict), in eval mode.

    Modules are created on the meta device, so no time is spent on an init that the
    weights overwrite.
    """
    with torch.device("meta"):
        model = ResNet(plan)
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()
    import_weights(model, weights)
    return model.eval()


def export_weights(model: ResNet) -> dict[str, np.ndarray]:
    """Canonical weights (copies), without ``num_batches_tracked``."""
    state = model.state_dict()
    return {name: state[name].detach().cpu().numpy().copy() for name in model.plan.params}


def import_weights(model: ResNet, weights: Mapping[str, np.ndarray]) -> None:
    """Copy checked canonical ``weights`` (any subset of the plan's names) into ``model``.

    Shapes were checked against the plan by the caller; all tensors are converted first and
    copied only when every one converted, so a failure leaves the model untouched.
    """
    state = model.state_dict()
    staged = {}
    for name, value in weights.items():
        target = state[name]
        array = np.asarray(value)
        if tuple(array.shape) != tuple(target.shape):
            raise ValueError(f"{name}: expected shape {tuple(target.shape)}, found {array.shape}")
        staged[name] = torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype)
    with torch.no_grad():
        for name, tensor in staged.items():
            state[name].copy_(tensor)


def forward(model: ResNet, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward; returns ``{tap name: NCHW array}`` (only the outputs without taps)."""
    was_training = model.training
    model.eval()
    collected: dict = {}
    try:
        with torch.inference_mode():
            out = model(torch.from_numpy(x_nchw), taps=collected if taps else None)
    finally:
        model.train(was_training)
    if taps:
        return {name: t.contiguous().numpy() for name, t in collected.items()}
    outputs = out if isinstance(out, list) else [out]
    # contiguous(): an inference model (see optimize) computes in channels_last; hand out C-order NCHW
    return {name: t.contiguous().numpy() for name, t in zip(model.plan.output_names(), outputs)}


# --------------------------------------------------------------------------- native files (.pt / .pth)

SUFFIXES = (".pt", ".pth")
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays from a ``torch.save``d state_dict (or a dict holding one under a usual
    key such as ``state_dict``/``model``). Loaded with ``weights_only=True``: no arbitrary unpickling.
    A ``module.`` prefix (DataParallel) is removed."""
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: not a PyTorch state_dict (a dict of tensors, or one under "
                         f"{'/'.join(_STATE_DICT_KEYS)})")
    out = {}
    for name, tensor in obj.items():
        if name.startswith("module."):
            name = name[len("module."):]
        out[name] = tensor.detach().cpu().numpy()
    return out


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """``torch.save`` a state_dict of canonical weights (``num_batches_tracked`` added for BNs,
    as torchvision's own checkpoints have it)."""
    state = {}
    for name, array in weights.items():
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
        if name.endswith(".running_var"):
            state[name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    torch.save(state, os.fspath(path))


# --------------------------------------------------------------------------- inference fast path and export
# Optional hooks of the backend contract, used by resnet_multi.inference / resnet_multi.export.
# BatchNorm folding is done by the core; these only add what is PyTorch's own.


def optimize(model: ResNet) -> ResNet:
    """Eval-only speed-ups for a (BatchNorm-folded) model: weights in channels_last (NHWC)
    memory format, oneDNN's preferred layout for CPU convolutions (about 10% faster than NCHW
    for resnet50); activations follow the weights' format, so NCHW inputs still work, and no
    gradients (eval-only). The model stays a plain ``nn.Module``: ``torch.compile``,
    ``torch.jit.trace`` and ``torch.onnx.export`` take it as it is."""
    model = model.to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    return model.eval()


EXPORT_SUFFIX = ".onnx"


def export_model(model: ResNet, prefix: str, input_shape: tuple[int, ...]) -> list[str]:
    """Write ``model`` to ``<prefix>.onnx`` with ``torch.onnx.export`` (the dynamo exporter): one
    input ``x``, NCHW float32 of ``input_shape`` with a dynamic batch size; one output per
    ``plan.output_names()``. Returns the paths written."""
    path = prefix + EXPORT_SUFFIX
    # Traced at batch 2: torch.export specializes a size-1 dimension, which would fix the batch.
    x = torch.zeros((2, *input_shape[1:]), dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=list(model.plan.output_names()),
                          dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}}, dynamo=True,
                          external_data=False, verbose=False)
    return [path]


# --------------------------------------------------------------------------- training
# Hooks of resnet_multi.training: the neutral optimizer description (training.SGD / AdamW) as
# torch.optim's own optimizer, and one ordinary train step for check_training.


def make_optimizer(model: ResNet, spec) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (dampening 0, decay added to the gradient before momentum) or
    ``torch.optim.AdamW`` over ``model.parameters()``: exactly the neutral conventions, since
    they are PyTorch's. Parameters with ``requires_grad=False`` get no gradient and are skipped
    by the optimizer, as always in torch."""
    if spec.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                 weight_decay=spec.weight_decay)
    raise ValueError(f"torch backend: no optimizer for {spec!r}")


def _training_logits(out) -> torch.Tensor:
    """Logits for the training loss: the head's, or the output feature map(s) averaged over H, W
    (and concatenated along channels), as resnet_multi.training.check_training defines it."""
    if isinstance(out, (list, tuple)):
        return torch.cat([o.mean((2, 3)) for o in out], 1)
    return out.mean((2, 3)) if out.ndim == 4 else out


def train_step(model: ResNet, optimizer: torch.optim.Optimizer, x_nchw: np.ndarray, labels: np.ndarray):
    """One train-mode step: forward, mean cross-entropy, backward, ``optimizer.step()``.

    Returns:
        (loss as a float, {canonical name: gradient array}) for every parameter that got one.
    """
    model.train()
    dtype = next(model.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(x_nchw)).to(dtype)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(_training_logits(model(x)), y)
    loss.backward()
    grads = {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return float(loss.detach()), grads
