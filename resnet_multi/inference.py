"""The inference fast path, framework-free: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, ``y = (x - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. When ``x`` is a convolution's output ``w * input + b``, the
two collapse into one convolution with

    w' = w * s           (per output channel)
    b' = (b - mean) * s + beta      (b = 0 for a conv without bias)

This module rewrites a Plan and its canonical weights that way, ONCE, in numpy (float64, then
float32), so every backend gets the fast path by compiling the folded plan with its ordinary
``build()``: backends hold no folding code. A backend may add its own speed-ups (torch:
memory format; paddle: a Paddle Inference engine; flax: 1x1 convs as products) through an
optional ``optimize(model) -> model`` function, declared by the feature "optimize" in its ``FEATURES``;
``build_inference`` calls it then.

What cannot be folded is kept as it is and said: ``kept_norms(plan)`` names every normalization
the fast path keeps (BatchNorms that do not follow a conv, as DenseNet's pre-activation ones, and
every LayerNorm: ConvNeXt's and HorNet's normalize over a value's own statistics, which no weight
can absorb), and the inference model carries the same names as ``model.kept_norms``.

The folded plan has the same ``spec``, the same taps (``plan.tap_names``) and the same output
names as the original. Its parameter table differs: no BatchNorm entries, and every conv that
absorbed a BatchNorm keeps its canonical name and gains ``<conv>.bias`` (role ``conv_bias``).
So ``export_weights`` of an inference model returns the folded weights of the folded plan;
they load into another inference model of the same spec (in any backend), but not into the
ordinary (unfolded) model, and the fold cannot be undone.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Mapping

from ._lazy import np
from . import plan as P
from .registry import has_feature
from .weights import check_weights


def _foldable(part: P.Part) -> dict[int, int]:
    """``{conv node index: BN node index}`` for every BatchNorm whose input is a conv's output
    that nothing else reads (not another node, not a tap): eval-mode BN is then an affine map of
    that conv alone. A BatchNorm before its conv (pre-activation, as DenseNet's BN-ReLU-Conv)
    cannot be folded this way and is kept."""
    index = {node.output: i for i, node in enumerate(part.nodes)}
    tapped = {value for value, _ in part.taps} | {part.output}
    pairs = {}
    for j, node in enumerate(part.nodes):
        if not isinstance(node.op, P.BatchNorm):
            continue
        i = index.get(node.inputs[0])
        if i is None or not isinstance(part.nodes[i].op, P.Conv):
            continue
        conv_out = part.nodes[i].output
        readers = [n for n in part.nodes if conv_out in n.inputs]
        if len(readers) == 1 and conv_out not in tapped:
            pairs[i] = j
    return pairs


def kept_batchnorms(plan: P.Plan) -> tuple[str, ...]:
    """The BatchNorms that folding keeps: those whose input is not a conv's output read by nothing
    else. DenseNet's pre-activation BNs are such (norm1 of every dense layer, the transitions'
    norm and norm5: each follows a concatenation, a pool or a block's input); its norm0 and norm2
    follow a conv and fold. Every BN of the ResNet and GhostNet presets folds.

    Example:
        >>> len(kept_batchnorms(make_plan(get_spec("densenet121"))))  # 58 norm1 + 3 + norm5
        62
    """
    folded = {part.nodes[j].op.name for part in plan.parts for j in _foldable(part).values()}
    return tuple(op.name for part in plan.parts for op in part.ops
                 if isinstance(op, P.BatchNorm) and op.name not in folded)


NORM_OPS = (P.BatchNorm, P.LayerNorm)
"""The plan's normalization ops: what ``kept_norms`` looks for."""


def kept_norms(plan: P.Plan) -> tuple[str, ...]:
    """The module names of every normalization the fast path keeps unfolded, in execution order:
    the BatchNorms ``kept_batchnorms`` names and every LayerNorm (the same for a folded plan).

    Example:
        >>> len(kept_norms(make_plan(get_spec("convnext_tiny"))))  # stem, 3 downsamples, 18 blocks, head
        23
    """
    kept_bns = set(kept_batchnorms(plan))
    names = (op.name for part in plan.parts for op in part.ops
             if isinstance(op, P.LayerNorm) or (isinstance(op, P.BatchNorm) and op.name in kept_bns))
    return tuple(dict.fromkeys(names))


def is_folded(plan: P.Plan) -> bool:
    """True when no BatchNorm of ``plan`` directly follows a conv (``fold_batchnorm`` has nothing to do)."""
    return not any(_foldable(part) for part in plan.parts)


class _Folder:
    """Folds the Conv + BatchNorm pairs of parts, collecting the new conv weights."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self.convs: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # conv name -> folded (weight, bias)
        self.bns: set[str] = set()                                   # names of the folded BatchNorms

    def part(self, part: P.Part) -> P.Part:
        pairs = _foldable(part)
        if not pairs:
            return part
        renamed: dict[str, str] = {}  # a folded BN's output -> the conv's output now standing for it
        nodes = []
        for i, node in enumerate(part.nodes):
            if i in pairs.values():
                continue
            node = dataclasses.replace(node, inputs=tuple(renamed.get(v, v) for v in node.inputs))
            if i in pairs:
                bn_node = part.nodes[pairs[i]]
                node = dataclasses.replace(node, op=self._pair(node.op, bn_node.op), output=bn_node.output)
            nodes.append(node)
        return dataclasses.replace(part, nodes=tuple(nodes))

    def _pair(self, conv: P.Conv, bn: P.BatchNorm) -> P.Conv:
        if bn.channels != conv.out_channels:  # a plan error, never a user error
            raise ValueError(f"fold_batchnorm: {bn.name} has {bn.channels} channels, "
                             f"the conv {conv.name} before it {conv.out_channels}")

        def f64(name):  # float64 throughout: the folded values are rounded once, at the end
            return np.asarray(self.weights[name], dtype=np.float64)

        w = f64(f"{conv.name}.weight")
        b = f64(f"{conv.name}.bias") if conv.bias else np.zeros(conv.out_channels)
        scale = f64(f"{bn.name}.weight") / np.sqrt(f64(f"{bn.name}.running_var") + bn.eps)
        bias = (b - f64(f"{bn.name}.running_mean")) * scale + f64(f"{bn.name}.bias")
        self.convs[conv.name] = (w * scale[:, None, None, None], bias)
        self.bns.add(bn.name)
        return dataclasses.replace(conv, bias=True)


def fold_batchnorm(plan: P.Plan, weights: Mapping[str, np.ndarray], *,
                   dtype: str = "float32") -> tuple[P.Plan, dict[str, np.ndarray]]:
    """Fold every BatchNorm that directly follows a conv into that conv (eval-mode semantics).

    Covers every part of the plan: the stem (also timm's deep stem), every block's main path and
    every shortcut (``conv_bn`` and ResNet-D's pool + conv + BN). A BatchNorm whose input is not
    a conv's output read by nothing else (a pre-activation BN-ReLU-Conv, as DenseNet's) is kept
    as it is. The arithmetic is done in float64 and the results are rounded to ``dtype`` once.

    Args:
        plan: the plan the weights belong to (folding an already folded plan changes nothing).
        weights: its complete canonical weights (checked against ``plan``; a WeightsError lists
            every problem).
        dtype: "float64" keeps the folded weights in float64 (a float64 model); anything else
            rounds them to float32 (bfloat16 and float32 models; the backend casts).
    Returns:
        ``(folded_plan, folded_weights)``: a Plan with the same spec, taps and outputs, whose
        folded convs have ``bias=True`` and whose parameter table has no entries for the folded
        BatchNorms (order otherwise kept, each new ``<conv>.bias`` right after its
        ``<conv>.weight``); and complete canonical weights for it in that dtype, in that order.
    Example:
        >>> folded_plan, folded = fold_batchnorm(plan, rm.export_weights(model))
    """
    checked = check_weights(plan, weights, strict=True, source="weights to fold")
    dtype = np.float64 if dtype == "float64" else np.float32
    folder = _Folder(checked)
    stem = folder.part(plan.stem)
    stages = tuple(dataclasses.replace(stage, blocks=tuple(folder.part(block) for block in stage.blocks))
                   for stage in plan.stages)
    head = folder.part(plan.head) if plan.head is not None else None
    neck = folder.part(plan.neck) if plan.neck is not None else None

    params: dict[str, P.ParamInfo] = {}
    out: dict[str, np.ndarray] = {}
    for name, info in plan.params.items():
        owner = name.rsplit(".", 1)[0]
        if owner in folder.bns or name in params:  # a folded BN's entry; a conv bias already placed
            continue
        if owner in folder.convs and info.role == "conv_weight":
            bias = f"{owner}.bias"
            out[name], out[bias] = (array.astype(dtype) for array in folder.convs[owner])
            params[name] = info
            params[bias] = P.ParamInfo(bias, (info.shape[0],), "conv_bias", ("zeros", 0.0))
        else:
            params[name] = info
            out[name] = np.asarray(checked[name], dtype=dtype)
    return dataclasses.replace(plan, stem=stem, stages=stages, neck=neck, head=head, params=params), out



def build_inference(backend: ModuleType, plan: P.Plan, weights: Mapping[str, np.ndarray], *,
                    dtype: str = "float32"):
    """The inference model of ``backend``: ``backend.build`` of the folded plan, then the
    backend's ``optimize(model) -> model`` hook (its own eval-only speed-ups) if its ``FEATURES``
    declare "optimize". The model's ``kept_norms`` attribute names the normalizations left
    unfolded (``kept_norms``; an empty tuple when every one was folded).

    Args:
        backend: a backend module (see ``registry.get_backend``).
        plan, weights: the (unfolded or folded) plan and its complete canonical weights.
        dtype: the model's dtype (as ``rm.build``'s).
    """
    folded_plan, folded = fold_batchnorm(plan, weights, dtype=dtype)
    model = backend.build(folded_plan, folded, dtype=dtype)
    model = backend.optimize(model) if has_feature(backend, "optimize") else model
    model.kept_norms = kept_norms(folded_plan)  # a plain attribute, in every framework
    return model
