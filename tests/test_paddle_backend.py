"""Paddle backend against its real peers: paddle.vision ResNets and PaddleOCR's ResNet45 load their
own state_dicts directly and agree exactly; torch and paddle agree on every preset, every tap;
the docs/NUMERICS.md translations (BN momentum, biased running var) and the .pdparams files hold."""

from __future__ import annotations

import pickle

import numpy as np
import paddle
import pytest
import torch

import resnet_multi as rm
from conftest import BUILT_PRESETS, assert_close, odd_input
from resnet_multi import plan as P
from resnet_multi.backends import paddle as pb
from resnet_multi.backends.paddle import ops as paddle_ops
from resnet_multi.backends.torch import ops as torch_ops
from resnet_multi.registry import native_suffixes
from resnet_multi.weights import random_weights

PADDLE_VISION_PRESETS = [n for n in BUILT_PRESETS if hasattr(paddle.vision.models, n)]


def _fill_random(layer: paddle.nn.Layer, seed: int = 0) -> None:
    """Random values for every entry of a peer's state_dict, chosen from Paddle's own names and
    layouts (independent of the backend's mapping): random BN statistics, scales and biases, so
    a swapped mean/var or a missed transpose cannot pass."""
    rng = np.random.default_rng(seed)
    for name, param in layer.state_dict().items():
        shape = tuple(param.shape)
        if name.endswith("._variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("._mean"):
            value = rng.uniform(-0.5, 0.5, shape)
        elif len(shape) == 4:  # conv OIHW: fan-in scaling keeps activations O(1) through deep nets
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif len(shape) == 2:  # Linear, stored (in, out)
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif name.endswith(".weight"):  # BN scale
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.uniform(-0.5, 0.5, shape)
        param.set_value(value.astype(np.float32))


def _peer_output(peer: paddle.nn.Layer, x: np.ndarray) -> np.ndarray:
    peer.eval()
    with paddle.no_grad():
        return peer(paddle.to_tensor(x)).numpy()


def _load_and_compare(peer: paddle.nn.Layer, spec: rm.ResNetSpec, x: np.ndarray, tmp_path) -> None:
    """The peer's state_dict loads into rm.build(spec, "paddle") with every key matched, and the two
    give identical outputs; the same via a paddle.save'd file read by load_native."""
    expected = _peer_output(peer, x)
    model = rm.build(spec, backend="paddle")
    missing, unexpected = model.set_state_dict(peer.state_dict())
    assert (missing, unexpected) == ([], []), f"missing {missing}, unexpected {unexpected}"
    assert list(model.state_dict()) == list(peer.state_dict())  # same names, same order
    # same layers, same kernels: identical, not merely close
    np.testing.assert_array_equal(rm.forward(model, x), expected)

    path = tmp_path / "peer.pdparams"
    paddle.save(peer.state_dict(), str(path))
    rm.import_weights(model, {k: np.zeros_like(v) for k, v in rm.export_weights(model).items()})
    rm.import_weights(model, pb.load_native(path))  # strict: exactly the plan's canonical names
    np.testing.assert_array_equal(rm.forward(model, x), expected)


@pytest.mark.parametrize("name", PADDLE_VISION_PRESETS)
def test_paddle_vision_state_dict_loads_directly_and_matches(name, tmp_path):
    # resnet18/34/50/101/152, wide_resnet50_2, resnext50_32x4d, densenet121/161/169/201 (PaddleClas names)
    assert len(PADDLE_VISION_PRESETS) == 11
    with paddle.LazyGuard():  # no time spent on Paddle's init: _fill_random sets every entry
        peer = getattr(paddle.vision.models, name)()
    _fill_random(peer)
    spec = rm.get_spec(name)
    _load_and_compare(peer, spec, odd_input(spec, batch=2), tmp_path)


# --------------------------------------------------------------------------- PaddleOCR ResNet45


class _OcrBlock(paddle.nn.Layer):
    """PaddleOCR rec_resnet_45.py's BasicBlock, rebuilt from its structure: 1x1 conv (stride 1) ->
    BN -> ReLU -> 3x3 conv (the block's stride, padding 1) -> BN, add, ReLU; the projection is
    `downsample` = Sequential(1x1 conv with the stride, BN)."""

    def __init__(self, in_channels, channels, stride, project):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(in_channels, channels, 1, stride=1, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(channels)
        self.conv2 = paddle.nn.Conv2D(channels, channels, 3, stride=stride, padding=1, bias_attr=False)
        self.bn2 = paddle.nn.BatchNorm2D(channels)
        self.downsample = (paddle.nn.Sequential(paddle.nn.Conv2D(in_channels, channels, 1, stride=stride,
                                                                 bias_attr=False),
                                                paddle.nn.BatchNorm2D(channels)) if project else None)

    def forward(self, x):
        out = self.bn2(self.conv2(paddle.nn.functional.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return paddle.nn.functional.relu(out + residual)


class _OcrResNet45(paddle.nn.Layer):
    """PaddleOCR's ResNet45(in_channels, layers, strides): 3x3/1 conv to 32 + BN + ReLU, then
    layer1..layer5 of 32/64/128/256/512 planes; a projection where the stride or width changes."""

    def __init__(self, in_channels=3, layers=(3, 4, 6, 6, 3), strides=(2, 1, 2, 1, 1)):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(in_channels, 32, 3, stride=1, padding=1, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(32)
        inplanes = 32
        for i, (depth, planes, stride) in enumerate(zip(layers, (32, 64, 128, 256, 512), strides)):
            project = stride != 1 or inplanes != planes
            blocks = [_OcrBlock(inplanes, planes, stride, project)]
            blocks += [_OcrBlock(planes, planes, 1, False) for _ in range(depth - 1)]
            self.add_sublayer(f"layer{i + 1}", paddle.nn.Sequential(*blocks))
            inplanes = planes

    def forward(self, x):
        x = paddle.nn.functional.relu(self.bn1(self.conv1(x)))
        for i in range(1, 6):
            x = getattr(self, f"layer{i}")(x)
        return x


@pytest.mark.parametrize("in_channels, layers, strides", [
    (3, (3, 4, 6, 6, 3), (2, 1, 2, 1, 1)),  # the preset, as PaddleOCR's defaults
    (1, (1, 2, 1, 1, 2), (1, 2, 2, 1, 2)),  # its constructor arguments changed: layer1 needs no projection
])
def test_paddleocr_resnet45_state_dict_loads_directly_and_matches(in_channels, layers, strides, tmp_path):
    with paddle.LazyGuard():
        peer = _OcrResNet45(in_channels, layers, strides)
    _fill_random(peer, seed=1)
    preset = rm.get_spec("resnet45")
    stages = tuple(rm.StageSpec(d, s.channels, st) for d, s, st in zip(layers, preset.stages, strides))
    spec = preset.replace(in_channels=in_channels, stages=stages)
    _load_and_compare(peer, spec, odd_input(spec), tmp_path)


# --------------------------------------------------------------------------- torch <-> paddle parity

# Spec forms no preset uses, at small widths (their size is not the point).
_SMALL = rm.get_spec("resnet50").replace(stages=tuple(rm.StageSpec(d, 8, s) for d, s in ((2, 1), (1, 2), (2, 2))))
EXTRA_FORMS = {
    "se_dilation_out_indices": _SMALL.replace(
        name="se_dilation_out_indices", block=rm.BlockSpec(kind="bottleneck", se_ratio=0.25),
        stages=(rm.StageSpec(2, 8, 1), rm.StageSpec(1, 8, 2), rm.StageSpec(2, 8, 2, dilate=True)),
        head=None, out_indices=(0, 2)),
    "v1_always_dropout_gray": _SMALL.replace(
        name="v1_always_dropout_gray", block=rm.BlockSpec(kind="bottleneck", stride_on="1x1", groups=2,
                                                          width_per_group=32),
        shortcut=rm.ShortcutSpec(kind="conv_bn", when="always"), head=rm.HeadSpec(num_classes=7, dropout=0.5),
        in_channels=1, norm=rm.NormSpec(eps=1.001e-3, momentum=0.01)),
    "deep_stem_avgpool_bias_basic": _SMALL.replace(
        name="deep_stem_avgpool_bias_basic", block=rm.BlockSpec(kind="basic"), conv_bias=True,
        stem=rm.StemSpec(widths=(8, 8, 16), kernel_size=3, stride=2, pool=True),
        shortcut=rm.ShortcutSpec(kind="avgpool_conv_bn"), head=None),
}


# The built presets at full size are compared with torch tap by tap in tests/test_parity_matrix.py;
# here the forms no preset has.
@pytest.mark.parametrize("name", list(EXTRA_FORMS))
def test_torch_and_paddle_agree_on_every_tap(name):
    spec = EXTRA_FORMS[name]
    plan = rm.make_plan(spec)
    weights = random_weights(plan, seed=0)
    x = odd_input(spec)
    expected = rm.forward(rm.build(spec, "torch", weights=weights), x, taps=True)
    model = rm.build(spec, "paddle", weights=weights)
    actual = rm.forward(model, x, taps=True)
    assert list(actual) == list(plan.tap_names)
    for tap in plan.tap_names:  # in execution order: the first failure is the first divergence
        assert_close(actual[tap], expected[tap], f"{name} tap {tap}")
    outputs = rm.forward(model, x)
    for tap, out in zip(plan.output_names(), outputs if isinstance(outputs, list) else [outputs], strict=True):
        np.testing.assert_array_equal(out, actual[tap])


def test_state_dict_names_are_canonical_with_paddles_bn_names():
    spec = EXTRA_FORMS["deep_stem_avgpool_bias_basic"]
    plan = rm.make_plan(spec)
    model = rm.build(spec, "paddle")
    rules = {"bn_mean": ("running_mean", "_mean"), "bn_var": ("running_var", "_variance")}
    expected = []
    for name, info in plan.params.items():
        old, new = rules.get(info.role, ("", ""))
        expected.append(name[: -len(old)] + new if old else name)
    assert list(model.state_dict()) == expected


def test_bn_momentum_eps_and_pool_flags_reach_paddle(monkeypatch):
    spec = EXTRA_FORMS["deep_stem_avgpool_bias_basic"].replace(norm=rm.NormSpec(eps=1.001e-5, momentum=0.01))
    model = rm.build(spec, "paddle")
    assert (model.bn1._momentum, model.bn1._epsilon) == (1.0 - 0.01, 1.001e-5)
    # the shortcut pool is a function of the walk: its flags reach F.avg_pool2d
    calls = []
    real = paddle_ops.F.avg_pool2d
    monkeypatch.setattr(paddle_ops.F, "avg_pool2d", lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
    model(paddle.to_tensor(odd_input(spec)))
    assert calls and all((c["ceil_mode"], c["exclusive"]) == (True, True) for c in calls)  # count_include_pad=False


@pytest.mark.parametrize("op", [
    *[P.AvgPool(3, 2, 1, ceil_mode=ceil, count_include_pad=count) for ceil in (False, True) for count in (False, True)],
    P.AvgPool(2, 2, 0, ceil_mode=True, count_include_pad=False),  # ResNet-D's shortcut pool
    P.MaxPool(3, 2, 1),
], ids=repr)
def test_pool_layers_match_torch(op):
    """Paddle's exclusive is not count_include_pad, and max-pool padding is -inf. Only visible with
    padding (the presets' avg-pool has none, where both flags agree) and negative inputs."""
    x = np.random.default_rng(0).standard_normal((2, 3, 33, 47)).astype(np.float32) - 2.0
    node = P.Node(op, (P.INPUT,), "out")  # pools are functions of the walk, not modules
    with paddle.no_grad():
        actual = paddle_ops.OPS[type(op)].apply(node, paddle.to_tensor(x)).numpy()
    with torch.no_grad():
        expected = torch_ops.OPS[type(op)].apply(node, torch.from_numpy(x)).numpy()
    assert actual.shape[2:] == (op.out_size(33), op.out_size(47))
    assert_close(actual, expected, repr(op))


def _global_pool_function(x):
    node = P.Node(P.GlobalAvgPool(flatten=True), (P.INPUT,), "out")  # paddle.vision's head op
    return paddle_ops.OPS[P.GlobalAvgPool].apply(node, x)


@pytest.mark.parametrize("make_pool, size", [
    (lambda: paddle_ops.OPS[P.GlobalAvgPool].module(P.GlobalAvgPool(flatten=False, name="avgpool"), ()), 1),
    (lambda: _global_pool_function, 1),
    (lambda: paddle_ops.OPS[P.AdaptiveAvgPool].module(P.AdaptiveAvgPool(7), ()), 7),  # VGG's avgpool
], ids=["global_layer", "global_function", "adaptive_7"])
def test_float64_average_pools_have_exact_gradients(make_pool, size):
    """d(sum of the pooled map)/dx is 1/(window area) in float64, as in torch. Paddle's pooling
    kernels compute it from a float32 1/area, 2^-25 relative off for an area of 3 or 6: ConvNeXt's
    3x2 last map at 97x75 failed float64 training parity by 3e-8 until the backend averaged float64
    maps with paddle.mean."""
    x = np.random.default_rng(0).standard_normal((2, 3, 21, 3))  # 7x7 windows of 3x1 and 3x2
    pool = make_pool()
    xp = paddle.to_tensor(x, stop_gradient=False)
    pooled = pool(xp)
    pooled.sum().backward()
    xt = torch.from_numpy(x).requires_grad_()
    expected = torch.nn.functional.adaptive_avg_pool2d(xt, size)
    expected.sum().backward()
    # the forward: means of 3-63 float64 values, summed in each framework's order (an ulp or two)
    assert_close(pooled.numpy().reshape(expected.shape), expected.detach().numpy(), "forward", rtol=1e-15, atol=0)
    np.testing.assert_array_equal(xp.grad.numpy(), xt.grad.numpy())


def test_train_mode_running_stats_match_torch():
    """One train-mode step updates BN running stats as torch does: Paddle's momentum weighs the old
    value (1 - m), and for the spec's default ``norm.running_var: unbiased`` the backend's BatchNorm
    stores torch's unbiased variance where Paddle's own stores the biased one (both estimators
    against the exact formula: tests/test_native_idioms.py)."""
    momentum = 0.3  # not the default, and 1 - m != m: an untranslated momentum fails
    spec = EXTRA_FORMS["deep_stem_avgpool_bias_basic"].replace(norm=rm.NormSpec(eps=1e-3, momentum=momentum))
    plan = rm.make_plan(spec)
    weights = random_weights(plan, seed=4)
    x = odd_input(spec, batch=2)
    tmodel, pmodel = rm.build(spec, "torch", weights=weights), rm.build(spec, "paddle", weights=weights)

    counts = {}  # BN name -> values per channel in its batch (n of the n/(n-1))
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: counts.__setitem__(name, inp[0].numel()
                                                                                       // inp[0].shape[1]))
             for name, m in tmodel.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    tmodel.train()
    with torch.no_grad():
        tmodel(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    pmodel.train()
    with paddle.no_grad():
        pmodel(paddle.to_tensor(x))
    pmodel.eval()

    after_torch, after_paddle = rm.export_weights(tmodel), rm.export_weights(pmodel)
    bns = [name[: -len(".running_var")] for name, info in plan.params.items() if info.role == "bn_var"]
    assert set(bns) == set(counts)
    for bn in bns:
        mean, var = f"{bn}.running_mean", f"{bn}.running_var"
        assert_close(after_paddle[mean], after_torch[mean], mean)
        assert_close(after_paddle[var], after_torch[var], f"{var} (n={counts[bn]})")
        assert not np.allclose(after_paddle[var], weights[var]), f"{var} was not updated"


def test_to_static_gives_the_same_outputs():
    """forward is plain Python over static lists, so paddle.jit.to_static converts it whole."""
    spec = EXTRA_FORMS["se_dilation_out_indices"]
    model = rm.build(spec, "paddle", weights=random_weights(rm.make_plan(spec), seed=5))
    x = odd_input(spec)
    expected = rm.forward(model, x)
    static = paddle.jit.to_static(model, full_graph=True)
    with paddle.no_grad():
        outputs = static(paddle.to_tensor(x))
    for out, exp in zip(outputs, expected, strict=True):
        assert_close(out.numpy(), exp, "to_static")


# --------------------------------------------------------------------------- .pdparams files


def test_native_round_trip_is_bit_exact_and_paddle_loads_it(tmp_path):
    assert pb.SUFFIXES == (".pdparams",) and native_suffixes()[".pdparams"] == "paddle"
    spec = rm.get_spec("resnet18")
    weights = random_weights(rm.make_plan(spec), seed=2)
    path = tmp_path / "r18.pdparams"
    pb.save_native(path, weights)
    loaded = pb.load_native(path)
    assert list(loaded) == list(weights)
    for name in weights:
        assert loaded[name].dtype == weights[name].dtype, name
        np.testing.assert_array_equal(loaded[name], weights[name], err_msg=name)
    # what Paddle's own loader makes of it: paddle.vision's names and layout, every key matched
    with paddle.LazyGuard():
        peer = paddle.vision.models.resnet18()
    missing, unexpected = peer.set_state_dict(paddle.load(str(path)))
    assert (missing, unexpected) == ([], [])
    np.testing.assert_array_equal(peer.fc.weight.numpy(), weights["fc.weight"].T)
    np.testing.assert_array_equal(peer.bn1._variance.numpy(), weights["bn1.running_var"])


@pytest.mark.parametrize("protocol", [2, 3, 4])  # 2: older Paddle releases' checkpoints
def test_load_native_rules_rename_transpose_and_keep_the_rest(tmp_path, protocol):
    rng = np.random.default_rng(0)
    raw = {
        "bn1._mean": rng.standard_normal(4).astype(np.float32),
        "bn1._variance": rng.standard_normal(4).astype(np.float32),
        "fc.weight": rng.standard_normal((5, 3)).astype(np.float32),  # (in, out)
        "conv1.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "backbone.head.bias": rng.standard_normal(3).astype(np.float32),  # not ours: kept, reported later
    }
    path = tmp_path / "raw.pdparams"
    paddle.save({k: paddle.to_tensor(v) for k, v in raw.items()}, str(path), protocol=protocol)
    loaded = pb.load_native(path)
    assert list(loaded) == ["bn1.running_mean", "bn1.running_var", "fc.weight", "conv1.weight",
                            "backbone.head.bias"]
    np.testing.assert_array_equal(loaded["bn1.running_var"], raw["bn1._variance"])
    np.testing.assert_array_equal(loaded["fc.weight"], raw["fc.weight"].T)
    np.testing.assert_array_equal(loaded["conv1.weight"], raw["conv1.weight"])


def _bad_files(tmp_path):
    good = tmp_path / "good.pdparams"
    pb.save_native(good, random_weights(rm.make_plan(rm.get_spec("resnet18")), seed=0))
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\x00not a pickle at all" * 10,
        "not_a_dict": pickle.dumps([1, 2, 3], protocol=4),
        "code": pickle.dumps({"x": _Evil()}, protocol=4),
    }
    for name, content in files.items():
        (tmp_path / f"{name}.pdparams").write_bytes(content)
    return list(files)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_corrupt_files_raise_value_error_naming_the_file(tmp_path, capsys):
    for name in _bad_files(tmp_path):
        path = tmp_path / f"{name}.pdparams"
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.")):
            pb.load_native(path)
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="missing.pdparams"):
        pb.load_native(tmp_path / "missing.pdparams")
