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
from resnet_multi.inference import fold_batchnorm, kept_norms
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
    del model, exported  # one full-size copy of the weights at a time, besides the shared ones
    if backend == BACKENDS[0]:
        _FIRST_TAPS.clear()
        _FIRST_TAPS[name] = taps
    else:
        first = _first_backend_taps(name)
        for tap in plan.tap_names:  # execution order: the first tap that diverges is the one reported
            assert_close(taps[tap], first[tap], f"{name}: {backend} vs {BACKENDS[0]}, tap {tap}")
    if backend == BACKENDS[-1]:  # the preset's last test: its first taps are not needed again
        _FIRST_TAPS.clear()
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
    exported, fast_plan, fast_kept = rm.export_weights(fast), rm.plan_of(fast), fast.kept_norms
    del fast  # before the folding below makes another full-size copy
    folded_plan, folded = fold_batchnorm(rm.make_plan(spec), weights)
    assert fast_plan == folded_plan
    assert fast_kept == kept_norms(folded_plan)  # the norms it could not fold, named
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


# The new families' first choices (sampled_from's first value) are what the simplest example takes:
# derandomized hypothesis starts there, so with three examples a family the first one still has BN, a
# pool, a layer scale, a global filter whose weight is resized, and a 7x7 stage.


def _vgg(draw) -> dict:
    """A VGG: BN or not, one or two stem convs, stages of one or two convs after a 2x2 pool or none
    (stride 1), a head of two hidden linears (dropout identity in eval)."""
    stages = tuple(rm.StageSpec(depth=draw(st.integers(1, 2)), channels=draw(st.integers(3, 10)),
                                stride=draw(st.sampled_from([2, 1]))) for _ in range(draw(st.integers(1, 3))))
    stem = rm.StemSpec(widths=tuple(draw(st.integers(3, 8)) for _ in range(draw(st.integers(1, 2)))),
                       kernel_size=3, stride=1, pool=False)
    return {"block": rm.BlockSpec(kind="vgg", batch_norm=draw(st.sampled_from([True, False]))), "stages": stages,
            "stem": stem, "conv_bias": True, "head_fields": {"hidden_channels": [6, 9]}, "odd_sizes": True}


def _patchify(draw, widths: list[int], **per_stage) -> dict:
    """ConvNeXt's and HorNet's layout: a k x k / k patchify stem as wide as the first stage, then a
    2x2/2 downsample before every other stage; ``per_stage``: further StageSpec fields, per stage."""
    stages = tuple(rm.StageSpec(depth=draw(st.integers(1, 2)), channels=width, stride=1 if i == 0 else 2,
                                **{key: values[i] for key, values in per_stage.items()})
                   for i, width in enumerate(widths))
    k = draw(st.sampled_from([4, 2]))
    return {"stages": stages, "stem": rm.StemSpec(widths=(widths[0],), kernel_size=k, stride=k, pool=False),
            "conv_bias": False, "head_fields": {"dropout": [0.0], "hidden_channels": [None]}, "odd_sizes": True}


def _block_settings(draw, kind: str) -> rm.BlockSpec:
    """Layer scale or none, stochastic depth or none (identity in eval)."""
    return rm.BlockSpec(kind=kind, layer_scale=draw(st.sampled_from([1e-6, 0.0])),
                        drop_path_rate=draw(st.sampled_from([0.3, 0.0])))


def _convnext(draw) -> dict:
    """A ConvNeXt: one to three stages of tiny widths."""
    widths = [draw(st.integers(3, 12)) for _ in range(draw(st.integers(1, 3)))]
    return {"block": _block_settings(draw, "convnext"), **_patchify(draw, widths)}


def _hornet(draw) -> dict:
    """A HorNet: two or three stages, each with a gnconv of order 1 to 3 and a 7x7 conv or a global
    filter, whose weight mostly needs resizing to the stage's spectrum; widths the gnconv split (and
    the filter's halves) allow."""
    orders, filters, widths = [], [], []
    for i in range(draw(st.integers(2, 3))):
        orders.append(draw(st.sampled_from([2, 1, 3])))
        filters.append(draw(st.sampled_from([(3, 2), None, (2, 1)] if i % 2 == 0 else [None, (3, 2), (2, 1)])))
        widths.append(2 ** (orders[-1] - (filters[-1] is None)) * draw(st.integers(1, 3)))
    return {"block": _block_settings(draw, "hornet"), **_patchify(draw, widths, order=orders, global_filter=filters)}


FAMILIES = {"residual": _residual, "dense": _dense, "ghost": _ghost, "vgg": _vgg, "convnext": _convnext,
            "hornet": _hornet}


@st.composite
def specs(draw, family: str = "residual") -> tuple[rm.ResNetSpec, tuple[int, int, int, int]]:
    """A random valid spec of a family (FAMILIES) with small channels, and an input shape (odd sizes included).
    A family may fix ``conv_bias``, restrict the head's ``head_fields`` (dropout, hidden_channels) to the
    values it reads, and ask for ``odd_sizes`` only."""
    family = FAMILIES[family](draw)
    conv_bias = family.pop("conv_bias", None)
    head_fields = {"dropout": [0.0, 0.5], "hidden_channels": [None, 6], **family.pop("head_fields", {})}
    odd = family.pop("odd_sizes", False)
    n_stages = len(family["stages"])
    head_kind = draw(st.sampled_from(["head", "none", "out_indices"]))
    head = rm.HeadSpec(num_classes=draw(st.integers(1, 10)), dropout=draw(st.sampled_from(head_fields["dropout"])),
                       hidden_channels=draw(st.sampled_from(head_fields["hidden_channels"]))
                       ) if head_kind == "head" else None
    out_indices = None
    if head_kind == "out_indices":
        out_indices = tuple(sorted(draw(st.sets(st.integers(0, n_stages - 1), min_size=1))))
    spec = rm.ResNetSpec(
        name="drawn", head=head, in_channels=draw(st.integers(1, 3)),
        conv_bias=draw(st.booleans() if conv_bias is None else st.just(conv_bias)),
        out_indices=out_indices, norm=rm.NormSpec(eps=draw(st.sampled_from([1e-5, 1e-3]))), **family)
    size = st.integers(4, 20).map(lambda n: 2 * n + 1) if odd else st.integers(5, 40)  # odd: 9 .. 41
    shape = (draw(st.integers(1, 2)), spec.in_channels, draw(size), draw(size))
    try:
        rm.make_plan(spec).check_input_shape(shape)
    except ValueError:  # a DenseNet's 2x2 transition pools need some size; 40 fits every drawn spec
        shape = (*shape[:2], *((41, 43) if odd else (40, 40)))
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


# VGG, ConvNeXt and HorNet: a few examples each (tiny widths, odd sizes), each family its own
@pytest.mark.parametrize("family", ["vgg", "convnext", "hornet"])
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2 ** 16))
def test_random_vgg_convnext_and_hornet_specs_agree_with_oracle_on_every_backend(family, data, seed):
    _agree_with_oracle(*data.draw(specs(family), label=family), seed)
