"""The inference fast path: BatchNorm folded into the convs (core, numpy), compiled by every backend.

Bound: the parity bound of docs/NUMERICS.md, max|a - b| <= 1e-6 + 1e-5 * max|ref| per tap, between
the folded model and the ordinary one built from the same weights. Folding is done in float64
and rounded once; measured worst relative differences are about 3e-6 (resnet152), the same
float32 summation-order noise as between two frameworks.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BACKENDS, BUILT_PRESETS, assert_close, odd_input
from resnet_multi import plan as P
from resnet_multi.inference import fold_batchnorm, is_folded, kept_batchnorms, kept_norms
from resnet_multi.weights import WeightsError, random_weights


def _all_ops(plan: P.Plan):
    for part in plan.parts:
        yield from part.ops


def _tiny_spec() -> rm.ResNetSpec:
    """Every foldable place (deep stem, main path, avg-pool shortcut), small enough to compile fast."""
    return rm.get_spec("resnet50d").replace(
        name="tiny_d", stages=(rm.StageSpec(1, 8), rm.StageSpec(1, 16, stride=2)),
        stem=rm.StemSpec(widths=(8, 8, 16), kernel_size=3, stride=2), head=rm.HeadSpec(num_classes=7))


# --------------------------------------------------------------------------- the fold itself (no framework)


@pytest.mark.parametrize("name", BUILT_PRESETS)
def test_fold_removes_every_batchnorm_and_keeps_the_function(name):
    """Every BN that follows a conv is folded; the others (DenseNet's pre-activation BNs, none
    in the ResNets and GhostNets) stay, exactly those ``kept_batchnorms`` names."""
    plan = rm.make_plan(rm.get_spec(name))
    weights = random_weights(plan, seed=0)
    folded_plan, folded = fold_batchnorm(plan, weights)
    kept = set(kept_batchnorms(plan))

    has_bn = any(isinstance(op, P.BatchNorm) for op in _all_ops(plan))  # ConvNeXt and HorNet have none
    assert is_folded(folded_plan) and is_folded(plan) != has_bn
    assert {op.name for op in _all_ops(folded_plan) if isinstance(op, P.BatchNorm)} == kept
    assert not any(info.role.startswith("bn_") and info.name.rsplit(".", 1)[0] not in kept
                   for info in folded_plan.params.values())
    assert list(folded) == list(folded_plan.params)  # complete, in the table's order
    for name_, info in folded_plan.params.items():
        assert folded[name_].shape == info.shape and folded[name_].dtype == np.float32, name_
    # every conv that had a BN behind it now has a bias, named after the conv
    convs = {op.name: op for op in _all_ops(folded_plan) if isinstance(op, P.Conv)}
    for op in _all_ops(plan):
        if isinstance(op, P.BatchNorm) and op.name not in kept:
            assert not any(n.startswith(op.name + ".") for n in folded_plan.params), op.name
    for conv in convs.values():
        if conv.bias:
            assert folded_plan.params[f"{conv.name}.bias"].role == "conv_bias"
    assert folded_plan.tap_names == plan.tap_names
    assert folded_plan.output_names() == plan.output_names()
    assert folded_plan.spec == plan.spec

    # the numpy oracle (float64) computes the same function from both
    x = odd_input(plan.spec)
    expected = rm.reference_forward(plan, weights, x, taps=True)
    actual = rm.reference_forward(folded_plan, folded, x, taps=True)
    for tap in plan.tap_names:
        assert_close(actual[tap], expected[tap], f"{name} {tap}")

    # folding again changes nothing
    again_plan, again = fold_batchnorm(folded_plan, folded)
    assert again_plan == folded_plan
    assert all(np.array_equal(again[k], folded[k]) for k in folded)


def test_fold_arithmetic_on_one_channel():
    """w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta, with a conv bias (d2l)."""
    spec = rm.get_spec("d2l_resnet18")
    plan = rm.make_plan(spec)
    weights = random_weights(plan, seed=3)
    _, folded = fold_batchnorm(plan, weights)
    g, beta = weights["bn1.weight"][0], weights["bn1.bias"][0]
    m, v = weights["bn1.running_mean"][0], weights["bn1.running_var"][0]
    scale = np.float64(g) / np.sqrt(np.float64(v) + spec.norm.eps)
    # tighter than the parity bound: the fold is computed in float64 and rounded once to float32
    np.testing.assert_allclose(folded["conv1.weight"][0], weights["conv1.weight"][0] * scale, rtol=1e-6)
    np.testing.assert_allclose(folded["conv1.bias"][0], (weights["conv1.bias"][0] - m) * scale + beta, rtol=1e-6)


def test_fold_checks_the_weights():
    plan = rm.make_plan(rm.get_spec("resnet18"))
    weights = random_weights(plan)
    del weights["bn1.running_var"]
    with pytest.raises(WeightsError, match="bn1.running_var"):
        fold_batchnorm(plan, weights)


@pytest.mark.parametrize("name, count, kind", [
    ("convnext_tiny", 23, P.LayerNorm),   # stem, 3 downsamples, 18 blocks, head
    ("hornet_tiny_gf", 95, P.LayerNorm),  # stem, 3 downsamples, norm1 and norm2 of 25 blocks, 2 per filter (20), head
    ("densenet121", 62, P.BatchNorm),     # the pre-activation BNs: 58 norm1, 3 transitions, norm5
    ("vgg16_bn", 0, None),                # every BN follows its conv
])
def test_fast_path_lists_the_norms_it_cannot_fold(name, count, kind):
    """kept_norms names every normalization folding leaves, in execution order: exactly the norms of
    the folded plan."""
    spec = rm.get_spec(name)
    if spec.block.kind == "vgg":  # its classifier (120M parameters, no norm) left out: the fold stays quick
        spec = spec.replace(head=None)
    plan = rm.make_plan(spec)
    kept = kept_norms(plan)
    norms = {op.name: op for op in _all_ops(plan) if isinstance(op, (P.BatchNorm, P.LayerNorm))}
    assert len(kept) == count and all(isinstance(norms[n], kind) for n in kept)
    folded_plan, _ = fold_batchnorm(plan, random_weights(plan, seed=1))
    assert [op.name for op in _all_ops(folded_plan) if isinstance(op, (P.BatchNorm, P.LayerNorm))] == list(kept)
    assert kept_norms(folded_plan) == kept


def _small_convnext() -> rm.ResNetSpec:
    data = rm.get_spec("convnext_tiny").to_dict()
    data["stem"]["widths"], data["head"]["num_classes"] = [8], 5
    for stage, width in zip(data["stages"], (8, 16, 16, 16), strict=True):
        stage["channels"], stage["depth"] = width, 1
    return rm.ResNetSpec.from_dict(data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_models_carry_the_norms_they_keep(backend):
    """model.kept_norms on every backend's fast path: a ConvNeXt keeps its 9 LayerNorms, a ResNet-D
    whose every BatchNorm folds keeps nothing."""
    spec = _small_convnext()
    fast = rm.build(spec, backend, inference=True)
    assert fast.kept_norms == kept_norms(rm.make_plan(spec)) and len(fast.kept_norms) == 1 + 3 + 4 + 1
    assert rm.optimize_for_inference(rm.build(_tiny_spec(), backend)).kept_norms == ()


# --------------------------------------------------------------------------- every preset x every backend
# The full-size fast path of every built preset in every backend (its taps and outputs against the
# ordinary model's, its folded plan and weights) is checked in tests/test_parity_matrix.py, on the
# matrix's own build of the ordinary model: a second full-size build here would double the cost.


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimize_for_inference_is_build_inference(backend):
    """optimize_for_inference(model) makes the model build(..., inference=True) makes, and leaves
    its input as it was; applied twice, it changes nothing more."""
    spec = _tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=4)
    ordinary = rm.build(spec, backend, weights=weights)
    optimized = rm.optimize_for_inference(ordinary)
    _, folded = fold_batchnorm(rm.make_plan(spec), weights)
    for model in (optimized, rm.optimize_for_inference(optimized)):
        exported = rm.export_weights(model)
        assert list(exported) == list(folded) and all(np.array_equal(exported[k], folded[k]) for k in folded)
    assert rm.plan_of(ordinary) == rm.make_plan(spec)
    assert all(np.array_equal(v, weights[k]) for k, v in rm.export_weights(ordinary).items())
    x = odd_input(spec)
    assert_close(rm.forward(optimized, x), rm.forward(ordinary, x), f"{backend} optimized")


def test_folded_weights_move_between_inference_models_only():
    """export_weights of an inference model gives the folded weights of the folded plan: they load
    into an inference model of another backend, and an ordinary model rejects them, naming why."""
    spec = _tiny_spec()
    plan = rm.make_plan(spec)
    weights = random_weights(plan, seed=1)
    x = odd_input(spec)
    source = rm.build(spec, BACKENDS[0], weights=weights, inference=True)
    folded = rm.export_weights(source)
    for backend in BACKENDS:
        target = rm.build(spec, backend, inference=True)  # seed-initialised, then overwritten
        rm.import_weights(target, folded)
        assert_close(rm.forward(target, x), rm.forward(source, x), f"folded weights in {backend}")
    with pytest.raises(WeightsError, match="bn1.running_mean"):
        rm.import_weights(rm.build(spec, BACKENDS[0]), folded)


# --------------------------------------------------------------------------- each framework's graph capture


def test_torch_inference_model_traces_and_compiles():
    import torch

    spec = _tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=2)
    fast = rm.build(spec, "torch", weights=weights, inference=True)
    x = odd_input(spec, batch=2)
    expected = rm.forward(rm.build(spec, "torch", weights=weights), x)
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with torch.no_grad():
        traced = torch.jit.trace(fast, torch.from_numpy(x))
        assert_close(traced(torch.from_numpy(x)).numpy(), expected, "torch.jit.trace")
        compiled = torch.compile(fast)
        assert_close(compiled(torch.from_numpy(x)).numpy(), expected, "torch.compile")


def test_paddle_inference_model_converts_to_static():
    import paddle

    spec = _tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=2)
    x = odd_input(spec, batch=2)
    expected = rm.forward(rm.build(spec, "paddle", weights=weights), x)
    static = paddle.jit.to_static(rm.build(spec, "paddle", weights=weights, inference=True), full_graph=True)
    with paddle.no_grad():
        assert_close(static(paddle.to_tensor(x)).numpy(), expected, "paddle.jit.to_static")
    assert_close(rm.forward(static, x), expected, "rm.forward of the static layer")


class _CountingEngine:
    """Wraps a Paddle Inference predictor and counts its runs (the engine route was taken)."""

    def __init__(self, engine):
        self.engine, self.runs = engine, 0

    def run(self, inputs):
        self.runs += 1
        return self.engine.run(inputs)


def test_paddle_inference_model_runs_its_engine_and_keeps_it_current(monkeypatch):
    """Eval calls of Paddle's fast path run under Paddle Inference (oneDNN); calls that need the
    layers (taps, gradients, hooks, to_static) run the dygraph forward; new weights and training
    drop the engine; an engine that cannot be made warns once and leaves the dygraph forward."""
    import copy

    import paddle
    from paddle import inference

    spec = _tiny_spec()
    weights, other = (random_weights(rm.make_plan(spec), seed=s) for s in (5, 6))
    fast = rm.build(spec, "paddle", weights=weights, inference=True)
    x, x2 = odd_input(spec, batch=2), odd_input(spec, batch=3)
    ordinary = rm.build(spec, "paddle", weights=weights)
    expected, expected2 = rm.forward(ordinary, x), rm.forward(ordinary, x2)

    def engine_runs(model) -> int:
        if not isinstance(model._engine, _CountingEngine):
            model._engine = _CountingEngine(model._engine or model._make_engine())
        return model._engine.runs

    assert fast._engine is None  # nothing made before it is needed
    rm.forward(fast, x, taps=True)
    assert fast._engine is None, "taps must use the layers"
    with paddle.no_grad():
        first = fast(paddle.to_tensor(x))
        second = fast(paddle.to_tensor(x2))  # another batch and the same engine; `first` must survive it
    assert engine_runs(fast) == 0 and fast._engine is not None
    assert isinstance(first, paddle.Tensor)
    assert_close(first.numpy(), expected, "engine output")
    assert_close(second.numpy(), expected2, "engine output, second call")
    assert_close(rm.forward(fast, x), expected, "rm.forward")
    assert engine_runs(fast) == 1

    # calls that need the layers do not touch the engine
    wants_grad = paddle.to_tensor(x, stop_gradient=False)
    fast(wants_grad).sum().backward()
    assert wants_grad.grad is not None and wants_grad.grad.shape == wants_grad.shape
    hook = fast.layer1.register_forward_post_hook(lambda layer, inputs, output: None)
    assert_close(rm.forward(fast, x), expected, "with a hook")
    hook.remove()
    assert engine_runs(fast) == 1
    copied = copy.deepcopy(fast)  # the predictor is left out of copies, remade on demand
    assert copied._engine is None and fast._engine is not None
    assert_close(rm.forward(copied, x), expected, "a deep copy")

    # new weights, by import_weights, set_state_dict or training: the engine is remade from them
    rm.import_weights(fast, rm.export_weights(rm.build(spec, "paddle", weights=other, inference=True)))
    assert fast._engine is None
    expected_other = rm.forward(rm.build(spec, "paddle", weights=other), x)
    assert_close(rm.forward(fast, x), expected_other, "engine after import_weights")
    fast.set_state_dict(rm.build(spec, "paddle", weights=weights, inference=True).state_dict())
    assert fast._engine is None
    assert_close(rm.forward(fast, x), expected, "engine after set_state_dict")
    fast.train()
    assert fast._engine is None
    fast.eval()

    def unavailable(config):
        raise RuntimeError("no engine here")

    monkeypatch.setattr(inference, "create_predictor", unavailable)
    broken = rm.build(spec, "paddle", weights=weights, inference=True)
    with pytest.warns(RuntimeWarning, match="no engine here"):
        out = rm.forward(broken, x)
    assert broken._engine is None
    assert_close(out, expected, "dygraph fallback")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every call
        assert_close(rm.forward(broken, x), expected, "dygraph fallback, again")


def test_paddle_engine_returns_every_output_of_a_pyramid():
    """A model with ``out_indices`` returns a list from its engine, as from its layers, and the
    next call leaves the tensors it returned alone (the predictor reuses its output buffers)."""
    import paddle

    spec = _tiny_spec().replace(name="tiny_pyramid", head=None, out_indices=(0, 1))
    weights = random_weights(rm.make_plan(spec), seed=7)
    fast = rm.build(spec, "paddle", weights=weights, inference=True)
    x = odd_input(spec, batch=2)
    expected = rm.forward(rm.build(spec, "paddle", weights=weights), x)
    with paddle.no_grad():
        outputs = fast(paddle.to_tensor(x))
        fast(paddle.to_tensor(odd_input(spec, batch=2, seed=1)))  # must not overwrite `outputs`
    assert fast._engine is not None and isinstance(outputs, list) and len(outputs) == len(expected) == 2
    for i, (actual, wanted) in enumerate(zip(outputs, expected, strict=True)):
        assert_close(actual.numpy(), wanted, f"pyramid output {i}")

def _small_hornet(name: str) -> rm.ResNetSpec:
    """A HorNet preset with one block per stage and 1/8 of the channels: the stem, every
    downsample's channels-first LayerNorm, gnconv of orders 2-5 and, for ``_gf``, the filter,
    whose (14, 8) and (7, 4) weights are resized to the spectra of a 97x75 input."""
    spec = rm.get_spec(name)
    stages = tuple(replace(s, depth=1, channels=s.channels // 8) for s in spec.stages)
    return spec.replace(name=f"small_{name}", stages=stages,
                        stem=replace(spec.stem, widths=tuple(w // 8 for w in spec.stem.widths)))


@pytest.mark.parametrize("name", ["hornet_tiny_7x7", "hornet_tiny_gf"])
def test_paddle_engine_runs_hornet_at_every_image_size(name):
    """HorNet's fast path runs under Paddle Inference at odd sizes, equal to the dygraph model.
    Two things once kept it off: the filter sizes its FFTs and its weight's resize from the image,
    which a program with a dynamic image size cannot know (so a ``_gf`` model's engine serves one
    image size and is remade for another), and oneDNN, at a fixed image size, overwrote the centred
    map of the channels-first LayerNorm while it was still needed (errors of order 1)."""
    import paddle

    spec = _small_hornet(name)
    weights = random_weights(rm.make_plan(spec), seed=3)
    fast = rm.build(spec, "paddle", weights=weights, inference=True)
    ordinary = rm.build(spec, "paddle", weights=weights)
    sized = name.endswith("_gf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the dygraph forward
        for hw in ((97, 75), (64, 81), (97, 75)):
            x = odd_input(spec, batch=2, hw=hw, seed=hw[0])
            with paddle.no_grad():
                actual = fast(paddle.to_tensor(x)).numpy()
            assert fast._engine is not None, f"{name} {hw}: no engine"
            assert fast._engine_image_size == (hw if sized else None)
            assert_close(actual, rm.forward(ordinary, x), f"{name} engine at {hw}")


def test_flax_inference_model_runs_pointwise_convs_as_products_under_jit():
    """Flax's fast path computes every 1x1 conv (no padding, no groups) as a channel product: the
    module swaps class but keeps its state, survives nnx.split/merge and nnx.jit, and other convs
    stay nnx.Conv."""
    import jax.numpy as jnp
    from flax import nnx

    from resnet_multi.backends.flax.fastpath import _is_pointwise

    spec = _tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=2)
    fast = rm.build(spec, "flax", weights=weights, inference=True)
    kinds = {(tuple(m.kernel_size), type(m).__name__) for _, m in nnx.iter_modules(fast) if isinstance(m, nnx.Conv)}
    assert ((1, 1), "_PointwiseConv") in kinds and ((3, 3), "Conv") in kinds, kinds
    assert ((1, 1), "Conv") not in kinds and ((3, 3), "_PointwiseConv") not in kinds, kinds

    x = odd_input(spec, batch=2)
    expected = rm.forward(rm.build(spec, "flax", weights=weights), x)
    graphdef, state = nnx.split(fast)
    merged = nnx.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert_close(np.asarray(merged), expected, "nnx.jit of split/merge")

    # what is not a plain 1x1 conv keeps the convolution primitive
    rngs = nnx.Rngs(0)
    assert _is_pointwise(nnx.Conv(4, 4, (1, 1), strides=(2, 2), padding=((0, 0), (0, 0)), rngs=rngs))
    for conv in (nnx.Conv(4, 4, (1, 1), padding=((1, 1), (1, 1)), rngs=rngs),
                 nnx.Conv(4, 4, (1, 1), padding=((0, 0), (0, 0)), feature_group_count=2, rngs=rngs),
                 nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)):
        assert not _is_pointwise(conv), conv
