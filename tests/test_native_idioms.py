"""A model we return behaves like the framework's own model under what people do with one:
module surgery, SyncBatchNorm conversion, torch.fx, torch.compile, torch.export, saving and loading
(torch.save of the whole model, paddle.save + set_state_dict, paddle.jit.save, orbax), copies,
paddle.jit.to_static, nnx.jit differentiation, jit over a sharded batch, float64 builds, and the
spec's BatchNorm running-variance estimator in train mode.

Surgery tests do the same surgery on torchvision's / paddle.vision's own model holding the same
weights and require identical outputs: "takes effect" means "takes the same effect".
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi.weights import random_weights

from conftest import BACKENDS, small
from test_training import tiny

HW = (33, 47)


def _weights(spec: str | rm.ResNetSpec, seed: int = 0):
    plan = rm.make_plan(rm.get_spec(spec) if isinstance(spec, str) else spec)
    return plan, random_weights(plan, seed)


# Trainings under a compiler (torch.compile, paddle.jit.to_static, nnx.jit, a sharded jax.jit) run on
# the preset's architecture at 1/8 of its channels and two blocks a stage (identity and projection
# shortcuts both present): what they prove is that the captured graph computes and trains as the
# eager one does, which width and depth do not change, and compile time grows with both.
def _small(spec_name: str) -> rm.ResNetSpec:
    return tiny(spec_name, max_depth=2)


def _input(channels: int = 3, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, channels, *HW)).astype(np.float32)


# --------------------------------------------------------------------------- torch

def _torch_pair(spec_name="resnet18"):
    import torch
    import torchvision

    _, weights = _weights(spec_name)
    ours = rm.build(spec_name, "torch", weights=weights)
    theirs = getattr(torchvision.models, spec_name)()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs.eval(), torch


def _torch_surgeries():
    from torch import nn

    return {
        "bn_to_identity": lambda m: setattr(m.layer1[0], "bn1", nn.Identity()),
        "one_channel_stem": lambda m: setattr(m, "conv1", nn.Conv2d(1, 64, 7, 2, 3, bias=False)),
        "new_fc": lambda m: setattr(m, "fc", nn.Linear(512, 10)),
        "frozen_bn_eval": lambda m: setattr(m.layer2[1], "bn2", nn.BatchNorm2d(128, eps=0.1)),
        "no_maxpool": lambda m: setattr(m, "maxpool", nn.Identity()),  # the CIFAR recipe
        "silu_stem": lambda m: setattr(m, "relu", nn.SiLU()),  # torchvision: the stem's relu only
        "block_relu_to_gelu": lambda m: setattr(m.layer2[0], "relu", nn.GELU()),  # all three of its calls
        "max_pool_head": lambda m: setattr(m, "avgpool", nn.AdaptiveMaxPool2d(1)),
    }


TORCH_SURGERIES = ["bn_to_identity", "one_channel_stem", "new_fc", "frozen_bn_eval", "no_maxpool", "silu_stem",
                   "block_relu_to_gelu", "max_pool_head"]


@pytest.mark.parametrize("surgery", TORCH_SURGERIES)
def test_torch_module_surgery_takes_the_same_effect_as_on_torchvision(surgery):
    ours, theirs, torch = _torch_pair()
    x = torch.from_numpy(_input())
    before = ours(x)
    torch.manual_seed(0)
    _torch_surgeries()[surgery](ours)
    torch.manual_seed(0)
    _torch_surgeries()[surgery](theirs)
    ours.eval(), theirs.eval()  # a new BatchNorm starts in train mode
    if surgery == "one_channel_stem":
        x = torch.from_numpy(_input(channels=1))
    else:
        assert not torch.equal(ours(x), before), "the surgery had no effect"
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("spec_name", ["resnet50", "densenet121"])
def test_torch_children_hooks_and_feature_extraction_work_as_on_torchvision(spec_name):
    """What people build from a torchvision model's module tree: ``nn.Sequential(*children[:-1])``
    as a feature extractor (a ResNet; DenseNet's is ``model.features``), a forward hook on a
    stage, and ``create_feature_extractor`` on the parameterless modules: same results."""
    import torch
    import torchvision
    from torch import nn
    from torchvision.models.feature_extraction import create_feature_extractor

    _, weights = _weights(spec_name)
    ours = rm.build(spec_name, "torch", weights=weights)
    theirs = torchvision.models.get_model(spec_name)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    x = torch.from_numpy(_input())
    stage, node = ("layer4", "avgpool") if spec_name.startswith("resnet") else ("features.denseblock4", "features.pool0")
    results = []
    for model in (ours, theirs):
        seen = []
        hook = model.get_submodule(stage).register_forward_hook(lambda module, args, out: seen.append(out))
        with torch.no_grad():
            model(x)
            hook.remove()
            if spec_name.startswith("resnet"):
                trunk = nn.Sequential(*list(model.children())[:-1])(x)
            else:
                trunk = model.features(x) if model is theirs else None  # ours: a container without forward
            extracted = create_feature_extractor(model, return_nodes={node: "out"})(x)["out"]
        results.append((seen, trunk, extracted))
    (our_seen, our_trunk, our_extracted), (their_seen, their_trunk, their_extracted) = results
    assert len(our_seen) == len(their_seen) == 1 and torch.equal(our_seen[0], their_seen[0])
    if our_trunk is not None:
        assert torch.equal(our_trunk, their_trunk)
    assert torch.equal(our_extracted, their_extracted)


def test_torch_sync_batchnorm_conversion_runs_sync_batchnorm():
    _, _, torch = _torch_pair()
    from torch import nn

    model = nn.SyncBatchNorm.convert_sync_batchnorm(rm.build("resnet18", "torch"))
    syncs = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    calls = []
    for m in syncs:
        m.register_forward_hook(lambda module, args, out: calls.append(module))
    model.eval()(torch.from_numpy(_input()))
    assert len(syncs) == 20 and len(calls) == 20 and set(map(id, calls)) == set(map(id, syncs))


@pytest.mark.parametrize("spec_name", ["resnet18", "resnet50d", "d2l_resnet18", "resnet45", "densenet121",
                                       "ghostnet_050"])
def test_torch_fx_symbolic_trace_equals_eager(spec_name):
    import torch

    _, weights = _weights(spec_name)
    model = rm.build(spec_name, "torch", weights=weights)
    traced = torch.fx.symbolic_trace(model)
    assert any(node.op == "call_module" for node in traced.graph.nodes)
    gates = [node for node in traced.graph.nodes if getattr(node.target, "__name__", "") == "_hard_sigmoid"]
    # GhostNet's SE gates: one call each of the backend's wrapped function (it branches on dtype)
    hard_sigmoids = [op for part in model.plan.parts for op in part.ops
                     if isinstance(op, rm.plan.Act) and op.kind == "hard_sigmoid"]
    assert len(gates) == len(hard_sigmoids) and (len(gates) > 0) == spec_name.startswith("ghostnet")
    x = torch.from_numpy(_input(rm.get_spec(spec_name).in_channels))
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def _torch_sgd_steps(model, x, y, steps=2):
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def test_torch_compile_trains_like_eager():
    import torch

    spec = _small("resnet18")
    _, weights = _weights(spec)
    x = torch.from_numpy(_input(batch=4))
    y = torch.tensor([1, 5, 3, 0])
    eager = rm.build(spec, "torch", weights=weights, dtype="float64").train()
    compiled_model = rm.build(spec, "torch", weights=weights, dtype="float64").train()
    compiled = torch.compile(compiled_model, backend="aot_eager")  # no C++ toolchain needed
    eager_losses = _torch_sgd_steps(eager, x.double(), y)
    compiled_losses = _torch_sgd_steps(compiled, x.double(), y)
    # float64: a compiled graph may only reorder sums (~1e-16 per op); any real difference is >= 1e-8
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses), rtol=1e-10, atol=0)
    for (name, a), b in zip(eager.state_dict().items(), compiled_model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)  # float64: only summation order


FAMILIES = ["resnet18", "densenet121", "ghostnet_050"]  # one preset of each block family


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_torch_autocast_training_is_the_reference_models(spec_name):
    """bfloat16 autocast, train mode: logits and every gradient bit-equal to torchvision's / timm's
    model holding the same weights (GhostNet's gate is F.hardsigmoid, rounded once in bfloat16)."""
    import timm
    import torch
    import torchvision

    spec = rm.get_spec(spec_name)
    spec = spec.replace(head=replace(spec.head, dropout=0.0))  # no random masks
    ours = rm.build(spec, "torch", weights=random_weights(rm.make_plan(spec), seed=0)).train()
    if spec_name.startswith("ghostnet"):
        theirs = timm.create_model(spec_name, drop_rate=0.0)
    else:
        theirs = torchvision.models.get_model(spec_name)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.train()
    x = torch.from_numpy(_input())
    outputs, grads = [], []
    for model in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        outputs.append(out)
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert outputs[0].dtype == torch.bfloat16 and torch.equal(outputs[0], outputs[1])
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        assert torch.equal(grads[0][name], grad), name


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("spec_name", FAMILIES)
def test_torch_export_save_load_and_copy_keep_the_function(spec_name, tmp_path):
    import copy

    import torch

    _, weights = _weights(spec_name)
    model = rm.build(spec_name, "torch", weights=weights)
    x = torch.from_numpy(_input())
    with torch.no_grad():
        expected = model(x).numpy()
        exported = torch.export.export(model, (x,)).module()  # the graph torch.export captures
        np.testing.assert_array_equal(exported(x).numpy(), expected)
        torch.save(model, tmp_path / "model.pt")  # the whole module, pickled
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        np.testing.assert_array_equal(loaded(x).numpy(), expected)
        np.testing.assert_array_equal(copy.deepcopy(model)(x).numpy(), expected)
    # TorchScript cannot compile the plan walk: say so and name what works, instead of
    # TorchScript's "Failed to get source for Part.__init__"
    with pytest.raises(TypeError, match=r"torch.jit.script cannot compile.*torch.jit.trace.*torch.export.export"):
        torch.jit.script(model)


# --------------------------------------------------------------------------- paddle

def _paddle_pair():
    import paddle
    import paddle.vision

    _, weights = _weights("resnet18")
    ours = rm.build("resnet18", "paddle", weights=weights)
    theirs = paddle.vision.models.resnet18()
    theirs.set_state_dict(ours.state_dict())
    return ours, theirs, paddle


@pytest.mark.parametrize("surgery", ["bn_to_identity", "one_channel_stem", "new_fc", "no_maxpool", "silu_stem",
                                     "block_relu_to_gelu"])
def test_paddle_module_surgery_takes_the_same_effect_as_on_paddle_vision(surgery):
    ours, theirs, paddle = _paddle_pair()
    from paddle import nn

    def do(model):
        paddle.seed(0)
        if surgery == "bn_to_identity":
            model.layer1[0].bn1 = nn.Identity()
        elif surgery == "one_channel_stem":
            model.conv1 = nn.Conv2D(1, 64, 7, 2, 3, bias_attr=False)
        elif surgery == "no_maxpool":
            model.maxpool = nn.Identity()
        elif surgery == "silu_stem":
            model.relu = nn.Silu()
        elif surgery == "block_relu_to_gelu":
            model.layer2[0].relu = nn.GELU()
        else:
            model.fc = nn.Linear(512, 10)

    x = paddle.to_tensor(_input())
    ours.eval(), theirs.eval()
    before = ours(x).numpy()
    do(ours)
    do(theirs)
    if surgery == "one_channel_stem":
        x = paddle.to_tensor(_input(channels=1))
    else:
        assert not np.array_equal(ours(x).numpy(), before), "the surgery had no effect"
    np.testing.assert_array_equal(ours(x).numpy(), theirs(x).numpy())


def test_paddle_children_and_stage_hooks_work_as_on_paddle_vision():
    """``nn.Sequential(*children[:-1])`` as a feature extractor and a post-hook on a stage."""
    ours, theirs, paddle = _paddle_pair()
    from paddle import nn

    x = paddle.to_tensor(_input())
    results = []
    for model in (ours.eval(), theirs.eval()):
        seen = []
        hook = model.layer4.register_forward_post_hook(lambda layer, args, out: seen.append(out.numpy()))
        model(x)
        hook.remove()
        results.append((seen, nn.Sequential(*list(model.children())[:-1])(x).numpy()))
    (our_seen, our_trunk), (their_seen, their_trunk) = results
    assert len(our_seen) == len(their_seen) == 1
    np.testing.assert_array_equal(our_seen[0], their_seen[0])
    np.testing.assert_array_equal(our_trunk, their_trunk)


def test_paddle_sync_batchnorm_conversion_runs_sync_batchnorm():
    import paddle
    from paddle import nn

    model = nn.SyncBatchNorm.convert_sync_batchnorm(rm.build("resnet18", "paddle"))
    syncs = [m for m in model.sublayers() if isinstance(m, nn.SyncBatchNorm)]
    calls = []
    for m in syncs:
        m.register_forward_pre_hook(lambda layer, args: calls.append(layer))
    model.eval()
    # Paddle has no CPU kernel for SyncBatchNorm: that the forward reaches it is the proof it runs.
    with pytest.raises(RuntimeError, match="sync_batch_norm"):
        model(paddle.to_tensor(_input()))
    assert len(syncs) == 20 and calls == syncs[:1]


@pytest.mark.parametrize("full_graph", [False, True], ids=["sot", "ast"])
def test_paddle_to_static_trains_like_dygraph(full_graph):
    import paddle

    spec = _small("resnet18")
    _, weights = _weights(spec)
    x = paddle.to_tensor(_input(batch=4).astype(np.float64))
    y = paddle.to_tensor(np.array([1, 5, 3, 0]))

    def run(model):
        model.train()
        opt = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=model.parameters())
        losses = []
        for _ in range(2):
            loss = paddle.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            losses.append(float(loss))
        return losses, rm.export_weights(model)

    dygraph = run(rm.build(spec, "paddle", weights=weights, dtype="float64"))
    static_model = rm.build(spec, "paddle", weights=weights, dtype="float64")
    static = run(paddle.jit.to_static(static_model, full_graph=full_graph))
    # float64: the static program may only reorder sums; the same bounds as the torch.compile test
    np.testing.assert_allclose(static[0], dygraph[0], rtol=1e-10)
    for name, value in dygraph[1].items():
        np.testing.assert_allclose(static[1][name], value, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("spec_name", ["resnet18", "densenet121"])
def test_paddle_state_dict_and_jit_save_round_trip(spec_name, tmp_path):
    """paddle.save(state_dict) into a fresh model by set_state_dict (densenet121: PaddleClas names),
    and paddle.jit.save of the to_static model, loaded by paddle.jit.load, compute the same function."""
    import paddle

    _, weights = _weights(spec_name)
    model = rm.build(spec_name, "paddle", weights=weights)
    x = paddle.to_tensor(_input())
    expected = model(x).numpy()
    paddle.save(model.state_dict(), str(tmp_path / "model.pdparams"))
    fresh = rm.build(spec_name, "paddle")
    missing, unexpected = fresh.set_state_dict(paddle.load(str(tmp_path / "model.pdparams")))
    assert not missing and not unexpected
    np.testing.assert_array_equal(fresh(x).numpy(), expected)
    static = paddle.jit.to_static(fresh, input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32")],
                                  full_graph=True)  # AST: the mode that takes an input_spec
    paddle.jit.save(static, str(tmp_path / "inference"))
    loaded = paddle.jit.load(str(tmp_path / "inference"))
    loaded.eval()
    # a static program may fuse differently from dygraph: float32 rounding only
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- flax

@pytest.mark.parametrize("spec_name", ["resnet18", "resnet50d", "resnet45"])
def test_flax_nnx_jit_value_and_grad_trains_and_updates_batch_stats(spec_name, x64):
    """Two SGD-momentum steps of the standard Flax step, ``nnx.jit`` around ``nnx.value_and_grad``
    and ``nnx.Optimizer``, on any smooth function of the output (logits or a feature map), give
    the losses, weights and running statistics of the same steps in eager torch (float64). The
    reference is torch's, not eager Flax's: an eager JAX step compiles every primitive of the
    forward and backward pass on first use (30 s for the small resnet50d; the jitted step, 6 s),
    and eager Flax agrees with torch already (test_training's float64 trajectories)."""
    import jax.numpy as jnp
    import optax
    import torch
    from flax import nnx

    spec = _small(spec_name)
    _, weights = _weights(spec)
    x_nchw = _input(spec.in_channels, batch=4).astype(np.float64)

    def loss_fn(model, x):
        return jnp.mean(jnp.tanh(model(x)) ** 2)

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x)
        optimizer.update(model, grads)
        return loss

    model = rm.build(spec, "flax", weights=weights, dtype="float64")
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    jit_losses = [float(step(model, optimizer, x)) for _ in range(2)]
    jit_w = rm.export_weights(model)

    reference = rm.build(spec, "torch", weights=weights, dtype="float64")
    reference.train()
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    torch_losses = []
    for _ in range(2):
        torch_optimizer.zero_grad()
        loss = torch.mean(torch.tanh(reference(torch.from_numpy(x_nchw))) ** 2)
        loss.backward()
        torch_optimizer.step()
        torch_losses.append(loss.item())
    torch_w = rm.export_weights(reference)

    # float64, two frameworks: they may only sum in other orders (~1e-13 measured on the trainings of
    # test_training_native); 1e-9 is docs/NUMERICS.md's float64 training bound; atol for entries near 0
    np.testing.assert_allclose(jit_losses, torch_losses, rtol=1e-10)
    assert not np.array_equal(jit_w["bn1.running_mean"], weights["bn1.running_mean"])  # stats updated in jit
    for name in weights:
        np.testing.assert_allclose(jit_w[name], torch_w[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_flax_float64_without_x64_is_a_clear_error():
    import jax

    if jax.config.jax_enable_x64:
        pytest.fail("x64 left on by another test")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        rm.build("resnet18", "flax", dtype="float64")


@pytest.mark.parametrize("spec_name", FAMILIES)
def test_flax_orbax_checkpoint_and_a_sharded_jit_keep_the_function(spec_name, tmp_path):
    """nnx.state saved by orbax restores into a fresh model; the split model under jax.jit, its
    batch sharded over a mesh of every device and its state replicated, computes the same."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    spec = _small(spec_name)
    _, weights = _weights(spec)
    model = rm.build(spec, "flax", weights=weights)
    x = _input()
    expected = rm.forward(model, x)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "checkpoint", nnx.state(model))
    checkpointer.wait_until_finished()
    graphdef, abstract = nnx.split(rm.build(spec, "flax"))
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "checkpoint", abstract))
    np.testing.assert_array_equal(rm.forward(restored, x), expected)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    batch = jax.device_put(jnp.asarray(x.transpose(0, 2, 3, 1)), NamedSharding(mesh, PartitionSpec("data")))
    sharded = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, batch)
    # another jit program than rm.forward's (which also returns taps): XLA may fuse differently
    np.testing.assert_allclose(np.asarray(sharded), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- every backend

@pytest.fixture
def float64_backend(request):
    """Enable JAX's x64 mode for the flax case only (a process-wide switch)."""
    backend = request.param
    if backend == "flax":
        request.getfixturevalue("x64")
    return backend


@pytest.mark.parametrize("float64_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("inference", [False, True])
def test_float64_models_compute_in_float64(float64_backend, inference):
    # resnet50d's depth and every kind of layer (deep stem, pooled shortcuts) at 1/8 of its channels:
    # a dtype is set per layer, and the error of a float32 layer does not depend on the width
    spec = small(rm.get_spec("resnet50d"))
    plan, weights = _weights(spec, seed=3)
    model = rm.build(spec, float64_backend, weights=weights, dtype="float64", inference=inference)
    assert all(w.dtype == np.float64 for w in rm.export_weights(model).values())
    x = _input(seed=4).astype(np.float64)  # float32-representable: the oracle rounds to float32 first
    ref = rm.reference_forward(plan, weights, x, taps=True)
    out = rm.forward(model, x, taps=True)
    for tap, value in ref.items():
        rel = np.abs(out[tap] - value).max() / np.abs(value).max()
        # float64 rounding (~1e-16 per op) grown over ~60 layers of random weights: measured up
        # to 2.4e-15 (paddle; 1.3e-12 at full width); the same models built in float32 are >= 1.5e-7
        # off at every tap. The folded model's weights were rounded once in float64 (not to float32).
        assert rel < 1e-10, (tap, rel)
    if not inference:
        fast = rm.optimize_for_inference(model)
        assert all(w.dtype == np.float64 for w in rm.export_weights(fast).values())


@pytest.mark.parametrize("float64_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_train_mode_running_var_follows_the_spec(float64_backend, estimator):
    from resnet_multi import reference as R

    spec = rm.get_spec("resnet18")
    spec = spec.replace(norm=rm.NormSpec(momentum=0.3, running_var=estimator))
    plan = rm.make_plan(spec)
    weights = random_weights(plan, 5)
    model = rm.build(spec, float64_backend, weights=weights, dtype="float64")
    x = _input(batch=3, seed=6).astype(np.float64)
    _train_forward(float64_backend, model, x)
    after = rm.export_weights(model)["bn1.running_var"]

    conv = R.conv2d(x, weights["conv1.weight"].astype(np.float64), stride=2, padding=3)
    n = conv.shape[0] * conv.shape[2] * conv.shape[3]
    var = conv.var(axis=(0, 2, 3)) * (n / (n - 1) if estimator == "unbiased" else 1.0)
    expected = 0.7 * weights["bn1.running_var"].astype(np.float64) + 0.3 * var
    np.testing.assert_allclose(after, expected, rtol=1e-12)
    other = var * ((n - 1) / n if estimator == "unbiased" else n / (n - 1))  # the other estimator's value
    assert not np.allclose(after, 0.7 * weights["bn1.running_var"] + 0.3 * other, rtol=1e-6)


@pytest.mark.parametrize("float64_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_float64_batchnorm_adds_the_exact_epsilon(float64_backend, mode):
    """Where a channel's variance is small, ``var + eps`` decides the output. Paddle's kernel holds
    eps as a float32 attribute (1e-5 acts as 9.99999974738e-06): 1.2e-9 relative off at variance
    1e-4, 1.2e-8 at 1e-6. Here the stem's BN sees variances near 1e-6, in the batch (train) or
    in its running statistics (eval)."""
    from resnet_multi import reference as R

    plan, weights = _weights("resnet18", seed=7)
    weights = {name: value.astype(np.float64) for name, value in weights.items()}
    weights["bn1.running_var"] = np.random.default_rng(9).uniform(0.5e-6, 2e-6, 64)
    weights["bn1.running_mean"] = weights["bn1.running_mean"] * 1e-3
    x = _input(seed=8).astype(np.float64) * 1e-3
    model = rm.build(plan.spec, float64_backend, weights=weights, dtype="float64")
    if mode == "eval":
        stem = rm.forward(model, x, taps=True)["stem"]
        expected = rm.reference_forward(plan, weights, x, taps=True, precision="float64")["stem"]
    else:
        stem = _train_taps(float64_backend, model, x)["stem"]
        conv = R.conv2d(x, weights["conv1.weight"], stride=2, padding=3)
        mean, var = conv.mean(axis=(0, 2, 3)), conv.var(axis=(0, 2, 3))
        assert var.max() < 1e-5  # the regime where eps matters
        expected = R.max_pool2d(R.relu(R.batch_norm(conv, weights["bn1.weight"], weights["bn1.bias"], mean, var,
                                                    1e-5)), 3, 2, 1)
    rel = np.abs(stem - expected).max() / np.abs(expected).max()
    assert rel < 1e-12, rel  # float64 rounding: measured below 1e-15; float32 eps gives ~1e-8


def _train_taps(backend: str, model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tap of one train-mode forward, each framework's own way, as NCHW arrays."""
    if backend == "torch":
        import torch

        return {k: v.detach().numpy() for k, v in model.train().forward_taps(torch.from_numpy(x)).items()}
    if backend == "paddle":
        import paddle

        model.train()
        return {k: v.numpy() for k, v in model(paddle.to_tensor(x), taps=True).items()}
    import jax.numpy as jnp

    model.train()
    taps = model(jnp.asarray(x.transpose(0, 2, 3, 1)), taps=True)
    return {k: np.asarray(v).transpose(0, 3, 1, 2) if v.ndim == 4 else np.asarray(v) for k, v in taps.items()}


def _train_forward(backend: str, model, x: np.ndarray) -> None:
    """One train-mode forward, each framework's own way."""
    if backend == "torch":
        import torch

        model.train()(torch.from_numpy(x))
    elif backend == "paddle":
        import paddle

        model.train()
        model(paddle.to_tensor(x))
    else:
        import jax.numpy as jnp

        model.train()
        model(jnp.asarray(x.transpose(0, 2, 3, 1)))


def test_old_spec_files_read_running_var_as_unbiased(tmp_path):
    data = rm.get_spec("resnet18").to_dict()
    del data["norm"]["running_var"]
    assert rm.ResNetSpec.from_dict(data).norm.running_var == "unbiased"
    assert rm.get_spec("resnet45").norm.running_var == "biased"
    with pytest.raises(rm.SpecError, match="norm.running_var"):
        rm.get_spec("resnet18").replace(norm=rm.NormSpec(running_var="sample"))


@pytest.mark.parametrize("float64_backend", BACKENDS, indirect=True)
def test_float64_weights_stay_float64_through_build_export_and_parity(float64_backend):
    """Weights that float32 cannot hold (here 1e-9 off a float32 value) survive a float64 build
    exactly, and the float64 parity check computes the oracle on them unrounded."""
    from resnet_multi.parity import check_models

    plan, weights = _weights("resnet18", seed=7)
    rng = np.random.default_rng(8)
    weights = {name: w.astype(np.float64) * (1 + 1e-9 * rng.standard_normal(w.shape)) for name, w in weights.items()}
    model = rm.build("resnet18", float64_backend, weights=weights, dtype="float64")
    exported = rm.export_weights(model)
    for name, value in weights.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    report = rm.check_parity("resnet18", backends=(float64_backend,), weights=weights, dtype="float64")
    assert report.ok and report.dtype == "float64", report.format()
    models_report = check_models({float64_backend: model}, _input(batch=1), weights=weights)
    assert models_report.ok and (models_report.dtype, models_report.rtol) == ("float64", 1e-10)
