"""rm.optimizer (one neutral description, each framework's own optimizer) and rm.check_training
(the same float64 trajectories in every backend; TrainingReport).

Training tests are kept cheap: float64 (where a 1e-9 bound proves agreement), batch 2, small
inputs, 2-3 steps, and ``tiny`` models (1/8 of the channels, one block per stage: the jit
compile of a Flax train step grows with the number of blocks, not with their width)."""

from __future__ import annotations


import json
import math
from dataclasses import replace

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BACKENDS, idioms
from resnet_multi import training as T
from resnet_multi.weights import random_weights


def tiny(spec: rm.ResNetSpec | str, max_depth: int = 1, divisor: int = 8) -> rm.ResNetSpec:
    """The preset's architecture (stem, block kind, shortcut, head, groups) with 1/divisor of the
    channels and at most ``max_depth`` blocks per stage, and no head dropout: canonical names stay
    those of the preset."""
    spec = rm.get_spec(spec) if isinstance(spec, str) else spec
    stem = replace(spec.stem, widths=tuple(max(1, w // divisor) for w in spec.stem.widths))
    block, head = spec.block, spec.head
    if block.kind == "dense":  # channels come from the growth rate
        stages = tuple(replace(s, depth=min(s.depth, max_depth)) for s in spec.stages)
        block = replace(block, growth_rate=max(1, block.growth_rate // divisor))
    elif block.kind == "ghost":  # per-block settings
        stages = tuple(replace(s, blocks=tuple(replace(b, channels=max(4, b.channels // divisor),
                                                       mid_channels=max(4, b.mid_channels // divisor))
                                               for b in s.blocks[:max_depth])) for s in spec.stages)
        if head is not None and head.hidden_channels:
            head = replace(head, hidden_channels=max(4, head.hidden_channels // divisor))
    else:
        stages = tuple(replace(s, channels=max(1, s.channels // divisor), depth=min(s.depth, max_depth))
                       for s in spec.stages)
        if block.groups > 1:  # keep a grouped conv, at a width the smaller channels allow (16 = 4 groups of 4)
            block = replace(block, groups=4, width_per_group=32)
    if head is not None and head.dropout:  # random masks differ between frameworks: nothing to compare
        head = replace(head, dropout=0.0)
    if block.drop_path_rate:  # stochastic depth draws random masks too (ConvNeXt)
        block = replace(block, drop_path_rate=0.0)
    return spec.replace(stages=stages, stem=stem, block=block, head=head)


pytestmark = pytest.mark.usefixtures("x64_for_the_file")  # float64 Flax models


TINY = tiny("resnet18")
BATCH = (2, 3, 33, 47)  # odd, non-square; the last stage sees 2x2, so BN averages 8 values per channel


# --------------------------------------------------------------------------- the neutral description


def test_optimizer_spec_defaults_and_names():
    sgd = T.optimizer_spec("sgd", lr=0.1)
    assert (sgd.name, sgd.momentum, sgd.nesterov, sgd.weight_decay) == ("sgd", 0.0, False, 0.0)
    adamw = T.optimizer_spec("adamw", lr=1e-3)
    assert (adamw.name, adamw.betas, adamw.eps, adamw.weight_decay) == ("adamw", (0.9, 0.999), 1e-8, 0.01)
    assert T.optimizer_spec(sgd) is sgd
    with pytest.raises(AttributeError):
        sgd.lr = 1.0  # frozen


@pytest.mark.parametrize("name, settings, words", [
    ("sgd", {}, "lr (the learning rate) is required"),
    ("sgd", {"lr": 0.0}, "lr must be in (0, inf]"),
    ("sgd", {"lr": float("nan")}, "lr must be a finite number"),
    ("sgd", {"lr": True}, "lr must be a finite number"),
    ("sgd", {"lr": 0.1, "momentum": 1.0}, "momentum must be in [0, 1)"),
    ("sgd", {"lr": 0.1, "momentum": -0.1}, "momentum must be in [0, 1)"),
    ("sgd", {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay must be in [0, inf]"),
    ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov=True needs momentum > 0"),
    ("sgd", {"lr": 0.1, "nesterov": "yes", "momentum": 0.9}, "nesterov must be True or False"),
    ("sgd", {"lr": 0.1, "betas": (0.9, 0.99)}, "no setting betas"),
    ("adamw", {"lr": 0.1, "momentum": 0.9}, "no setting momentum"),
    ("adamw", {"lr": 0.1, "betas": (0.9,)}, "betas must be a pair"),
    ("adamw", {"lr": 0.1, "betas": (0.9, 1.0)}, "betas[1] must be in [0, 1)"),
    ("adamw", {"lr": 0.1, "eps": 0.0}, "eps must be in (0, inf]"),
    ("adam", {"lr": 0.1}, "unknown optimizer 'adam'"),
])
def test_optimizer_spec_errors_name_the_field(name, settings, words):
    with pytest.raises(ValueError) as info:
        T.optimizer_spec(name, **settings)
    assert words in str(info.value)


# --------------------------------------------------------------------------- native optimizers


@pytest.fixture(scope="module")
def models64():
    """A float64 model of TINY per backend (built once; tests that step them build their own)."""
    weights = random_weights(rm.make_plan(TINY), seed=0)
    return weights, {b: rm.build(TINY, b, weights=weights, dtype="float64") for b in BACKENDS}


def _torch_optimizer_holds(opt, model, name: str, trainable: list[str], settings: dict) -> None:
    group = opt.param_groups[0]
    assert group["lr"] == 0.5 if name == "sgd" else group["lr"] == 0.25
    if name == "sgd":
        assert (group["momentum"], group["nesterov"], group["weight_decay"], group["dampening"]) == \
            (0.875, True, 2**-7, 0)
    else:
        assert (group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == \
            ((0.75, 0.875), 2**-20, 0.125, False)
    assert len(group["params"]) == len(trainable)


def _paddle_optimizer_holds(opt, model, name: str, trainable: list[str], settings: dict) -> None:
    # BatchNorm's _mean/_variance are Paddle parameters (stop_gradient=True): never optimized
    params = opt._parameter_list
    names = {p.name for p in params}
    stats = {p.name for n, p in model.named_parameters() if n.endswith(("._mean", "._variance"))}
    assert stats and not names & stats
    assert len(params) == len(trainable) and all(not p.stop_gradient for p in params)
    if name == "sgd":
        assert (opt._momentum, opt._use_nesterov) == (0.875, True)
        # L2Decay is applied by the momentum kernel itself, before momentum
        assert (opt._regularization_method, opt._regularization_coeff) == ("l2_decay", 2**-7)


def _flax_optimizer_holds(opt, model, name: str, trainable: list[str], settings: dict) -> None:
    from flax import nnx

    assert opt.wrt == nnx.Param
    # the optimizer state covers the parameters, not BatchNorm's batch statistics
    leaves = [path for path, _ in nnx.to_flat_state(nnx.state(opt.opt_state))]
    assert leaves and not any("mean" in map(str, path) or "var" in map(str, path) for path in leaves)
    # optax keeps its settings in closures: check them by what two steps do to a known parameter
    _assert_optax_settings(opt.tx, name, settings)


def _assert_optax_settings(tx, name, settings):
    """Two updates of p = (1, -2) by ``tx`` are those of torch's formulas with ``settings`` (lr,
    momentum, nesterov, L2 decay before momentum; AdamW's betas, eps, decoupled decay)."""
    import jax.numpy as jnp

    p = np.array([1.0, -2.0])
    grads = [np.array([0.5, 0.25]), np.array([-0.125, 1.0])]
    state = tx.init(jnp.asarray(p))
    params, buf, m, v = p.copy(), None, 0.0, 0.0
    for step, g in enumerate(grads, start=1):
        update, state = tx.update(jnp.asarray(g), state, jnp.asarray(params))
        if name == "sgd":
            d = g + settings["weight_decay"] * params
            buf = d if buf is None else settings["momentum"] * buf + d
            want = -settings["lr"] * ((d + settings["momentum"] * buf) if settings["nesterov"] else buf)
        else:
            b1, b2 = settings["betas"]
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
            want = -settings["lr"] * (m_hat / (np.sqrt(v_hat) + settings["eps"]) + settings["weight_decay"] * params)
        np.testing.assert_allclose(np.asarray(update), want, rtol=1e-12, err_msg=f"{name} step {step}")
        params = params + want


# How each framework's optimizer object shows its settings differs: one inspection per backend.
OPTIMIZER_HOLDS = {"torch": _torch_optimizer_holds, "paddle": _paddle_optimizer_holds, "flax": _flax_optimizer_holds}


def test_every_backend_has_an_optimizer_inspection():
    assert sorted(OPTIMIZER_HOLDS) == sorted(BACKENDS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, settings", [("sgd", dict(lr=0.5, momentum=0.875, nesterov=True, weight_decay=2**-7)),
                                            ("adamw", dict(lr=0.25, betas=(0.75, 0.875), eps=2**-20,
                                                           weight_decay=0.125))])
def test_optimizer_is_the_frameworks_own(models64, backend, name, settings):
    _, models = models64
    opt = rm.optimizer(models[backend], name, **settings)
    assert type(opt) is idioms(backend).optimizer_type(name)
    trainable = [n for n, info in rm.make_plan(TINY).params.items() if not info.is_buffer]
    OPTIMIZER_HOLDS[backend](opt, models[backend], name, trainable, settings)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_gives_every_gradient_in_canonical_names(models64, backend):
    """check_training's per-backend step: one gradient per trainable canonical tensor, in canonical
    layout, and none for the running statistics (Paddle's _mean/_variance are parameters there)."""
    from resnet_multi.registry import get_backend

    weights, _ = models64
    plan = rm.make_plan(TINY)
    model = rm.build(TINY, backend, weights=weights, dtype="float64")
    module = get_backend(backend)
    opt = module.make_optimizer(model, T.SGD(lr=0.1, weight_decay=2**-7))
    x = np.random.default_rng(0).standard_normal(BATCH)
    loss, grads = module.train_step(model, opt, x, np.array([3, 7]))
    trainable = [n for n, info in plan.params.items() if not info.is_buffer]
    assert sorted(grads) == sorted(trainable) and math.isfinite(loss)
    assert all(grads[n].shape == plan.params[n].shape and grads[n].dtype == np.float64 for n in trainable)


def test_optimizer_needs_a_model():
    with pytest.raises(TypeError, match="not a model built by resnet_multi"):
        rm.optimizer(object(), "sgd", lr=0.1)


def test_paddle_refuses_a_float64_momentum_it_would_round(models64):
    """Paddle's Momentum and decay coefficients are float32 attributes: in a float64 model 0.9
    would act as 0.89999997615814; the error says so and gives the exact value to use."""
    _, models = models64
    with pytest.raises(ValueError) as info:
        rm.optimizer(models["paddle"], "sgd", lr=0.1, momentum=0.9)
    message = str(info.value)
    assert "momentum=0.9" in message and repr(float(np.float32(0.9))) in message and "float32" in message
    with pytest.raises(ValueError, match="weight_decay=0.01"):
        rm.optimizer(models["paddle"], "adamw", lr=1e-3)  # AdamW's default decay, 0.01, is not float32-exact
    rm.optimizer(models["paddle"], "sgd", lr=0.1, momentum=float(np.float32(0.9)))  # the exact value works
    paddle32 = rm.build(TINY, "paddle")
    rm.optimizer(paddle32, "sgd", lr=0.1, momentum=0.9)  # float32 rounds it in every framework


# --------------------------------------------------------------------------- the same trajectories


# Settings exact in float32 (Paddle holds momentum and decay as float32 even in float64 models).
OPTIMIZERS = {
    "sgd": T.SGD(lr=0.25),
    "sgd_momentum_decay": T.SGD(lr=0.125, momentum=0.875, weight_decay=2**-7),
    "sgd_nesterov": T.SGD(lr=0.125, momentum=0.5, nesterov=True, weight_decay=2**-10),
    "adamw": T.AdamW(lr=1e-2, weight_decay=2**-7),
    "adamw_custom": T.AdamW(lr=3e-2, betas=(0.5, 0.75), eps=1e-3, weight_decay=0.25),
}


@pytest.mark.parametrize("key", OPTIMIZERS)
def test_same_float64_trajectories_in_every_backend(key):
    report = rm.check_training(TINY, backends=BACKENDS, steps=3, optimizer=OPTIMIZERS[key], input_shape=BATCH)
    assert report.ok, "\n" + str(report)
    assert report.backends == BACKENDS[1:] and report.reference == BACKENDS[0]
    # Measured float64 noise: SGD <= 2e-11; AdamW <= 2e-10, since Adam divides each element by its own
    # gradient magnitude, so elements near eps amplify the ~1e-12 gradient noise. The bound is 1e-9.
    worst = max(r.rel for r in report.records)
    assert worst < (3e-11 if OPTIMIZERS[key].name == "sgd" else 3e-10), f"measured float64 noise {worst:.2e}"
    # the steps did train: the loss changed at every step (so the updates were not zero)
    losses = report.losses[BACKENDS[0]]
    assert len(losses) == 3 and len(set(losses)) == 3


def test_report_structure_and_output():
    report = rm.check_training(TINY, backends=("torch", "paddle"), steps=2, input_shape=BATCH)
    plan = rm.make_plan(TINY)
    trainable = [n for n, info in plan.params.items() if not info.is_buffer]
    stats = [n for n, info in plan.params.items() if info.is_buffer]
    assert report.steps == 2 and report.rtol == 1e-9 and report.dtype == "float64"
    assert report.backends == ("paddle",) and set(report.losses) == {"torch", "paddle"}
    assert report.optimizer == T.DEFAULT_OPTIMIZER
    # execution order: per step, running stats (forward), loss, gradients last layer first, update
    step0 = [(r.phase, r.tensor) for r in report.records if r.step == 0]
    expected = ([("running_stats", n) for n in stats] + [("loss", "loss")] + [("gradient", n) for n in trainable[::-1]]
                + [("update", n) for n in trainable])
    assert step0 == expected
    # every gradient is there, in canonical names: Paddle's _mean/_variance are not among them
    assert all(r.ok and not r.note for r in report.records)
    assert report.first_divergence is None and report.divergences == {}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["first_divergence"] is None and data["metric"] == "max_abs_relative"
    assert data["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.875, "nesterov": False,
                                 "weight_decay": 2**-10}
    assert len(data["records"]) == len(report.records) and len(data["losses"]["paddle"]) == 2
    text = str(report)
    assert "training parity of resnet18" in text and f"all {len(report.records)} comparisons pass" in text


def test_float32_report_is_noise_with_the_reason():
    report = rm.check_training(TINY, backends=("torch", "paddle"), steps=2, dtype="float32", input_shape=BATCH)
    assert report.noise_only and math.isinf(report.rtol) and report.ok
    assert report.to_dict()["metric"] == "norm_relative" and report.to_dict()["rtol"] is None
    grads = [r for r in report.records if r.phase == "gradient"]
    assert all(math.isfinite(r.rel) for r in grads) and max(r.rel for r in grads) > 0  # measured, not zero
    assert "NOISE" in str(report) and "ReLU" in str(report) and "noise only, no bound" in str(report)


@pytest.mark.parametrize("kwargs, words", [
    (dict(steps=0), "steps: expected an integer >= 1"),
    (dict(dtype="float16"), "dtype: expected 'float64' or 'float32'"),
    (dict(backends=("torch",)), "only the reference 'torch' given"),
    (dict(backends=("torch", "mxnet")), "unknown backend 'mxnet'"),
    (dict(input_shape=(1, 3, 33, 47)), "BatchNorm needs a batch of at least 2"),
    (dict(labels=np.array([0, 1000])), "labels: class indices must be in [0, 1000)"),
    (dict(labels=np.array([0.5, 1.0])), "labels: expected 2 integer class indices"),
    (dict(optimizer=("sgd", 0.1)), "optimizer: expected an SGD or AdamW description"),
])
def test_check_training_argument_errors(kwargs, words):
    kwargs.setdefault("input_shape", BATCH)
    with pytest.raises((ValueError, rm.BackendError)) as info:
        rm.check_training(TINY, **kwargs)
    assert words in str(info.value)


def test_dropout_is_refused_wherever_the_spec_puts_it():
    head = TINY.replace(head=rm.HeadSpec(num_classes=10, dropout=0.5))
    with pytest.raises(ValueError, match=r"train-mode dropout or drop-path \(1 module\(s\), the first dropout at rate 0.5\)"):
        rm.check_training(head, input_shape=BATCH)
    dense = rm.get_spec("d2l_densenet")
    dense = dense.replace(block=replace(dense.block, drop_rate=0.1))
    with pytest.raises(ValueError, match=r"\(16 module\(s\), the first features.denseblock1.denselayer1.dropout "
                                         r"at rate 0.1\).*block.drop_rate"):
        rm.check_training(dense, input_shape=(2, 1, 33, 47))


def test_headless_and_multi_output_specs_train_on_pooled_features():
    """Without a head the loss is cross-entropy over the pooled output channels (concatenated for
    out_indices): every output stage gets gradients, in every backend alike."""
    spec = tiny("resnet18").replace(head=None, out_indices=(1, 3))
    assert T.training_classes(rm.make_plan(spec)) == 16 + 64
    report = rm.check_training(spec, backends=BACKENDS, steps=2, input_shape=BATCH)
    assert report.ok, "\n" + str(report)


def test_paddle_gradients_of_a_plan_with_paddle_names_are_canonical():
    """DenseNet's Paddle modules carry PaddleClas names (plan aliases): its step must still report
    every gradient under the canonical name (a missing one shows as an infinite error)."""
    report = rm.check_training(tiny("densenet121"), backends=("torch", "paddle"), steps=1, input_shape=(2, 3, 65, 81))
    assert report.ok, report.format()
    gradients = [r for r in report.records if r.phase == "gradient"]
    assert gradients and all(np.isfinite(r.rel) for r in gradients), report.format()
    assert {r.tensor for r in gradients} >= {"classifier.weight", "features.conv0.weight"}


# --------------------------------------------------------------------------- issue 19 item 2: no false divergences


def test_a_mathematically_zero_gradient_is_judged_by_its_modules_scale():
    """The gradient of a conv bias before a train-mode BN is zero in exact arithmetic: both backends give
    rounding noise (max|ref| 3.9e-16). It is judged against its conv's weight gradient, not its own size
    nor only 1e-6 of the phase's largest; a real error in it (1e-6) still fails."""
    rng = np.random.default_rng(0)
    ref = {"layer1.0.conv1.weight": 1e-2 * rng.standard_normal((4, 4, 3, 3)),
           "layer1.0.conv1.bias": np.array([3.9e-16, -1e-16, 2e-16, 0.0]), "fc.weight": rng.standard_normal((5, 4))}
    noisy = {**ref, "layer1.0.conv1.bias": ref["layer1.0.conv1.bias"] + 3e-16}
    records = T._compare(0, "gradient", "paddle", list(ref), noisy, ref, rtol=T.TRAINING_RTOL, norm=False)
    assert all(r.ok for r in records), [(r.tensor, r.rel) for r in records if not r.ok]
    wrong = {**ref, "layer1.0.conv1.bias": ref["layer1.0.conv1.bias"] + 1e-6}
    records = T._compare(0, "gradient", "paddle", list(ref), wrong, ref, rtol=T.TRAINING_RTOL, norm=False)
    assert [r.tensor for r in records if not r.ok] == ["layer1.0.conv1.bias"]


def test_the_default_batch_gives_every_batchnorm_8_values_per_channel():
    assert T.default_training_shape(rm.make_plan(rm.get_spec("resnet18"))) == (4, 3, 33, 47)  # 2x2 at the end
    assert T.default_training_shape(rm.make_plan(rm.get_spec("densenet121"))) == (8, 3, 33, 47)  # 1x1


@pytest.mark.parametrize("preset, input_shape", [
    ("d2l_resnet18", None), ("d2l_densenet", None),  # the CLI's defaults: (4, 1, 33, 47), (8, 1, 33, 47)
    ("d2l_resnet18", (8, 1, 32, 32)), ("d2l_densenet", (2, 1, 64, 64)),  # 8 values per channel at the end
])
def test_small_presets_pass_training_parity_in_float64(preset, input_shape):
    """The issue's false divergences (d2l_resnet18's conv1.bias, d2l_densenet's features.conv0.bias at
    step 0, rel 1.0e-9): correct backends agree at the CLI's defaults and other input sizes."""
    report = rm.check_training(preset, backends=("torch", "paddle"), steps=3, input_shape=input_shape)
    assert report.ok, report.format()
    assert max(r.rel for r in report.records) < 1e-11  # 100x below the bound: no marginal pass either


@pytest.mark.parametrize("preset, input_shape, where", [
    ("d2l_resnet18", (2, 1, 32, 32), "layer4"), ("d2l_densenet", (2, 1, 33, 47), "features.transition3"),
    ("densenet121", (4, 3, 33, 47), "features.transition3"),  # 4 values: parts by 1.1e-9 to 2e-7 from step 1
])
def test_an_input_too_small_for_batchnorm_is_refused_with_the_reason(preset, input_shape, where, capsys):
    """2 values per channel: the training itself is ill-conditioned (the loss of d2l_resnet18 grows to
    3.5e10), so the check says so instead of blaming a backend; the CLI calls it a bad argument (2)."""
    values = input_shape[0]  # the last maps are 1x1
    with pytest.raises(T.IllConditionedError, match=rf"BatchNorms at {where}.* normalize over {values} value"):
        rm.check_training(preset, backends=("torch", "paddle"), input_shape=input_shape)
    from resnet_multi.cli import main

    argv = ["parity", preset, "--train", "--backends", "torch,paddle", "--input", ",".join(map(str, input_shape))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnet-multi parity: error: input shape") and err.count("\n") == 1
