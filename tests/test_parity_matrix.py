"""The parity matrix: every preset x every backend against the float64 numpy oracle, tap by
tap, and randomly drawn specs (hypothesis) through every backend.

Bound everywhere: max|a - b| <= 1e-6 + 1e-5 * max|ref| per tap (check_parity's default);
measured worst relative errors are 1e-7 to 3e-6 (float32 summation order), growing slowly
with depth. Weights are ``random_weights`` (random BN statistics, no zero-init), inputs are
odd and non-square: the conditions under which a porting bug cannot hide.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet_multi as rm
from conftest import BACKENDS, BUILT_PRESETS, ODD_HW, assert_close, assert_weights_equal, preset_oracle
from resnet_multi.inference import fold_batchnorm
from resnet_multi.parity import check_models
from resnet_multi.families.residual import KINDS as RESIDUAL_KINDS, SHORTCUT_KINDS, SHORTCUT_WHEN
from resnet_multi.weights import random_weights


def _assert_matches_oracle(name: str, backend: str, hw: tuple[int, int], batch: int = 1):
    """Builds ``name`` in ``backend`` with the preset's shared random weights and compares every tap
    with the oracle's; returns the model, input and taps for further checks on the same model."""
    spec, weights, x, oracle = preset_oracle(name, hw, batch)
    model = rm.build(spec, backend=backend, weights=weights)
    plan = rm.make_plan(spec)
    taps = rm.forward(model, x, taps=True)
    report = rm.parity.compare_outputs(plan, {backend: taps}, oracle, input_shape=x.shape)
    assert report.ok, "\n" + str(report)
    return model, x, taps


_FIRST_TAPS: dict[str, dict[str, np.ndarray]] = {}  # one preset's taps at a time


def _first_backend_taps(name: str) -> dict[str, np.ndarray]:
    """The taps of the registry's first backend (torch) for the matrix's weights and input: every
    other backend is also compared with it, framework to framework. In preset-major order they are
    kept from the first backend's own test; in another order (``-k``) they are computed here."""
    if name not in _FIRST_TAPS:
        spec, weights, x, _ = preset_oracle(name, ODD_HW, 2)
        _FIRST_TAPS.clear()
        _FIRST_TAPS[name] = rm.forward(rm.build(spec, backend=BACKENDS[0], weights=weights), x, taps=True)
    return _FIRST_TAPS[name]


# Preset-major, so that each preset's weights and oracle are computed once for all backends. Each
# preset is built once per backend at full size (the user's model) and checked for everything a
# build must give: the oracle's values at every tap, the shapes rm.summary predicts (batch 2, so a
# batch axis mixed up with another shows), finite outputs, the taps in the plan's order, the plain
# forward equal to its tap, the exported weights equal to the given ones bit for bit, every tap
# within the float32 bound of the first backend's (torch's) tap, in execution order, and the
# inference fast path built from the same weights within that bound of the model's own taps (one
# full-size build per variant, sharing the weights, input and taps; tests/test_inference.py checks
# the fast path's mechanics on small specs).
@pytest.mark.slow
@pytest.mark.parametrize("name, backend", [(n, b) for n in BUILT_PRESETS for b in BACKENDS])
def test_preset_matches_oracle_at_odd_size(name, backend):
    model, x, taps = _assert_matches_oracle(name, backend, ODD_HW, batch=2)
    spec, weights, _, _ = preset_oracle(name, ODD_HW, 2)
    plan = rm.make_plan(spec)
    expected = rm.summary(spec, input_shape=x.shape).output_shapes
    (output_name,) = plan.output_names()
    assert list(taps) == list(plan.tap_names)
    assert {k: v.shape for k, v in taps.items()} == {k: expected[k] for k in taps}
    out = rm.forward(model, x)
    assert out.shape == expected[output_name] and np.isfinite(out).all()
    np.testing.assert_array_equal(taps[output_name], out)
    exported = rm.export_weights(model)
    assert list(exported) == list(plan.params)
    assert_weights_equal(exported, weights)
    if backend == BACKENDS[0]:
        _FIRST_TAPS.clear()
        _FIRST_TAPS[name] = taps
    else:
        first = _first_backend_taps(name)
        for tap in plan.tap_names:  # execution order: the first tap that diverges is the one reported
            assert_close(taps[tap], first[tap], f"{name}: {backend} vs {BACKENDS[0]}, tap {tap}")
    del model  # one full-size model at a time
    _assert_inference_model_matches(spec, backend, weights, x, taps, out)


def _assert_inference_model_matches(spec: rm.ResNetSpec, backend: str, weights, x: np.ndarray, taps: dict,
                                    out) -> None:
    """``rm.build(..., inference=True)`` (BatchNorms folded; each backend's fast route) computes the
    ordinary model's taps and outputs, C-contiguous, and holds the folded plan and weights."""
    fast = rm.build(spec, backend, weights=weights, inference=True)
    actual = rm.forward(fast, x, taps=True)
    assert list(actual) == list(taps)
    for tap in taps:
        assert_close(actual[tap], taps[tap], f"{spec.name} {backend} fast path, tap {tap}")
        assert actual[tap].flags.c_contiguous, f"{tap}: a backend's memory format leaked out"
    # without taps a backend may take another route (Paddle: its inference engine): same function
    actual_out = rm.forward(fast, x)
    assert type(actual_out) is type(out)
    for i, (a, e) in enumerate(zip(*[o if isinstance(o, list) else [o] for o in (actual_out, out)], strict=True)):
        assert_close(a, e, f"{spec.name} {backend} fast path, output {i} without taps")
    folded_plan, folded = fold_batchnorm(rm.make_plan(spec), weights)
    assert rm.plan_of(fast) == folded_plan
    exported = rm.export_weights(fast)
    assert list(exported) == list(folded)
    assert all(np.array_equal(exported[k], folded[k]) for k in folded), "inference model holds other weights"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet50_matches_oracle_at_224(backend):
    """The standard size too: at 224 the stride-2 convs and pools see even sizes (the case
    where 'SAME'-style padding differs from symmetric padding)."""
    _assert_matches_oracle("resnet50", backend, (224, 224))


# --------------------------------------------------------------------------- random specs


def _residual(draw) -> dict:
    kind = draw(st.sampled_from(RESIDUAL_KINDS))
    block = rm.BlockSpec(kind=kind)
    if kind == "bottleneck":
        block = rm.BlockSpec(kind=kind, groups=draw(st.sampled_from([1, 2, 4])),
                             width_per_group=draw(st.sampled_from([32, 64])),
                             stride_on=draw(st.sampled_from(["3x3", "1x1"])),
                             expansion=draw(st.sampled_from([None, 2])))
    if draw(st.booleans()):
        block = rm.BlockSpec(**{**block.__dict__, "se_ratio": draw(st.sampled_from([0.25, 0.5]))})
    stages = tuple(rm.StageSpec(depth=draw(st.integers(1, 3)), channels=draw(st.integers(4, 16)),
                                stride=draw(st.sampled_from([1, 2])), dilate=draw(st.booleans()))
                   for _ in range(draw(st.integers(1, 3))))
    deep = draw(st.booleans())
    stem = rm.StemSpec(widths=tuple(draw(st.integers(4, 12)) for _ in range(3 if deep else 1)),
                       kernel_size=draw(st.sampled_from([3, 5] if deep else [3, 5, 7])),
                       stride=draw(st.sampled_from([1, 2])), pool=draw(st.booleans()))
    shortcut = rm.ShortcutSpec(kind=draw(st.sampled_from(SHORTCUT_KINDS)), when=draw(st.sampled_from(SHORTCUT_WHEN)))
    return dict(block=block, stages=stages, stem=stem, shortcut=shortcut)


def _dense(draw) -> dict:
    """A DenseNet: bottleneck or not (d2l), any compression, transitions with and without a pool,
    with or without dropout (identity in eval, where parity is checked)."""
    block = rm.BlockSpec(kind="dense", growth_rate=draw(st.integers(2, 8)), bn_size=draw(st.sampled_from([0, 1, 4])),
                         compression=draw(st.sampled_from([0.5, 0.7, 1.0])), drop_rate=draw(st.sampled_from([None, 0.3])))
    stages = tuple(rm.StageSpec(depth=draw(st.integers(1, 3)), stride=1 if i == 0 else draw(st.sampled_from([1, 2])))
                   for i in range(draw(st.integers(1, 3))))
    stem = rm.StemSpec(widths=(draw(st.integers(4, 12)),), kernel_size=draw(st.sampled_from([3, 5, 7])),
                       stride=draw(st.sampled_from([1, 2])), pool=draw(st.booleans()))
    return dict(block=block, stages=stages, stem=stem)


def _ghost(draw) -> dict:
    """A GhostNet: odd widths (the ghost modules slice), strides, SE or not, per block."""
    settings = st.builds(rm.BlockSettings, channels=st.integers(3, 12), mid_channels=st.integers(3, 16),
                         kernel_size=st.sampled_from([3, 5]), stride=st.sampled_from([1, 2]),
                         se_ratio=st.sampled_from([0.0, 0.25]))
    stages = tuple(rm.StageSpec(blocks=tuple(draw(st.lists(settings, min_size=1, max_size=2))))
                   for _ in range(draw(st.integers(1, 3))))
    stem = rm.StemSpec(widths=(draw(st.integers(4, 12)),), kernel_size=3, stride=draw(st.sampled_from([1, 2])),
                       pool=draw(st.booleans()))
    return dict(block=rm.BlockSpec(kind="ghost"), stages=stages, stem=stem)


FAMILIES = {"residual": _residual, "dense": _dense, "ghost": _ghost}


@st.composite
def specs(draw, family: str = "residual") -> tuple[rm.ResNetSpec, tuple[int, int, int, int]]:
    """A random valid spec of a family (FAMILIES) with small channels, and an input shape (odd sizes included)."""
    family = FAMILIES[family](draw)
    n_stages = len(family["stages"])
    head_kind = draw(st.sampled_from(["head", "none", "out_indices"]))
    head = rm.HeadSpec(num_classes=draw(st.integers(1, 10)), dropout=draw(st.sampled_from([0.0, 0.5])),
                       hidden_channels=draw(st.sampled_from([None, 6]))) if head_kind == "head" else None
    out_indices = None
    if head_kind == "out_indices":
        out_indices = tuple(sorted(draw(st.sets(st.integers(0, n_stages - 1), min_size=1))))
    spec = rm.ResNetSpec(
        name="drawn", head=head, in_channels=draw(st.integers(1, 3)), conv_bias=draw(st.booleans()),
        out_indices=out_indices, norm=rm.NormSpec(eps=draw(st.sampled_from([1e-5, 1e-3]))), **family)
    shape = (draw(st.integers(1, 2)), spec.in_channels, draw(st.integers(5, 40)), draw(st.integers(5, 40)))
    try:
        rm.make_plan(spec).check_input_shape(shape)
    except ValueError:  # a DenseNet's 2x2 transition pools need some size; 40 fits every drawn spec
        shape = (*shape[:2], 40, 40)
    return spec, shape


def _agree_with_oracle(spec: rm.ResNetSpec, shape, seed: int) -> None:
    plan = rm.make_plan(spec)
    weights = random_weights(plan, seed=seed)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    models = {backend: rm.build(spec, backend=backend, weights=weights) for backend in BACKENDS}
    report = check_models(models, x, weights=weights)
    assert report.ok, f"\nspec: {spec.to_json()}\ninput: {shape}\n{report}"


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=specs("residual"), seed=st.integers(0, 2 ** 16))
def test_random_specs_agree_with_oracle_on_every_backend(drawn, seed):
    _agree_with_oracle(*drawn, seed)


# DenseNet and GhostNet specs: drawn apart, so that each family gets its share of examples
@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(dense=specs("dense"), ghost=specs("ghost"), seed=st.integers(0, 2 ** 16))
def test_random_dense_and_ghost_specs_agree_with_oracle_on_every_backend(dense, ghost, seed):
    _agree_with_oracle(*dense, seed)
    _agree_with_oracle(*ghost, seed)
