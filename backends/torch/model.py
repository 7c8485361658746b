"""The torch module tree of a plan, and the contract's model functions (build, forward, weights)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from resnet_multi import layout as L
from resnet_multi import plan as P
from resnet_multi.backends import _module_tree as tree
from resnet_multi.walk import run_part, run_plan, run_stage_via_container
from resnet_multi.weights import WeightsError

from .io import numpy_to_tensor, tensor_to_numpy
from .layout import LAYOUT
from .ops import OPS

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
"""The dtype names ``build`` accepts -> torch's dtypes."""

ADAPTER = tree.Adapter(children=lambda module: module._modules, add_child=nn.Module.add_module,
                       sequential=nn.Sequential, container=nn.Module,
                       add_parameter=lambda module, name, shape: module.register_parameter(
                           name, nn.Parameter(torch.empty(shape))),
                       parameter=getattr)


class _Runner(nn.Module):
    """A module that runs one plan part over its registered submodules. ``forward`` looks every
    module up by its canonical name at call time (never through references kept at build time),
    so replacing one (``model.layer1[0].bn1 = nn.Identity()``, SyncBatchNorm conversion) takes
    effect, and torch.fx sees ordinary submodule calls."""

    def _call(self, path: tuple, x):
        """Call the module at ``path`` below this one, looked up now (so surgery takes effect)."""
        return tree.call(ADAPTER, self, path, x)

    def _run_node(self, node, *inputs):
        return tree.run_node(ADAPTER, self, self._paths, OPS, node, *inputs)


class Block(_Runner):
    """One block of the plan (its ops wired as ``plan.Part`` says), modules named as the plan says."""

    def __init__(self, block: P.Part):
        super().__init__()
        self.part = block
        self._paths = tree.register_part(ADAPTER, self, block, OPS, {})

    def forward(self, x):
        return run_part(self.part, x, self._run_node)


def _canonical_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: rename keys that are aliases of the plan (``Plan.aliases``,
    ``Plan.param_aliases``) to their canonical names, as torchvision's DenseNet loader does for its
    legacy keys, reshaping the tensors a scheme stores in another shape (timm's ConvNeXt gamma).
    A tensor of the wrong shape under such a name is refused before anything is loaded. torch
    hands hooks its own copy of the dict, so the caller's is never changed."""
    plan = module.plan
    renamed, bad = {}, []
    for key in [k for k in state_dict if k.startswith(prefix)]:
        alias = plan.alias_of(key[len(prefix):])
        if alias is None:
            continue
        value, shape = state_dict[key], tuple(plan.params[alias.canonical].shape)
        if alias.shape != shape:
            if tuple(value.shape) != alias.shape:
                bad.append(f"{key} (expected {alias.shape}, found {tuple(value.shape)}: {alias.scheme}'s name for "
                           f"{alias.canonical}, which is {shape})")
                continue
            value = value.reshape(shape)
        renamed[key] = (prefix + alias.canonical, value)
    if bad:
        raise WeightsError(f"state_dict does not fit {plan.spec.name!r}: {len(bad)} mis-shaped: {', '.join(bad)}",
                           (), (), bad)
    for key, (name, value) in renamed.items():
        del state_dict[key]
        state_dict[name] = value


class Network(_Runner):
    """A network compiled from a plan (any family: ResNet, DenseNet, GhostNet, ...).
    ``forward(x)`` returns logits, the last feature map, or (with ``out_indices``) a list of stage
    outputs; ``forward_taps(x)`` returns every named intermediate (``plan.tap_names``) as a dict.
    ``forward`` takes only ``x``, as torchvision's, so ``torch.fx.symbolic_trace(model)`` traces it
    with no ``concrete_args``.

    Stem and head modules sit on the model itself (``model.conv1``, ``model.fc``), blocks at
    their canonical paths (``model.layer3[4]``); ``forward`` reaches all of them through the
    registered modules, so module surgery works as on torchvision's models."""

    def __init__(self, plan: P.Plan):
        super().__init__()
        self.plan = plan
        self._paths, self._stages, self._blocks = tree.build_tree(ADAPTER, self, plan, OPS, {}, Block)
        if plan.schemes:  # other names of the same tensors load too (torchvision's legacy DenseNet keys, timm's)
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


ResNet = Network
"""The model class's first name, kept so existing ``isinstance`` checks work."""


def is_model(model) -> bool:
    return isinstance(model, Network)


def plan_of(model: Network) -> P.Plan:
    return model.plan


def build(plan: P.Plan, weights: Mapping[str, np.ndarray], dtype: str = "float32") -> Network:
    """A ``torch.nn.Module`` for ``plan`` holding ``weights`` (complete canonical dict), in eval
    mode, with parameters and buffers of ``dtype`` (one of the package's ``DTYPES``).

    Modules are created on the meta device, so no time is spent on an init that the
    weights overwrite.
    """
    with torch.device("meta"):
        model = Network(plan)
    model = model.to_empty(device="cpu").to(TORCH_DTYPES[dtype])
    model.built_dtype = dtype
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()
    import_weights(model, weights)
    return model.eval()


def export_weights(model: Network) -> dict[str, np.ndarray]:
    """Canonical weights (copies), without ``num_batches_tracked``."""
    state = model.state_dict()
    return L.export(LAYOUT, model.plan, lambda native: tensor_to_numpy(state[native]))


def import_weights(model: Network, weights: Mapping[str, np.ndarray]) -> None:
    """Copy checked canonical ``weights`` (any subset of the plan's names) into ``model``.

    All tensors are converted first (``resnet_multi.layout.stage``: every bad name in one
    WeightsError) and copied only when every one converted, so a failure leaves the model untouched.
    """
    state = model.state_dict()
    staged = L.stage(LAYOUT, model.plan, weights, {name: tuple(t.shape) for name, t in state.items()},
                     lambda native, array: numpy_to_tensor(array).to(state[native].dtype))
    with torch.no_grad():
        for name, tensor in staged.items():
            state[name].copy_(tensor)


def _dtype_of(model: Network) -> torch.dtype:
    """The parameters' dtype; for a model without parameters (a plan of parameterless ops), the
    dtype it was built in."""
    for tensor in model.parameters():
        return tensor.dtype
    return TORCH_DTYPES[getattr(model, "built_dtype", "float32")]


def forward(model: Network, x_nchw: np.ndarray, *, taps: bool = False) -> dict[str, np.ndarray]:
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
