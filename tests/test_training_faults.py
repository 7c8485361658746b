"""Fault localization: check_training must not only fail on a wrong training convention, it must
name the step, phase, backend and tensor where it first shows.

Each fault is planted in one real backend for one test (``monkeypatch`` of the backend module's
training hook or build), the way a port could get it wrong:
- momentum given as 1 - m (Paddle's BatchNorm convention applied to the optimizer);
- BatchNorm's running variance stored biased where the spec says unbiased;
- L2 weight decay added after momentum instead of to the gradient;
- a different BatchNorm eps in train mode (Keras' 1e-3 for the spec's 1e-5);
- a parameter left frozen.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import resnet_multi as rm
from resnet_multi import training as T
from resnet_multi.registry import get_backend
from test_training import BATCH, TINY

pytestmark = pytest.mark.usefixtures("x64_for_the_file")  # float64 Flax models

PLAN = rm.make_plan(TINY)
FIRST_PARAM = next(n for n, info in PLAN.params.items() if not info.is_buffer)  # conv1.weight
BNS = [n[: -len(".running_mean")] for n, info in PLAN.params.items() if info.role == "bn_mean"]  # forward order


def _check(backends, optimizer=T.DEFAULT_OPTIMIZER, steps=2):
    return rm.check_training(TINY, backends=backends, steps=steps, optimizer=optimizer, input_shape=BATCH)


def _wrap_build(monkeypatch, backend: str, change_spec=None, after=None):
    """Plant a fault at build time: build from a changed spec, and/or change the built model."""
    module = get_backend(backend)
    build = module.build

    def faulty_build(plan, weights, **kwargs):
        if change_spec is not None:
            plan = rm.make_plan(change_spec(plan.spec))
        model = build(plan, weights, **kwargs)
        if after is not None:
            after(model)
        return model

    monkeypatch.setattr(module, "build", faulty_build)


def _assert_first(report, step, phase, backend, tensor):
    assert not report.ok
    first = report.first_divergence
    assert (first.step, first.phase, first.backend, first.tensor) == (step, phase, backend, tensor), "\n" + str(report)
    assert first.rel > 1e3 * report.rtol  # not a marginal failure: the fault is orders above the bound
    assert f"first divergence: {backend} at step {step}, {phase}, {tensor}" in str(report)


def test_momentum_given_as_one_minus_m(monkeypatch):
    """The first step is the same (the momentum buffer starts as the gradient); the second update
    differs, from the first parameter on; loss, gradients and BN statistics of step 1 agree."""
    module = get_backend("paddle")
    make = module.make_optimizer
    monkeypatch.setattr(module, "make_optimizer",
                        lambda model, spec: make(model, replace(spec, momentum=1 - spec.momentum)))
    _assert_first(_check(("torch", "paddle")), 1, "update", "paddle", FIRST_PARAM)


def test_weight_decay_added_after_momentum(monkeypatch):
    """v = m v + g; p -= lr (v + wd p) instead of v = m v + (g + wd p): equal at step 0, the
    second update differs by lr m wd p."""
    import optax

    from resnet_multi.backends.flax import train as module  # make_optimizer calls it there

    transform = module.optax_transform

    def decay_after_momentum(spec):
        if spec.name != "sgd":
            return transform(spec)
        return optax.chain(optax.trace(decay=spec.momentum), optax.add_decayed_weights(spec.weight_decay),
                           optax.scale(-spec.lr))

    monkeypatch.setattr(module, "optax_transform", decay_after_momentum)
    _assert_first(_check(("torch", "flax")), 1, "update", "flax", FIRST_PARAM)


def test_biased_instead_of_unbiased_running_variance(monkeypatch):
    """Train-mode outputs normalize with the biased variance either way: only the stored running
    variance differs, at the first BatchNorm of the first step."""
    assert TINY.norm.running_var == "unbiased"
    _wrap_build(monkeypatch, "flax",
                change_spec=lambda spec: spec.replace(norm=replace(spec.norm, running_var="biased")))
    _assert_first(_check(("torch", "flax"), steps=1), 0, "running_stats", "flax", f"{BNS[0]}.running_var")


def test_train_mode_eps_mismatch(monkeypatch):
    """A different eps changes every normalized output: the first BatchNorm's own statistics (of
    the conv before it) still agree, so the first divergence is the statistics of the BatchNorm
    after it, in the forward pass of step 0, before the loss."""
    _wrap_build(monkeypatch, "paddle", change_spec=lambda spec: spec.replace(norm=replace(spec.norm, eps=1e-3)))
    _assert_first(_check(("torch", "paddle"), steps=1), 0, "running_stats", "paddle", f"{BNS[1]}.running_mean")


def test_parameter_left_frozen(monkeypatch):
    """A frozen tensor has no gradient (the report says so) and is never updated."""
    frozen = "layer2.0.conv1.weight"

    def freeze(model):
        dict(model.named_parameters())[frozen].stop_gradient = True

    _wrap_build(monkeypatch, "paddle", after=freeze)
    report = _check(("torch", "paddle"), steps=1)
    first = report.first_divergence
    assert (first.step, first.phase, first.backend, first.tensor) == (0, "gradient", "paddle", frozen), str(report)
    (row,) = [r for r in report.failures() if r.phase == "gradient"]
    assert row.tensor == frozen and "missing" in row.note and "frozen" in row.note
    assert [r.tensor for r in report.failures() if r.phase == "update"] == [frozen]


def test_a_wrong_reference_is_pointed_at(monkeypatch):
    """When every compared backend diverges first at the same place, the report says the reference
    itself is suspect (a cross-check of three frameworks cannot tell which side is wrong alone)."""
    module = get_backend("torch")
    make = module.make_optimizer
    monkeypatch.setattr(module, "make_optimizer",
                        lambda model, spec: make(model, replace(spec, momentum=1 - spec.momentum)))
    report = _check(("torch", "paddle", "flax"))
    assert report.reference_suspect and set(report.divergences) == {"paddle", "flax"}
    assert "suspect the reference (torch)" in str(report)
    assert report.to_dict()["reference_suspect"] is True
