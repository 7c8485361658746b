"""PaddlePaddle backend: a plan compiled into a ``paddle.nn.Layer`` whose state_dict names are the
canonical names, except where Paddle itself differs: BatchNorm's running statistics are ``_mean``
and ``_variance``, and a Linear weight is stored (in, out). So ``paddle.vision.models`` ResNets and
PaddleOCR's ResNet45 checkpoints load with ``set_state_dict`` as they are.

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

import os
import pickle
import tempfile
import warnings
from typing import Mapping

import numpy as np
import paddle
from paddle import ParamAttr, nn
from paddle.jit.dy2static.program_translator import StaticFunction
from paddle.nn import functional as F
from paddle.nn.initializer import Constant

from resnet_multi import plan as P
from resnet_multi.walk import run_part, run_plan, run_stage_via_container, stage_container
from resnet_multi.io_util import atomic_path
from resnet_multi.training import OptimizerError
from resnet_multi.weights import FRAMEWORK_EXTRAS

NAME = "paddle"

# The walk's control flow depends only on the plan, never on tensor values: Paddle's AST
# to_static (paddle.jit.save, to_static(full_graph=True)) runs it as plain Python instead of
# rewriting its loops and branches into graph control flow.
for _walk in (run_part, run_plan):
    paddle.jit.not_to_static(_walk)

# build() overwrites every parameter, so none is initialised by Paddle: layers are created under
# paddle.LazyGuard (no memory allocated until set_value), and the initializer recorded for a
# later param.initialize() is a cheap zero fill, not Paddle's random ones (ResNet-152: 1.4 s -> 0.2 s).
_PLACEHOLDER = Constant(0.0)


# --------------------------------------------------------------------------- layers

DTYPES = ("float32", "float64")
"""Paddle's CPU kernels have no bfloat16 convolution: a bfloat16 build is refused by ``build``."""


def _param() -> ParamAttr:
    return ParamAttr(initializer=_PLACEHOLDER)


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


def _layer(op) -> nn.Layer:
    """The Paddle layer for one plan op that is a module; every argument passed explicitly
    (Paddle's defaults differ)."""
    if isinstance(op, P.Conv):
        return nn.Conv2D(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride, padding=op.padding,
                         dilation=op.dilation, groups=op.groups, padding_mode="zeros", weight_attr=_param(),
                         bias_attr=_param() if op.bias else False, data_format="NCHW")
    if isinstance(op, P.BatchNorm):
        # Paddle's momentum weighs the old running value: the plan's (PyTorch's) m becomes 1 - m.
        args = dict(momentum=1.0 - op.momentum, epsilon=op.eps, weight_attr=_param(), bias_attr=_param(),
                    data_format="NCHW")
        if op.running_var == "biased" and paddle.get_default_dtype() != "float64":
            return nn.BatchNorm2D(op.channels, **args)  # Paddle's own update is the spec's
        return BatchNorm2D(op.channels, unbiased=op.running_var == "unbiased", **args)
    if isinstance(op, P.Linear):
        return nn.Linear(op.in_features, op.out_features, weight_attr=_param(), bias_attr=_param())
    if isinstance(op, P.Dropout):
        return nn.Dropout(op.rate, mode="upscale_in_train")
    raise TypeError(f"paddle backend: no layer for plan op {op!r}")


def _function_layer(op) -> nn.Layer:
    """The Paddle layer for a named parameterless op (``plan.NAMEABLE_OPS``): paddle.vision's
    own layer type (``relu``, ``maxpool``, ``avgpool``)."""
    if isinstance(op, P.Act):
        return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "hard_sigmoid": HardSigmoid}[op.kind]()
    if isinstance(op, P.MaxPool):
        return nn.MaxPool2D(op.kernel_size, op.stride, op.padding, ceil_mode=False)
    if isinstance(op, P.AvgPool):
        # exclusive=True means "padding not counted", i.e. PyTorch's count_include_pad=False.
        return nn.AvgPool2D(op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                            exclusive=not op.count_include_pad)
    if isinstance(op, P.GlobalAvgPool) and not op.flatten:
        return nn.AdaptiveAvgPool2D(1)
    raise TypeError(f"paddle backend: no layer for named plan op {op!r}")


def _attach(root: nn.Layer, dotted: str, layer: nn.Layer) -> None:
    """Register ``layer`` at ``dotted`` (e.g. "conv1.0", "downsample.1", "layer1.0"), making
    containers: nn.Sequential where children are numbered (``model.layer1[0]``, as in
    paddle.vision), plain nn.Layer otherwise."""
    *parents, leaf = dotted.split(".")
    for i, part in enumerate(parents):
        if part not in root._sub_layers:
            numbered = (parents + [leaf])[i + 1].isdigit()
            root.add_sublayer(part, nn.Sequential() if numbered else nn.Layer())
        root = root._sub_layers[part]
    root.add_sublayer(leaf, layer)


_ACTIVATIONS = {"relu": F.relu, "sigmoid": F.sigmoid, "hard_sigmoid": lambda x: F.relu6(x + 3.0) / 6.0}
_MODULE_KINDS = frozenset(P.MODULE_OPS)
_NAMEABLE_KINDS = frozenset(P.NAMEABLE_OPS)


class HardSigmoid(nn.Layer):
    """timm's hard-sigmoid gate as a layer: ``relu6(x + 3) / 6``."""

    def forward(self, x):
        return _ACTIVATIONS["hard_sigmoid"](x)


class _Runner(nn.Layer):
    """A layer that runs one plan part over its registered sublayers, each looked up by its
    canonical name at call time (never through references kept at build time), so replacing one
    (``model.layer1[0].bn1 = nn.Identity()``, SyncBatchNorm conversion) takes effect.

    Control flow depends only on the plan, never on data, so ``paddle.jit.to_static`` converts it.
    """

    def _call(self, path: tuple, x):
        """Call the layer at ``path`` below this one, looked up now (so surgery takes effect)."""
        layer = self
        for part in path:
            layer = layer._sub_layers[part]
        return layer(x)

    def _run_node(self, node, *inputs):
        op = node.op
        kind = type(op)
        if kind in _MODULE_KINDS or (kind in _NAMEABLE_KINDS and op.name and op.name in self._paths):
            return self._call(self._paths[op.name], inputs[0])
        if kind is P.Act:
            return _ACTIVATIONS[op.kind](inputs[0])
        if kind is P.Add:
            out = inputs[0]
            for other in inputs[1:]:
                out = out + other
            return out
        if kind is P.Mul:
            return inputs[0] * inputs[1]
        if kind is P.MaxPool:
            return F.max_pool2d(inputs[0], op.kernel_size, op.stride, op.padding, ceil_mode=False)
        if kind is P.AvgPool:
            # exclusive=True means "padding not counted", i.e. PyTorch's count_include_pad=False.
            return F.avg_pool2d(inputs[0], op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode,
                                exclusive=not op.count_include_pad)
        if kind is P.GlobalAvgPool:
            if op.flatten:  # paddle.vision's own head ops (AdaptiveAvgPool2D + flatten): identical outputs
                return paddle.flatten(F.adaptive_avg_pool2d(inputs[0], 1), 1)
            return paddle.mean(inputs[0], axis=[2, 3], keepdim=True)
        if kind is P.Flatten:
            return paddle.flatten(inputs[0], 1)
        if kind is P.Concat:
            return paddle.concat(list(inputs), axis=1)
        if kind is P.Slice:
            return inputs[0][:, op.start:op.stop]
        raise TypeError(f"paddle backend: cannot run plan op {op!r}")

    def _register(self, part: P.Part, names: Mapping[str, str]) -> dict:
        """Register the part's layers under their Paddle names (``names``: the plan's
        ``aliases["paddle"]``, e.g. PaddleClas' DenseNet names; canonical otherwise), in
        execution order. A named parameterless op gets paddle.vision's layer for it, once however
        many nodes call it, unless its Paddle name is "" (PaddleClas has no such layer): then it
        runs as a function."""
        prefix = names.get(part.name, part.name) + "." if part.prefix else ""
        paths = {}
        for node in part.nodes:
            op = node.op
            name = op.name if isinstance(op, P.MODULE_OPS) else P.module_name(op)
            native = names.get(name, name)
            if not native or name in paths:
                continue
            assert native.startswith(prefix), f"plan aliases: {native!r} is not inside {prefix!r}"
            local = native[len(prefix):]
            _attach(self, local, _layer(op) if isinstance(op, P.MODULE_OPS) else _function_layer(op))
            paths[name] = tuple(local.split("."))
        return paths


class Block(_Runner):
    """One block of the plan (its ops wired as ``plan.Part`` says), layers named as the plan says."""

    def __init__(self, block: P.Part, names: Mapping[str, str]):
        super().__init__()
        self.part = block
        self._paths = self._register(block, names)

    def forward(self, x):
        return run_part(self.part, x, self._run_node)


class ResNet(_Runner):
    """A network compiled from a plan. ``forward(x)`` returns logits, the last feature map, or
    (with ``out_indices``) a list of stage outputs; ``forward(x, taps=True)`` returns a dict of
    every named intermediate instead (``plan.tap_names``, in order).
    """

    def __init__(self, plan: P.Plan):
        super().__init__()
        self.plan = plan
        names = plan.aliases.get(NAME, {})  # the plan's Paddle names for its modules, if any
        self._paths = self._register(plan.stem, names)
        # A stage's blocks sit in an nn.Sequential (paddle.vision's ``layer1``, PaddleClas'
        # ``db_conv_2``), which forward calls, so hooks on it fire and ``model.layer4(x)`` works
        self._stages = {}
        for stage in plan.stages:
            split = stage_container(stage, lambda name: names.get(name, name))
            for i, block in enumerate(stage.blocks):
                if split is not None and i == split[0]:
                    _attach(self, split[1], nn.Sequential())
                _attach(self, names.get(block.name, block.name), Block(block, names))
            if split is not None:
                self._stages[stage.name] = (stage.blocks[:split[0]], tuple(split[1].split(".")))
        for part in plan.flat_parts[1:]:  # neck, head
            self._paths.update(self._register(part, names))
        self._blocks = {block.name: tuple(names.get(block.name, block.name).split("."))
                        for stage in plan.stages for block in stage.blocks}

        self._has_head = plan.head is not None
        self._out_indices = plan.out_indices

    def _run_block(self, block: P.Part, x):
        return self._call(self._blocks[block.name], x)

    def _run_stage(self, stage: P.Stage, x):
        return run_stage_via_container(stage, x, self._stages.get(stage.name), self._run_block, self._call)

    def forward(self, x, taps: bool = False):
        collected = {} if taps else None
        out = run_plan(self.plan, x, self._run_node, taps=collected, run_block=self._run_block,
                       run_stage=self._run_stage)
        return collected if taps else out


# --------------------------------------------------------------------------- canonical <-> Paddle names

# The one table of differences between Paddle's state_dict and the canonical weights, used by the
# model (import/export) and the files (load_native/save_native) alike. Ordered; the first rule
# whose suffix matches applies; a name no rule matches is the same in both (so nothing is dropped
# silently: a name that is not canonical surfaces as "unexpected" in check_weights).
# Each rule: (Paddle suffix, canonical suffix, transpose a 2-D array).
_RULES: tuple[tuple[str, str, bool], ...] = (
    # BatchNorm running mean: Paddle calls it `_mean`.
    ("._mean", ".running_mean", False),
    # BatchNorm running variance: Paddle calls it `_variance` (biased when updated in train mode).
    ("._variance", ".running_var", False),
    # Linear weight: Paddle stores (in, out), canonical is (out, in). Conv weights are 4-D and BN
    # weights 1-D, so a 2-D `.weight` can only be a Linear's.
    (".weight", ".weight", True),
)
_PADDLE, _CANONICAL = 0, 1


def _rename(name: str, source: int) -> tuple[str, bool]:
    """``name`` translated from ``source`` (_PADDLE or _CANONICAL) to the other side, and whether
    a 2-D array under it is transposed."""
    for rule in _RULES:
        suffix = rule[source]
        if name.endswith(suffix):
            return name[: -len(suffix)] + rule[1 - source], rule[2]
    return name, False


def _translate(name: str, array: np.ndarray, source: int) -> tuple[str, np.ndarray]:
    new, transpose = _rename(name, source)
    if transpose and array.ndim == 2:
        array = np.ascontiguousarray(array.T)
    return new, array


# --------------------------------------------------------------------------- contract


_NUMPY_DTYPES = {paddle.float32: np.float32, paddle.float64: np.float64}


def is_model(model) -> bool:
    return isinstance(model, ResNet)


def plan_of(model: ResNet) -> P.Plan:
    return model.plan


def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> ResNet:
    """A ``paddle.nn.Layer`` for ``plan`` holding ``weights`` (complete canonical dict), in eval
    mode, with parameters of ``dtype`` ("float32" or "float64").

    Layers are created under ``paddle.LazyGuard`` (no Paddle initialisation, no allocation);
    assigning the weights allocates each parameter, so every state_dict entry must be covered.
    """
    native = plan.native_names(NAME)
    expected = {_rename(native.get(name, name), _CANONICAL)[0] for name in plan.params}
    missing = [name for name in plan.params if name not in weights]
    if missing:
        raise ValueError(f"paddle build: weights lack {len(missing)} tensor(s) of the plan: {missing[:10]}")
    if dtype not in DTYPES:
        raise ValueError(f"paddle backend: dtype {dtype!r} is not supported (Paddle has no CPU bfloat16 "
                         f"convolution); use one of {', '.join(DTYPES)}")
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)  # layers create their parameters in the default dtype
    try:
        with paddle.LazyGuard():
            model = ResNet(plan)
    finally:
        paddle.set_default_dtype(previous)
    uncovered = sorted(set(model.state_dict()) - expected)
    if uncovered:  # would stay uninitialised: a Paddle layer grew state the plan does not know
        raise RuntimeError(f"paddle build: state_dict entries without a canonical parameter: {uncovered[:10]}")
    import_weights(model, weights)
    model.eval()
    return model


def export_weights(model: ResNet) -> dict[str, np.ndarray]:
    """Canonical weights (copies, PyTorch layout) in the plan's order."""
    state = model.state_dict()
    native = model.plan.native_names(NAME)
    out = {}
    for name in model.plan.params:
        key = _rename(native.get(name, name), _CANONICAL)[0]
        out[name] = _translate(key, state[key].numpy(), _PADDLE)[1]  # .numpy() copies
    return out


def import_weights(model: ResNet, weights: Mapping[str, np.ndarray]) -> None:
    """Copy checked canonical ``weights`` (any subset of the plan's names) into ``model``.

    Every tensor is converted and shape-checked first and assigned only when all of them
    converted, so a failure leaves the model untouched.
    """
    params = model.plan.params
    native = model.plan.native_names(NAME)
    state = model.state_dict()
    staged = []
    for name, value in weights.items():
        if name not in params:
            raise ValueError(f"{name}: not a parameter of {model.plan.spec.name!r}")
        key, array = _translate(native.get(name, name), np.asarray(value), _CANONICAL)
        target = state[key]
        if tuple(array.shape) != tuple(target.shape):
            raise ValueError(f"{name}: expected Paddle shape {tuple(target.shape)}, found {array.shape}")
        staged.append((target, np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[target.dtype])))
    for target, array in staged:
        target.set_value(array)
    if isinstance(model, InferenceResNet):
        model.drop_engine()  # it holds the old weights


def _dtype_of(model: ResNet):
    for param in model.parameters():
        return param.dtype
    return paddle.float32


def forward(model: ResNet, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward without gradients; returns ``{tap name: NCHW array}`` (only the outputs
    without taps). The input is cast to the model's dtype; the model's train/eval mode is restored
    afterwards."""
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            out = model(paddle.to_tensor(x_nchw).astype(_dtype_of(model)), taps=taps)
    finally:
        if was_training:
            model.train()
    if taps:
        return {name: t.numpy() for name, t in out.items()}
    outputs = out if isinstance(out, list) else [out]
    return {name: t.numpy() for name, t in zip(model.plan.output_names(), outputs, strict=True)}


# --------------------------------------------------------------------------- native files (.pdparams)

SUFFIXES = (".pdparams",)

# Keys paddle.save adds beside the tensors; bookkeeping, not weights.
_NAME_TABLE = "StructuredToParameterName@@"  # structured name -> Paddle's internal parameter name
_BIG_PARAM_INFO = "UnpackBigParamInfor@@"  # protocol 2/3: how >1 GiB tensors were split into slices
# Paddle keeps bfloat16 in numpy as uint16 holding the bits: paddle.save writes a bfloat16 tensor
# as a uint16 array, and paddle.load / paddle.to_tensor turn a uint16 array back into bfloat16
# (paddle.to_tensor(np.uint16 array).dtype is paddle.bfloat16: Paddle has no uint16 tensors). So in
# a .pdparams file uint16 means bfloat16; here it is ml_dtypes.bfloat16 (the core's bfloat16), same bits.
_BFLOAT16_AS = np.uint16


def _dense_tensor_data(expression, namespace):
    """paddle.save pickles a bare DenseTensor as ``eval('data', {'data': array})``; give the array
    without evaluating anything."""
    if expression != "data" or not isinstance(namespace, dict) or not isinstance(namespace.get("data"), np.ndarray):
        raise pickle.UnpicklingError(f"unexpected eval({expression!r}, ...) in the pickle")
    return namespace["data"]


def _latin1_bytes(text, encoding="latin1"):
    """Pickle protocol 2 (old paddle.save / fluid.save_dygraph) writes bytes as
    ``_codecs.encode(text, 'latin1')``; only that encoding is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode(..., {encoding!r}) in the pickle")
    return text.encode("latin1")


# What a .pdparams pickle may reference: numpy arrays, dtypes and scalars, ordered dicts, tuples
# (paddle.save's `(name, array)` for tensors), protocol 2's bytes and the eval above. Anything
# else is refused, so loading a file never runs code from it (as torch.load(weights_only=True)).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): None,
    ("builtins", "tuple"): tuple,
    ("builtins", "eval"): _dense_tensor_data,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): None,
    ("numpy", "dtype"): None,
    ("numpy.core.multiarray", "_reconstruct"): None,
    ("numpy.core.multiarray", "scalar"): None,
    ("numpy._core.multiarray", "_reconstruct"): None,
    ("numpy._core.multiarray", "scalar"): None,
    ("numpy.core.numeric", "_frombuffer"): None,
    ("numpy._core.numeric", "_frombuffer"): None,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a tensor type)")
        replacement = _SAFE_GLOBALS[(module, name)]
        return replacement if replacement is not None else super().find_class(module, name)


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays from a ``paddle.save``d state_dict (``.pdparams``).

    Names and layouts are translated by the ``_RULES`` table (no plan needed): ``_mean`` ->
    ``running_mean``, ``_variance`` -> ``running_var``, 2-D ``*.weight`` (Linear, stored (in, out))
    transposed to (out, in). Other names are kept as they are. The pickle is read with an
    allow-list of numpy types, so a file never runs code. Dtypes are kept; Paddle's bfloat16
    (uint16 arrays, see ``_BFLOAT16_AS``) becomes ``ml_dtypes.bfloat16``, bit for bit.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable Paddle state_dict (corrupt, truncated, not a
            dict of arrays); the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Paddle checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # truncated/corrupt pickles raise many types (EOFError, KeyError, ...)
        raise ValueError(f"{path}: not a readable Paddle .pdparams file "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a Paddle state_dict (expected a dict of arrays, found {type(obj).__name__})")
    obj = dict(obj)
    obj.pop(_NAME_TABLE, None)
    slices = obj.pop(_BIG_PARAM_INFO, None)
    try:
        if slices:  # reassembled as paddle.load does
            for key, info in slices.items():
                obj[key] = np.concatenate([obj.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    except Exception as exc:
        raise ValueError(f"{path}: malformed {_BIG_PARAM_INFO} entry ({exc})") from None
    out, bad = {}, []
    for name, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # paddle.save of a nested dict pickles a tensor as (internal name, array)
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            bad.append(f"{name!r} ({type(value).__name__})")
            continue
        if value.dtype == _BFLOAT16_AS:  # Paddle's own numpy form of bfloat16 (see _BFLOAT16_AS)
            import ml_dtypes

            value = value.view(ml_dtypes.bfloat16)
        new, array = _translate(name, value, _PADDLE)
        if new in out:
            raise ValueError(f"{path}: {name!r} and another tensor both map to canonical name {new!r}")
        out[new] = array
    if bad:
        raise ValueError(f"{path}: not a Paddle state_dict: {len(bad)} entries are not named arrays: "
                         f"{', '.join(bad[:10])}")
    return out


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write canonical ``weights`` as a ``.pdparams`` file that ``paddle.load`` +
    ``set_state_dict`` accept: Paddle names (``_mean``, ``_variance``) and layout (Linear (in, out)).
    Dtypes are kept; bfloat16 is written as paddle.save writes it (uint16 bits), so paddle.load
    gives bfloat16 tensors. Written to a temporary file and renamed, so a failure never leaves a
    partial file."""
    state = {}
    for name, value in weights.items():
        if name.rsplit(".", 1)[-1] in FRAMEWORK_EXTRAS:
            continue  # PyTorch's BN step counter: Paddle has none
        new, array = _translate(name, np.asarray(value), _CANONICAL)
        array = np.ascontiguousarray(array)
        if array.dtype.name == "bfloat16":
            array = array.view(_BFLOAT16_AS)  # as paddle.save writes a bfloat16 tensor
        state[new] = array
    with atomic_path(path) as tmp:
        paddle.save(state, os.fspath(tmp), protocol=4)


# --------------------------------------------------------------------------- inference fast path and export
# Optional hooks of the backend contract, used by resnet_multi.inference / resnet_multi.export.
# BatchNorm folding is done by the core; these only add what is Paddle's own.


class _BiasConv2D(nn.Conv2D):
    """``nn.Conv2D`` whose bias is added as a (C, 1, 1) tensor. Paddle's own adds it reshaped to
    (1, C, 1, 1), and that broadcast is about twice as slow on CPU (Paddle 3.3): with every
    BatchNorm folded into a conv bias, resnet50 ran 1.26x slower than paddle.vision's model, and
    1.03x with this. Same parameters and names, same result."""

    def forward(self, x):
        out = F.conv2d(x, self.weight, None, self._stride, self._padding, self._dilation, self._groups,
                       self._data_format)
        return out + self.bias.reshape([-1, 1, 1])


class InferenceResNet(ResNet):
    """The Paddle fast path (``rm.build(spec, "paddle", inference=True)``): a BatchNorm-folded
    ``ResNet`` whose eval-mode calls run as one static program under Paddle Inference with oneDNN,
    Paddle's own deployment engine.

    Why: Paddle's dynamic-graph CPU convolutions do not use oneDNN, so folding BatchNorm alone
    leaves the dygraph model as slow as paddle.vision's (benchmarks/RESULTS.md); the same
    program under Paddle Inference is 3-5x faster, within the parity bound of the dygraph model.

    The engine is made on the first call that can use it, from the weights the model holds then
    (``paddle.jit.save`` of this layer to a temporary directory, then a predictor with dynamic
    batch and image size; a few seconds for resnet50). It holds its own copy of the weights and
    runs on every core this process may use (``os.sched_getaffinity``, not ``OMP_NUM_THREADS``).
    Calls that need the layers themselves run the ordinary dygraph forward: ``taps=True``, train
    mode, an input that wants gradients or is not float32 on the CPU, a parameter that wants
    gradients, a forward hook on any sublayer, a static-graph program being built (AST
    ``to_static``), or after ``paddle.jit.to_static(model)``. (Under the default SOT
    ``to_static`` of a model that contains this one, the engine runs through a graph break, with
    the same outputs.) ``set_state_dict``, ``rm.import_weights`` and ``train()`` drop the engine,
    so the next eval call makes a new one; after assigning a parameter directly, call
    ``model.drop_engine()``. If the engine cannot be made, the model warns and stays on the
    dygraph forward until ``drop_engine()``. Copies and pickles leave the engine out.
    """

    _engine = None  # the paddle.inference predictor, made on first use
    _engine_failed = False

    def _needs_layers(self, x, taps: bool) -> bool:
        if (taps or self.training or self._engine_failed or isinstance(self.forward, StaticFunction)
                or not paddle.in_dynamic_mode() or not isinstance(x, paddle.Tensor)
                or not x.place.is_cpu_place() or x.dtype != paddle.float32
                or (paddle.is_grad_enabled() and not x.stop_gradient)):
            return True
        return any(layer._forward_pre_hooks or layer._forward_post_hooks
                   for layer in self.sublayers(include_self=True)) or \
            any(not param.stop_gradient for param in self.parameters())

    def __call__(self, x, taps: bool = False):
        if self._needs_layers(x, taps):
            return super().__call__(x, taps=taps)
        engine = self._engine if self._engine is not None else self._make_engine()
        if engine is None:
            return super().__call__(x, taps=taps)
        # the predictor reuses its output buffers on the next run: hand out copies
        outputs = [out.clone() for out in engine.run([x])]
        return outputs if (not self._has_head and self._out_indices is not None) else outputs[0]

    def drop_engine(self) -> None:
        """Forget the engine (after changing weights in place); the next eval call makes a new one."""
        self._engine = None
        self._engine_failed = False

    def set_state_dict(self, *args, **kwargs):
        self.drop_engine()
        return super().set_state_dict(*args, **kwargs)

    set_dict = load_dict = set_state_dict

    def train(self, *args, **kwargs):
        self.drop_engine()  # training changes the weights the engine copied
        return super().train(*args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__())  # Layer returns its own __dict__: copy before editing
        state.pop("_engine", None)  # a predictor cannot be copied or pickled; remade on demand
        return state

    def _make_engine(self):
        from paddle import inference

        try:
            with tempfile.TemporaryDirectory() as tmp:
                prefix = os.path.join(tmp, "model")
                channels = self.plan.spec.in_channels
                _save_static(self, prefix, paddle.static.InputSpec([None, channels, None, None], "float32", "x"))
                config = inference.Config(prefix + EXPORT_SUFFIX, prefix + ".pdiparams")
                config.disable_gpu()
                config.enable_mkldnn()
                config.disable_glog_info()
                # Paddle Inference defaults to one thread; use the cores this process may run on
                config.set_cpu_math_library_num_threads(_usable_cores())
                engine = inference.create_predictor(config)  # reads the files: the directory can go
        except Exception as error:  # noqa: BLE001 - any failure: say why, keep the dygraph forward
            self._engine_failed = True
            warnings.warn(f"paddle inference model: Paddle Inference engine unavailable ({type(error).__name__}: "
                          f"{error}); running the dygraph forward instead", RuntimeWarning, stacklevel=3)
            return None
        self._engine = engine
        return engine


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def optimize(model: ResNet) -> InferenceResNet:
    """Eval-only extras for a (BatchNorm-folded) model: it becomes an ``InferenceResNet`` (same
    layers and state; eval calls run under Paddle Inference), convs with bias use
    ``_BiasConv2D``'s faster bias add for the dygraph forward, parameters need no gradient. The
    model stays an ``nn.Layer``, so ``paddle.jit.to_static`` and ``paddle.jit.save`` take it as it is."""
    for layer in model.sublayers():
        if type(layer) is nn.Conv2D and layer.bias is not None:
            layer.__class__ = _BiasConv2D  # same state; only forward differs
    for param in model.parameters():
        param.stop_gradient = True
    model.__class__ = InferenceResNet  # same state; only calls differ
    model.eval()
    return model


EXPORT_SUFFIX = ".json"


def _save_static(model: ResNet, prefix: str, input_spec) -> list[str]:
    """``paddle.jit.save`` with one input; returns the paths written, or says what Paddle wrote instead."""
    paddle.jit.save(model, prefix, input_spec=[input_spec])
    written = [prefix + suffix for suffix in (EXPORT_SUFFIX, ".pdiparams")]
    missing = [path for path in written if not os.path.exists(path)]
    if missing:  # another Paddle version writing another layout (e.g. .pdmodel): say so
        raise RuntimeError(f"paddle.jit.save did not write {', '.join(missing)}; found "
                           f"{', '.join(sorted(os.listdir(os.path.dirname(prefix) or '.')))}")
    return written


def export_model(model: ResNet, prefix: str, input_shape: tuple[int, ...]) -> list[str]:
    """Save ``model`` as a static inference model with ``paddle.jit.save``: ``<prefix>.json`` (the
    PIR program) and ``<prefix>.pdiparams``, loadable with ``paddle.jit.load(prefix)`` or Paddle
    Inference (``paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")``). One input
    ``x``, NCHW float32 of ``input_shape`` with a dynamic batch size. ``model`` is not changed.
    Returns the paths written."""
    return _save_static(model, prefix, paddle.static.InputSpec([None, *input_shape[1:]], "float32", "x"))


# --------------------------------------------------------------------------- training
# Hooks of resnet_multi.training: the neutral optimizer description (training.SGD / AdamW) as
# paddle.optimizer's own optimizer, and one ordinary train step for check_training.


def _trainable(model: ResNet) -> list:
    """The parameters an optimizer may touch. BatchNorm's ``_mean``/``_variance`` are parameters
    in Paddle, with ``stop_gradient=True``: left out (they are running statistics, updated by the
    forward pass), and so is any parameter a user froze the same way."""
    return [p for p in model.parameters() if not p.stop_gradient]


def _exact_in_float32(model: ResNet, params: list, settings: dict[str, float]) -> None:
    """Paddle passes Momentum's ``momentum`` and the ``L2Decay``/AdamW decay coefficient to its
    kernels as float32 attributes, even for float64 parameters (measured: momentum 0.9 acts as
    0.89999997615814, trajectories 2e-8 apart from torch's). A float64 model asks for exact
    arithmetic, so such a value must be exact in float32; a float32 model rounds it like every
    framework does."""
    if not any(p.dtype == paddle.float64 for p in params):
        return
    for name, value in settings.items():
        rounded = float(np.float32(value))
        if rounded != value:
            raise OptimizerError(
                f"optimizer: {name}={value!r} is not exact in float32, and Paddle holds {name} as float32 even "
                f"for the float64 model {model.plan.spec.name!r} (it would act as {rounded!r}, silently). "
                f"Pass {name}={rounded!r}, the value Paddle computes with, so that every framework uses it "
                f"(or another value exact in float32, e.g. 0.875 or 2**-10)")


def make_optimizer(model: ResNet, spec):
    """``paddle.optimizer.Momentum`` (decay as ``L2Decay``, added to the gradient before momentum;
    momentum 0 is plain SGD: ``v = g``) or ``paddle.optimizer.AdamW`` (decoupled decay scaled by
    the learning rate, eps added to the bias-corrected ``sqrt(v)``: Paddle computes
    ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps * sqrt(1 - b2^t))``, the same
    number), over the trainable parameters. Nesterov: Paddle's ``p -= lr * (g + mu * v)`` is
    PyTorch's form."""
    params = _trainable(model)
    if spec.name == "sgd":
        _exact_in_float32(model, params, {"momentum": spec.momentum, "weight_decay": spec.weight_decay})
        decay = paddle.regularizer.L2Decay(spec.weight_decay) if spec.weight_decay > 0 else None
        return paddle.optimizer.Momentum(learning_rate=spec.lr, momentum=spec.momentum, parameters=params,
                                         use_nesterov=spec.nesterov, weight_decay=decay)
    if spec.name == "adamw":
        _exact_in_float32(model, params, {"weight_decay": spec.weight_decay})
        return paddle.optimizer.AdamW(learning_rate=spec.lr, beta1=spec.betas[0], beta2=spec.betas[1],
                                      epsilon=spec.eps, parameters=params, weight_decay=spec.weight_decay)
    raise ValueError(f"paddle backend: no optimizer for {spec!r}")


def _training_logits(out):
    """Logits for the training loss: the head's, or the output feature map(s) averaged over H, W
    (and concatenated along channels), as resnet_multi.training.check_training defines it."""
    if isinstance(out, (list, tuple)):
        return paddle.concat([o.mean(axis=[2, 3]) for o in out], axis=1)
    return out.mean(axis=[2, 3]) if out.ndim == 4 else out


def train_step(model: ResNet, optimizer, x_nchw: np.ndarray, labels: np.ndarray):
    """One train-mode step: forward, mean cross-entropy, backward, ``optimizer.step()``.

    Returns:
        (loss as a float, {canonical name: gradient array in canonical layout}) for every
        trainable parameter that got one.
    """
    model.train()
    dtype = _trainable(model)[0].dtype if _trainable(model) else paddle.float32
    x = paddle.to_tensor(np.ascontiguousarray(x_nchw), dtype=dtype)
    y = paddle.to_tensor(np.asarray(labels, dtype=np.int64))
    loss = F.cross_entropy(_training_logits(model(x)), y)
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if not p.stop_gradient and p.grad is not None:
            canonical, array = _translate(name, p.grad.numpy(), _PADDLE)
            grads[model.plan.canonical_name(canonical)] = array  # a plan's Paddle aliases (PaddleClas names)
    optimizer.step()
    optimizer.clear_grad()
    return float(loss), grads
