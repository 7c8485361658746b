"""The numpy oracle: each primitive against PyTorch's (in float64, so any difference is a
convention, not rounding), then whole plans: taps, shapes, and no framework imported."""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import resnet_multi as rm
from resnet_multi import reference as R
from resnet_multi.weights import random_weights

EXACT = 1e-12  # float64 vs float64: only summation order differs


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize(
    "c_in, c_out, k, stride, padding, dilation, groups, hw",
    [
        (3, 8, 7, 2, 3, 1, 1, (33, 47)),   # torchvision stem, odd non-square
        (8, 8, 3, 2, 1, 1, 1, (9, 12)),    # stride 2 on an even width
        (8, 12, 3, 1, 2, 2, 4, (7, 10)),   # dilation with its padding, groups
        (8, 8, 3, 2, 1, 1, 8, (6, 5)),     # depthwise
        (6, 4, 1, 2, 0, 1, 1, (5, 8)),     # 1x1 projection with stride
        (2, 3, 5, 3, 1, 1, 1, (11, 4)),    # padding smaller than 'same', stride 3
    ])
def test_conv2d_matches_torch(c_in, c_out, k, stride, padding, dilation, groups, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c_in, *hw))
    w = rng.standard_normal((c_out, c_in // groups, k, k))  # random: not symmetric in H and W
    b = rng.standard_normal(c_out)
    ours = R.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    theirs = F.conv2d(_t(x), _t(w), _t(b), stride=stride, padding=padding, dilation=dilation, groups=groups).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=EXACT * np.abs(theirs).max())


def test_conv2d_asymmetric_padding_is_explicit():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    ours = R.conv2d(x, w, stride=2, padding=((0, 1), (0, 1)))      # TF 'SAME' at stride 2 on an even size
    theirs = F.conv2d(F.pad(_t(x), (0, 1, 0, 1)), _t(w), stride=2).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=EXACT * np.abs(theirs).max())
    assert not np.allclose(ours, R.conv2d(x, w, stride=2, padding=1))  # and it is not the symmetric one


def test_avg_pool2d_matches_torch_for_every_mode():
    """ceil_mode and count_include_pad exactly as PyTorch, at every small size (the partial
    windows of ceil_mode, and padding past the edge, are where ports go wrong)."""
    rng = np.random.default_rng(2)
    checked = 0
    for h, w, (k, s, p), ceil_mode, count_pad in itertools.product(
            range(1, 10), (4, 7), [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 1), (3, 3, 1)], (False, True),
            (False, True)):
        if h + 2 * p < k:
            continue
        x = rng.standard_normal((1, 2, h, w))
        theirs = F.avg_pool2d(_t(x), k, s, p, ceil_mode=ceil_mode, count_include_pad=count_pad).numpy()
        ours = R.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode, count_include_pad=count_pad)
        where = f"h={h} w={w} k={k} s={s} p={p} ceil_mode={ceil_mode} count_include_pad={count_pad}"
        assert ours.shape == theirs.shape, where
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=EXACT, err_msg=where)
        checked += 1
    assert checked > 300


def test_resnet_d_shortcut_pool_by_hand():
    """2x2/2, ceil_mode, padding not counted, on a 3x3 map: the last row and column are
    averaged over 2 and 1 pixels, not 4."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    out = R.avg_pool2d(x, 2, 2, 0, ceil_mode=True, count_include_pad=False)
    np.testing.assert_array_equal(out[0, 0], [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8]])


def test_max_pool2d_pads_with_minus_infinity():
    x = -1.0 - np.arange(2 * 2 * 9 * 12, dtype=np.float64).reshape(2, 2, 9, 12)  # all negative: 0-padding would win
    ours = R.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(ours, F.max_pool2d(_t(x), 3, 2, 1).numpy())
    assert (ours < 0).all()


def test_batch_norm_activations_linear_match_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 5, 7))
    weight, bias, mean = rng.uniform(0.5, 1.5, 16), rng.uniform(-0.5, 0.5, 16), rng.uniform(-0.5, 0.5, 16)
    var = rng.uniform(0.5, 2.0, 16)
    theirs = F.batch_norm(_t(x), _t(mean), _t(var), _t(weight), _t(bias), training=False, eps=1e-3).numpy()
    np.testing.assert_allclose(R.batch_norm(x, weight, bias, mean, var, 1e-3), theirs, rtol=0, atol=EXACT)

    x = 4 * x  # reach both knees of hard_sigmoid (-3 and 3)
    np.testing.assert_allclose(R.sigmoid(x), torch.sigmoid(_t(x)).numpy(), rtol=0, atol=EXACT)
    np.testing.assert_allclose(R.hard_sigmoid(x), F.hardsigmoid(_t(x)).numpy(), rtol=0, atol=EXACT)

    fc_w, fc_b = rng.standard_normal((10, 16)), rng.standard_normal(10)
    pooled = R.global_avg_pool(x)
    theirs = F.linear(F.adaptive_avg_pool2d(_t(x), 1).flatten(1), _t(fc_w), _t(fc_b)).numpy()
    np.testing.assert_allclose(R.linear(pooled, fc_w, fc_b), theirs, rtol=0, atol=EXACT)


def _narrow(spec: rm.ResNetSpec) -> rm.ResNetSpec:
    """The same architecture with 1/4 of the channels: the shapes are the point, not the width."""
    stages = tuple(replace(s, channels=max(1, s.channels // 4)) for s in spec.stages)
    stem = replace(spec.stem, widths=tuple(max(1, w // 4) for w in spec.stem.widths))
    return spec.replace(stages=stages, stem=stem)


@pytest.mark.parametrize("name", ["resnet50d", "resnet45", "d2l_resnet18"])
def test_reference_forward_returns_every_tap_with_the_plan_shapes(name):
    spec = _narrow(rm.get_spec(name))
    plan = rm.make_plan(spec)
    x = np.random.default_rng(4).standard_normal((2, spec.in_channels, 33, 47)).astype(np.float32)
    taps = rm.reference_forward(plan, random_weights(plan), x, taps=True)
    assert list(taps) == list(plan.tap_names)
    assert {k: v.shape for k, v in taps.items()} == plan.shapes(x.shape)
    assert all(v.dtype == np.float64 and np.isfinite(v).all() for v in taps.values())
    outputs = rm.reference_forward(plan, random_weights(plan), x)
    assert list(outputs) == list(plan.output_names())
    np.testing.assert_array_equal(outputs[plan.output_names()[0]], taps[plan.output_names()[0]])


def test_reference_forward_with_out_indices():
    spec = _narrow(rm.get_spec("resnet18")).replace(head=None, out_indices=(1, 3))
    plan = rm.make_plan(spec)
    out = rm.reference_forward(plan, random_weights(plan), np.ones((1, 3, 33, 47), np.float32))
    assert list(out) == ["layer2", "layer4"]


def test_reference_forward_rejects_bad_arguments():
    plan = rm.make_plan(rm.get_spec("resnet18"))
    weights = random_weights(plan)
    with pytest.raises(ValueError, match="3 input channel"):
        rm.reference_forward(plan, weights, np.zeros((1, 1, 33, 47), np.float32))
    del weights["layer2.0.downsample.1.running_var"]
    with pytest.raises(KeyError, match="layer2.0.downsample.1.running_var"):
        rm.reference_forward(plan, weights, np.zeros((1, 3, 33, 47), np.float32))


def test_oracle_and_parity_import_no_framework():
    code = ("import sys, numpy as np, resnet_multi as rm, resnet_multi.reference, resnet_multi.parity\n"
            "plan = rm.make_plan(rm.get_spec('resnet18'))\n"
            "from resnet_multi.weights import random_weights\n"
            "rm.reference_forward(plan, random_weights(plan), np.ones((1, 3, 33, 47), np.float32))\n"
            "print(sorted(m for m in ('torch', 'paddle', 'jax', 'flax') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
