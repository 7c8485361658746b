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
from resnet_multi.walk import run_part, run_plan, run_stage_via_container, stage_container

NAME = "torch"


# --------------------------------------------------------------------------- modules

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


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


def _module(op) -> nn.Module:
    """The torch module for one plan op that is a module (``plan.MODULE_OPS``)."""
    if isinstance(op, P.Conv):
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                         dilation=op.dilation, groups=op.groups, bias=op.bias)
    if isinstance(op, P.BatchNorm):
        bn = nn.BatchNorm2d(op.channels, eps=op.eps, momentum=op.momentum)
        if op.running_var == "biased":
            bn.register_forward_pre_hook(_remember_running_var)
            bn.register_forward_hook(_store_biased_running_var)
        return bn
    if isinstance(op, P.Linear):
        return nn.Linear(op.in_features, op.out_features)
    if isinstance(op, P.Dropout):
        return nn.Dropout(op.rate)
    raise TypeError(f"torch backend: no module for plan op {op!r}")


class HardSigmoid(nn.Module):
    """timm's hard-sigmoid gate as a module (``_hard_sigmoid``: exact in float64)."""

    def forward(self, x):
        return _hard_sigmoid(x)


def _function_module(op, inplace: bool) -> nn.Module:
    """The torch module for a named parameterless op (``plan.NAMEABLE_OPS``): the reference
    model's own module type. A ReLU module is in place (torchvision's ``ReLU(inplace=True)``)
    only when every node calling it may overwrite its input (``Node.inplace``)."""
    if isinstance(op, P.Act):
        return {"relu": lambda: nn.ReLU(inplace=inplace), "sigmoid": nn.Sigmoid, "hard_sigmoid": HardSigmoid}[op.kind]()
    if isinstance(op, P.MaxPool):
        return nn.MaxPool2d(op.kernel_size, op.stride, op.padding)
    if isinstance(op, P.AvgPool):
        return nn.AvgPool2d(op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                            count_include_pad=op.count_include_pad)
    if isinstance(op, P.GlobalAvgPool) and not op.flatten:
        return nn.AdaptiveAvgPool2d((1, 1))
    raise TypeError(f"torch backend: no module for named plan op {op!r}")


def _attach(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Register ``module`` at ``dotted`` (e.g. "conv1.0", "downsample.1", "layer1.0"), making
    containers: nn.Sequential where children are numbered (``model.layer1[0]`` works, as in
    torchvision), plain nn.Module otherwise."""
    *parents, leaf = dotted.split(".")
    for i, part in enumerate(parents):
        if part not in root._modules:
            numbered = (parents + [leaf])[i + 1].isdigit()
            root.add_module(part, nn.Sequential() if numbered else nn.Module())
        root = root._modules[part]
    root.add_module(leaf, module)


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


_ACTIVATIONS = {"relu": F.relu, "sigmoid": torch.sigmoid, "hard_sigmoid": _hard_sigmoid}


class _Runner(nn.Module):
    """A module that runs one plan part over its registered submodules. ``forward`` looks every
    module up by its canonical name at call time (never through references kept at build time),
    so replacing one (``model.layer1[0].bn1 = nn.Identity()``, SyncBatchNorm conversion) takes
    effect, and torch.fx sees ordinary submodule calls."""

    def _call(self, path: tuple, x):
        """Call the module at ``path`` below this one, looked up now (so surgery takes effect)."""
        module = self
        for part in path:
            module = module._modules[part]
        return module(x)

    def _run_node(self, node, *inputs):
        op = node.op
        kind = type(op)
        if kind in _MODULE_KINDS or (kind in _NAMEABLE_KINDS and op.name):
            return self._call(self._paths[op.name], inputs[0])
        if kind is P.Act:
            if op.kind == "relu":
                return F.relu(inputs[0], inplace=node.inplace)
            if op.kind == "hard_sigmoid":
                return _hard_sigmoid(inputs[0])  # by its global name, which torch.fx.wrap patches
            return _ACTIVATIONS[op.kind](inputs[0])
        if kind is P.Add:
            if node.inplace:  # as torchvision's `out += identity`: no new batch-sized tensor
                out = inputs[0]
                for other in inputs[1:]:
                    out += other
                return out
            return sum(inputs[1:], inputs[0])
        if kind is P.Mul:
            return inputs[0] * inputs[1]
        if kind is P.MaxPool:
            return F.max_pool2d(inputs[0], op.kernel_size, op.stride, op.padding)
        if kind is P.AvgPool:
            return F.avg_pool2d(inputs[0], op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                                count_include_pad=op.count_include_pad)
        if kind is P.GlobalAvgPool:
            if op.flatten:  # torchvision's head ops, so logits are bit-identical to its models'
                return torch.flatten(F.adaptive_avg_pool2d(inputs[0], 1), 1)
            return inputs[0].mean((2, 3), keepdim=True)  # timm's SE
        if kind is P.Flatten:
            return torch.flatten(inputs[0], 1)
        if kind is P.Concat:
            return torch.cat(inputs, 1)
        if kind is P.Slice:
            return inputs[0][:, op.start:op.stop]
        raise TypeError(f"torch backend: cannot run plan op {op!r}")

    def _register(self, part: P.Part) -> None:
        """Register the part's modules, and its named parameterless ops' modules, in execution
        order (so a container such as ResNet-D's ``downsample`` runs them in order when called)."""
        self._paths = {}
        callers = part.named_functions
        for node in part.nodes:
            op = node.op
            name = op.name if isinstance(op, P.MODULE_OPS) else P.module_name(op)
            if not name or name in self._paths:  # a function, or a module called again (a block's relu)
                continue
            local = part.local_name(op)
            if isinstance(op, P.MODULE_OPS):
                module = _module(op)
            else:
                module = _function_module(op, inplace=all(caller.inplace for caller in callers[name]))
            _attach(self, local, module)
            self._paths[name] = tuple(local.split("."))


_MODULE_KINDS = frozenset(P.MODULE_OPS)
_NAMEABLE_KINDS = frozenset(P.NAMEABLE_OPS)


class Block(_Runner):
    """One block of the plan (its ops wired as ``plan.Part`` says), modules named as the plan says."""

    def __init__(self, block: P.Part):
        super().__init__()
        self.part = block
        self._register(block)

    def forward(self, x):
        return run_part(self.part, x, self._run_node)


def _canonical_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: rename keys that are aliases of the plan (``Plan.aliases``) to
    their canonical names, as torchvision's DenseNet loader does for its legacy keys. torch hands
    hooks its own copy of the dict, so the caller's is never changed."""
    plan = module.plan
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = plan.canonical_name(key[len(prefix):])
        if prefix + name != key:
            state_dict[prefix + name] = state_dict.pop(key)


class ResNet(_Runner):
    """A network compiled from a plan. ``forward(x)`` returns logits, the last feature map, or
    (with ``out_indices``) a list of stage outputs; ``forward_taps(x)`` returns every named
    intermediate (``plan.tap_names``) as a dict. ``forward`` takes only ``x``, as torchvision's,
    so ``torch.fx.symbolic_trace(model)`` traces it with no ``concrete_args``.

    Stem and head modules sit on the model itself (``model.conv1``, ``model.fc``), blocks at
    their canonical paths (``model.layer3[4]``); ``forward`` reaches all of them through the
    registered modules, so module surgery works as on torchvision's models."""

    def __init__(self, plan: P.Plan):
        super().__init__()
        self.plan = plan
        self._register(plan.stem)
        paths = dict(self._paths)
        # A stage's blocks sit in an nn.Sequential (torchvision's ``layer1``, ``denseblock2``, timm's
        # ``blocks.3``), which forward calls, so hooks on it fire and ``model.layer4(x)`` works
        self._stages = {}
        for stage in plan.stages:
            split = stage_container(stage)
            for i, block in enumerate(stage.blocks):
                if split is not None and i == split[0]:
                    _attach(self, split[1], nn.Sequential())
                _attach(self, block.name, Block(block))
            if split is not None:
                self._stages[stage.name] = (stage.blocks[:split[0]], tuple(split[1].split(".")))
        for part in plan.flat_parts[1:]:  # neck, head
            self._register(part)
            paths.update(self._paths)
        self._paths = paths
        self._blocks = {block.name: tuple(block.name.split(".")) for stage in plan.stages for block in stage.blocks}
        if plan.aliases:  # other names of the same tensors load too (torchvision's legacy DenseNet keys)
            self._register_load_state_dict_pre_hook(_canonical_keys, with_module=True)

    def _run_block(self, block: P.Part, x):
        return self._call(self._blocks[block.name], x)

    def _run_stage(self, stage: P.Stage, x):
        return run_stage_via_container(stage, x, self._stages.get(stage.name), self._run_block, self._call)

    def forward(self, x):
        return run_plan(self.plan, x, self._run_node, run_block=self._run_block, run_stage=self._run_stage)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first. TorchScript cannot compile the plan walk (dataclass
        # ops, dicts of values); without this its error is "Failed to get source for Part.__init__".
        raise TypeError("torch.jit.script cannot compile a resnet_multi model (it runs a plan walk TorchScript "
                        "does not support); use torch.jit.trace(model, x) or torch.export.export(model, (x,)), "
                        "which give the same graph, or rm.export(model, path, input_shape) for ONNX")

    def forward_taps(self, x) -> dict:
        """``{tap name: tensor}`` for every ``plan.tap_names`` entry, in execution order."""
        taps: dict = {}
        run_plan(self.plan, x, self._run_node, taps=taps, run_block=self._run_block)
        return taps


# --------------------------------------------------------------------------- contract


def is_model(model) -> bool:
    return isinstance(model, ResNet)


def plan_of(model: ResNet) -> P.Plan:
    return model.plan


def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> ResNet:
    """A ``torch.nn.Module`` for ``plan`` holding ``weights`` (complete canonical dict), in eval
    mode, with parameters and buffers of ``dtype`` (a key of ``DTYPES``).

    Modules are created on the meta device, so no time is spent on an init that the
    weights overwrite.
    """
    with torch.device("meta"):
        model = ResNet(plan)
    model = model.to_empty(device="cpu").to(DTYPES[dtype])
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()
    import_weights(model, weights)
    return model.eval()


def export_weights(model: ResNet) -> dict[str, np.ndarray]:
    """Canonical weights (copies), without ``num_batches_tracked``."""
    state = model.state_dict()
    return {name: tensor_to_numpy(state[name]).copy() for name in model.plan.params}


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
        staged[name] = numpy_to_tensor(array).to(target.dtype)
    with torch.no_grad():
        for name, tensor in staged.items():
            state[name].copy_(tensor)


def _dtype_of(model: ResNet) -> torch.dtype:
    for tensor in model.parameters():
        return tensor.dtype
    return torch.float32


def forward(model: ResNet, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward; returns ``{tap name: NCHW array}`` (only the outputs without taps).
    The input is cast to the model's dtype; bfloat16 results are returned as float32."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.from_numpy(x_nchw).to(_dtype_of(model))
            out = model.forward_taps(x) if taps else model(x)
    finally:
        model.train(was_training)

    def array(t):  # contiguous(): an inference model (see optimize) computes in channels_last
        t = t.contiguous()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    if taps:
        return {name: array(t) for name, t in out.items()}
    outputs = out if isinstance(out, list) else [out]
    return {name: array(t) for name, t in zip(model.plan.output_names(), outputs)}


# --------------------------------------------------------------------------- native files (.pt / .pth)

SUFFIXES = (".pt", ".pth")
# numpy's bfloat16 (ml_dtypes, a dependency of the core) is imported by the functions that need it,
# which keeps this section's imports within it.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays from a ``torch.save``d state_dict (or a dict holding one under a usual
    key such as ``state_dict``/``model``). Loaded with ``weights_only=True``: no arbitrary unpickling.
    A ``module.`` prefix (DataParallel) is removed. Dtypes are kept (bfloat16 tensors become
    ``ml_dtypes.bfloat16`` arrays, see ``tensor_to_numpy``)."""
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
        out[name] = tensor_to_numpy(tensor)
    return out


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as a numpy array of the same dtype, bfloat16 included (as an
    ``ml_dtypes.bfloat16`` array: ``Tensor.numpy()`` refuses bfloat16, so its bits are viewed
    as int16 and reinterpreted; no value passes through float32). Shares memory when it can."""
    import ml_dtypes

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    """The inverse of ``tensor_to_numpy``: a tensor of the array's dtype (``ml_dtypes.bfloat16``
    becomes ``torch.bfloat16``, bit for bit). Shares memory with a C-contiguous array."""
    import ml_dtypes

    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """``torch.save`` a state_dict of canonical weights (``num_batches_tracked`` added for BNs,
    as torchvision's own checkpoints have it). Dtypes are kept: bfloat16 arrays become
    ``torch.bfloat16`` tensors."""
    state = {}
    for name, array in weights.items():
        state[name] = numpy_to_tensor(array)
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
