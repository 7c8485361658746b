"""Building on every backend: the same seed gives the same model everywhere, canonical weights
export and import exactly and all or nothing, bad input is rejected clearly, and every backend
module keeps the registry's contract. (Every preset at full size: test_parity_matrix.)"""

from __future__ import annotations

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BACKENDS, assert_weights_equal, odd_input, small
from resnet_multi.weights import random_weights


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


# Every preset building in every backend with the shapes rm.summary predicts, finite outputs, taps
# in the plan's order and exact weights is checked in test_parity_matrix, on the same full-size
# model as its oracle parity (one build per preset and backend).


@pytest.fixture(scope="module")
def resnet18(backend):
    """A resnet18 of ``backend``, shared by the tests that only call it (they never change it)."""
    return rm.build("resnet18", backend=backend)


def test_same_seed_same_model_everywhere(backend):
    spec = rm.get_spec("resnet18")
    plan = rm.make_plan(spec)
    exported = rm.export_weights(rm.build(spec, backend=backend, seed=3))
    assert list(exported) == list(plan.params)
    reference = rm.weights.init_weights(plan, seed=3)
    assert_weights_equal(exported, reference)


def test_init_follows_spec():
    plan = rm.make_plan(rm.get_spec("resnet50").replace(init=rm.InitSpec(zero_init_last_bn=True)))
    w = rm.weights.init_weights(plan, seed=0)
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") on convs
    assert np.std(w["layer3.0.conv2.weight"]) == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)
    assert not w["layer1.0.bn3.weight"].any() and (w["layer1.0.bn2.weight"] == 1).all()
    assert (w["bn1.running_var"] == 1).all() and not w["bn1.running_mean"].any()
    bound = 1 / np.sqrt(2048)  # nn.Linear's default
    assert np.abs(w["fc.weight"]).max() <= bound and np.abs(w["fc.weight"]).max() > 0.9 * bound


def test_weights_round_trip_exactly(backend):
    # resnet50d's names (deep stem, avg-pool shortcuts) with 1/8 of the channels: exactness holds
    # tensor by tensor; every full-size preset's export is checked bit for bit in test_parity_matrix
    spec = small(rm.get_spec("resnet50d"))
    weights = random_weights(rm.make_plan(spec), seed=1)
    model = rm.build(spec, backend=backend, weights=weights)
    exported = rm.export_weights(model)
    assert exported.keys() == weights.keys()
    assert_weights_equal(exported, weights)
    rm.import_weights(model, random_weights(rm.make_plan(spec), seed=2))
    assert not np.array_equal(rm.export_weights(model)["fc.weight"], weights["fc.weight"])


def test_wrong_weights_are_rejected_whole(backend):
    spec = rm.get_spec("resnet18")
    model = rm.build(spec, backend=backend)
    before = rm.export_weights(model)
    wrong = random_weights(rm.make_plan(rm.get_spec("resnet34")), seed=0)  # deeper: unexpected names
    wrong["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    del wrong["fc.bias"]
    with pytest.raises(rm.WeightsError) as info:
        rm.import_weights(model, wrong)
    message = str(info.value)
    assert "layer1.0.conv1.weight (expected (64, 64, 3, 3), found (64, 64, 1, 1))" in message
    assert "missing: fc.bias" in message and "unexpected: layer1.2.conv1.weight" in message
    assert "'resnet18'" in message and info.value.missing == ["fc.bias"]
    after = rm.export_weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a failed import changed the model"
    # non-strict: subsets load, shapes are still checked
    rm.import_weights(model, {"fc.bias": np.ones(1000, np.float32), "unknown": np.ones(1)}, strict=False)
    np.testing.assert_array_equal(rm.export_weights(model)["fc.bias"], np.ones(1000, np.float32))


@pytest.mark.parametrize("shape, error, message", [
    ((3, 33, 47), ValueError, r"input: expected a 4-D NCHW array \(N, 3, H, W\), got shape \(3, 33, 47\)"),
    ((1, 33, 47, 3), ValueError, r"input: expected 3 input channel\(s\) \(NCHW\), got shape \(1, 33, 47, 3\)"),
    ((0, 3, 33, 47), ValueError, r"batch size must be >= 1"),
])
def test_bad_input_is_named(resnet18, shape, error, message):
    with pytest.raises(error, match=message):
        rm.forward(resnet18, np.zeros(shape, np.float32))


def test_integer_input_rejected_and_input_not_modified(resnet18):
    with pytest.raises(TypeError, match="floating point"):
        rm.forward(resnet18, np.zeros((1, 3, 33, 47), np.int64))
    x = odd_input(rm.get_spec("resnet18")).astype(np.float64)
    copy = x.copy()
    rm.forward(resnet18, x)
    np.testing.assert_array_equal(x, copy)


def test_registry_errors():
    with pytest.raises(rm.BackendError, match="unknown backend 'tensorflow'; known backends: torch, paddle, flax"):
        rm.build("resnet18", backend="tensorflow")
    with pytest.raises(TypeError, match="not a model built by resnet_multi"):
        rm.export_weights(object())
    assert set(rm.available_backends()) <= set(rm.backend_names())


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_module_satisfies_the_contract(name):
    import inspect

    from resnet_multi.registry import Backend, get_backend

    module = get_backend(name)
    assert isinstance(module, Backend), f"{name}: lacks part of registry.Backend"
    assert module.NAME == name
    assert "dtype" in inspect.signature(module.build).parameters
    assert "float32" in module.DTYPES and "float64" in module.DTYPES


def test_every_backend_has_its_test_idioms():
    """tests/conftest.py's framework idioms cover exactly the registry's backends."""
    from conftest import IDIOMS

    assert sorted(IDIOMS) == sorted(BACKENDS)
