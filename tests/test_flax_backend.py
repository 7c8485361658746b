"""Flax-specific behaviour: parity with torch on every tap of every preset, the numerics rows of
docs/NUMERICS.md that only Flax gets wrong by default (padding, pooling, BN momentum), the
rename/transpose table, msgpack files, eval/train modes and the jit cache.

The cross-backend parity matrix lives in test_parity*.py; this file compares against the torch
backend only because torch is the layout the canonical weights are defined in.
"""

from __future__ import annotations

import dataclasses

import jax
import msgpack
import numpy as np
import pytest
import torch
from flax import nnx, serialization
from torch.nn import functional as F

import resnet_multi as rm
from conftest import assert_close, assert_weights_equal, odd_input
from resnet_multi import plan as P
from resnet_multi.backends import flax as fb
from resnet_multi.backends.flax import io as flax_io
from resnet_multi.backends.flax import ops as flax_ops
from resnet_multi.formats import msgpack_stream
from resnet_multi.weights import random_weights


def _small(spec: rm.ResNetSpec, **changes) -> rm.ResNetSpec:
    """``spec`` with narrow stages (8/16 planes, one block each; the first block of the second
    stage projects with stride 2): every op kind of the preset, a fraction of the cost."""
    stages = (rm.StageSpec(1, 8, 1), rm.StageSpec(2, 16, 2))
    return spec.replace(stages=stages, **changes)


def _flax_and_torch(spec: rm.ResNetSpec, seed: int = 0):
    weights = random_weights(rm.make_plan(spec), seed=seed)
    return rm.build(spec, "flax", weights=weights), rm.build(spec, "torch", weights=weights), weights


def _assert_taps_close(actual: dict, expected: dict, what: str) -> None:
    assert list(actual) == list(expected), what
    for tap in expected:  # execution order: the first tap that diverges is the one reported
        assert_close(actual[tap], expected[tap], f"{what}: tap {tap}")


# --------------------------------------------------------------------------- parity with torch


# Every tap of every built preset against torch's, at the odd size: tests/test_parity_matrix.py
# compares each backend's full-size build with the oracle and with torch's, tap by tap; the eager
# route (jax.disable_jit) against the compiled one: test_jit_forward_matches_eager_and_compiles_once.


def _replace_avg_pools(plan: P.Plan, **changes) -> P.Plan:
    def replaced(node: P.Node) -> P.Node:
        return dataclasses.replace(node, op=dataclasses.replace(node.op, **changes)) if isinstance(node.op, P.AvgPool) \
            else node

    stages = tuple(dataclasses.replace(stage, blocks=tuple(
        dataclasses.replace(block, nodes=tuple(map(replaced, block.nodes))) for block in stage.blocks))
        for stage in plan.stages)
    return dataclasses.replace(plan, stages=stages)


def test_odd_size_parity_would_catch_same_padding_and_counted_pool_padding(monkeypatch):
    """The parity test above can fail: at 33x47 a 'SAME'-padded conv or a ResNet-D shortcut
    pool that counts padding (or floors) is far outside the bound."""
    spec = _small(rm.get_spec("resnet50d"))
    plan = rm.make_plan(spec)
    flax_model, torch_model, weights = _flax_and_torch(spec)
    x = odd_input(spec)
    expected = rm.forward(torch_model, x)
    with jax.disable_jit():
        assert_close(rm.forward(flax_model, x), expected, "the faithful model")

        def error(model) -> float:
            return float(np.abs(rm.forward(model, x) - expected).max() / np.abs(expected).max())

        # Flax's avg_pool (count_include_pad=True) with the ceil_mode overhang padded: every window
        # divided by k*k, so the partial last window of the 9x12 map in layer2's shortcut is too small
        monkeypatch.setattr(flax_ops, "_window_counts", lambda size, out, op: np.full(out, op.kernel_size, np.float32))
        assert error(flax_model) > 1e-3
        monkeypatch.undo()
        # Flax's 'SAME' convs: (0, 1) instead of (1, 1) at stride 2 on the even widths (24, 12)
        monkeypatch.setattr(flax_ops, "_pad2d", lambda padding: "SAME")
        assert error(fb.build(plan, weights)) > 1e-3
        monkeypatch.undo()
        # floor instead of ceil_mode: a 4x6 shortcut against a 5x6 main path cannot even be added
        with pytest.raises((TypeError, ValueError)):
            fb.build(_replace_avg_pools(plan, ceil_mode=False), weights)(np.zeros((1, 33, 47, 3), np.float32))


@pytest.mark.parametrize("size", [(7, 10), (8, 5), (9, 9), (6, 11)])
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 1), (3, 3, 0)])
def test_pools_match_torch(size, kernel, stride, padding):
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    nhwc = jax.numpy.asarray(x.transpose(0, 2, 3, 1))
    t = torch.from_numpy(x)
    counts = set()
    for ceil_mode in (False, True):
        for count_include_pad in (False, True):
            op = P.AvgPool(kernel, stride, padding, ceil_mode, count_include_pad)
            expected = F.avg_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode,
                                    count_include_pad=count_include_pad).numpy()
            actual = np.asarray(flax_ops._avg_pool(nhwc, op)).transpose(0, 3, 1, 2)
            assert_close(actual, expected, repr(op))
            counts.add(actual.tobytes())
    if padding or size[0] % stride or size[1] % stride:
        assert len(counts) > 1, "these sizes must tell the pooling modes apart"
    expected = F.max_pool2d(-t.abs(), kernel, stride, padding).numpy()  # all < 0: zero padding would win
    actual = np.asarray(flax_ops._max_pool(-abs(nhwc), P.MaxPool(kernel, stride, padding))).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(actual, expected)


# --------------------------------------------------------------------------- names, layouts, numerics arguments


def test_state_tree_mirrors_canonical_names_and_layouts():
    spec = _small(rm.get_spec("resnet50d"), block=dataclasses.replace(rm.get_spec("resnet50d").block, se_ratio=0.25))
    plan = rm.make_plan(spec)
    weights = random_weights(plan, seed=3)
    model = rm.build(spec, "flax", weights=weights)
    state = {".".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}
    mapped = {flax_io._canonical_to_flax(name, array)[0]: name for name, array in weights.items()}
    assert set(state) == set(mapped), "the nnx state holds exactly the canonical tensors"
    for path in ("conv1.0.kernel", "conv1.1.scale", "layer2.0.downsample.1.kernel", "layer2.0.downsample.2.mean",
                 "layer1.0.se.fc1.bias", "layer2.1.conv2.kernel", "fc.kernel"):
        assert path in state, path
    np.testing.assert_array_equal(state["conv1.0.kernel"], weights["conv1.0.weight"].transpose(2, 3, 1, 0))  # HWIO
    np.testing.assert_array_equal(state["fc.kernel"], weights["fc.weight"].T)  # (in, out)
    np.testing.assert_array_equal(state["bn1.scale"], weights["bn1.weight"])
    np.testing.assert_array_equal(state["bn1.mean"], weights["bn1.running_mean"])
    np.testing.assert_array_equal(state["bn1.var"], weights["bn1.running_var"])
    assert isinstance(model.layer2, nnx.List) and isinstance(model.layer2[0].downsample, nnx.List)
    assert model.conv1[2] is None and model.layer2[0].downsample[0] is None  # ReLU and pool slots


def test_numerics_arguments_are_explicit():
    spec = rm.get_spec("resnext50_32x4d").replace(norm=rm.NormSpec(eps=1.001e-5, momentum=0.01))
    spec = spec.replace(stages=tuple(dataclasses.replace(s, dilate=i == 3) for i, s in enumerate(spec.stages)))
    model = rm.build(spec, "flax")
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert convs and bns
    for conv in convs:
        assert isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1], conv.padding  # never 'SAME'
        assert conv.use_bias is False
    assert model.conv1.padding == ((3, 3), (3, 3))
    assert model.layer1[0].conv2.feature_group_count == 32
    assert model.layer4[0].conv2.kernel_dilation == (1, 1) and model.layer4[1].conv2.kernel_dilation == (2, 2)
    assert model.layer4[1].conv2.padding == ((2, 2), (2, 2)) and model.layer4[0].conv2.strides == (1, 1)
    for bn in bns:
        assert bn.momentum == pytest.approx(0.99) and bn.epsilon == 1.001e-5 and bn.use_running_average


# --------------------------------------------------------------------------- modes and BatchNorm momentum


def test_train_step_updates_running_stats_like_torch():
    """One train-mode step with momentum 0.3 (asymmetric: swapping m and 1 - m shows).

    Flax's momentum is the weight of the OLD value, so the backend passes 1 - 0.3. Both
    frameworks normalise with the biased batch variance; torch stores the UNBIASED one (n / (n - 1))
    in running_var, Flax's own BatchNorm the biased one, and the backend's BatchNorm follows the
    spec (default unbiased), so both must hold torch's value.
    """
    m = 0.3
    spec = _small(rm.get_spec("resnet18"), norm=rm.NormSpec(momentum=m))
    flax_model, torch_model, weights = _flax_and_torch(spec)
    x = odd_input(spec, batch=3)
    counts = {}
    for name, module in torch_model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(
                lambda mod, args, name=name: counts.__setitem__(name, args[0].shape[0] * args[0].shape[2] * args[0].shape[3]))
    torch_model.train()
    flax_model.train()
    assert not flax_model.bn1.use_running_average
    torch_out = torch_model(torch.from_numpy(x)).detach().numpy()
    flax_out = np.asarray(flax_model(jax.numpy.asarray(x.transpose(0, 2, 3, 1))))
    assert_close(flax_out, torch_out, "train-mode logits (batch statistics)")
    torch_after = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    flax_after = fb.export_weights(flax_model)
    assert counts.keys() == {n.rsplit(".", 1)[0] for n in weights if n.endswith("running_var")}
    for bn, n in counts.items():
        mean0, var0 = weights[f"{bn}.running_mean"], weights[f"{bn}.running_var"]
        assert not np.allclose(flax_after[f"{bn}.running_mean"], mean0), "train mode must update the stats"
        assert_close(flax_after[f"{bn}.running_mean"], torch_after[f"{bn}.running_mean"], f"{bn}.running_mean")
        assert_close(flax_after[f"{bn}.running_var"], torch_after[f"{bn}.running_var"], f"{bn}.running_var")
    # and the factor is not lost in noise: where n is smallest (layer2, 3 x 5 x 6 = 90) the biased
    # estimator differs from the stored one by ~m/n, far more than the parity bound
    bn = min(counts, key=counts.get)
    n, var0 = counts[bn], weights[f"{bn}.running_var"]
    flax_biased = (flax_after[f"{bn}.running_var"] - (1 - m) * var0) * (n - 1) / n + (1 - m) * var0
    with pytest.raises(AssertionError):
        assert_close(flax_biased, torch_after[f"{bn}.running_var"], "unbiased != biased")


def test_eval_train_switch_and_forward_is_always_eval():
    spec = _small(rm.get_spec("resnet18"), head=rm.HeadSpec(num_classes=7, dropout=0.5))
    model, _, weights = _flax_and_torch(spec)
    x = odd_input(spec, batch=2)
    nhwc = jax.numpy.asarray(x.transpose(0, 2, 3, 1))
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert all(bn.use_running_average for bn in bns) and model.dropout.deterministic  # built in eval mode
    evaluated = rm.forward(model, x)
    # the parity bound (docs/NUMERICS.md), elementwise: model(x) and rm.forward are two jit programs, and
    # XLA fuses them differently, so they may differ in the last float32 bits
    np.testing.assert_allclose(np.asarray(model(nhwc)), evaluated, rtol=1e-5, atol=1e-6)
    model.train()
    assert not any(bn.use_running_average for bn in bns) and not model.dropout.deterministic
    # rm.forward evaluates a train-mode model in eval mode, without changing its mode or statistics
    np.testing.assert_array_equal(rm.forward(model, x), evaluated)
    assert not model.bn1.use_running_average
    np.testing.assert_array_equal(fb.export_weights(model)["bn1.running_mean"], weights["bn1.running_mean"])
    trained = np.asarray(model(nhwc, rngs=nnx.Rngs(dropout=0)))
    # train mode (batch statistics, dropout 0.5) must move the output far beyond float noise
    assert not np.allclose(trained, evaluated, atol=1e-3)
    model.eval()
    assert all(bn.use_running_average for bn in bns) and model.dropout.deterministic
    np.testing.assert_array_equal(np.asarray(model(nhwc)), np.asarray(model(nhwc)))


def test_jit_forward_matches_eager_and_compiles_once(monkeypatch):
    spec = _small(rm.get_spec("resnet50d"), head=None, out_indices=(0, 1))
    model, _, weights = _flax_and_torch(spec)
    traces = []
    call = fb.ResNet.__call__
    monkeypatch.setattr(fb.ResNet, "__call__", lambda self, *a, **k: traces.append(1) or call(self, *a, **k))
    x = odd_input(spec, batch=2)
    compiled = rm.forward(model, x)
    assert len(traces) == 1
    with jax.disable_jit():
        eager = rm.forward(model, x, taps=True)
    assert len(traces) == 2 and isinstance(compiled, list) and len(compiled) == 2
    for a, name in zip(compiled, ("layer1", "layer2"), strict=True):
        assert_close(a, eager[name], f"jit vs eager: {name}")
    taps = rm.forward(model, x, taps=True)  # the same program: outputs equal their taps exactly
    np.testing.assert_array_equal(taps["layer2"], compiled[1])
    rm.forward(model, x + 1)
    rm.forward(rm.build(spec, "flax", weights=random_weights(rm.make_plan(spec), seed=9)), x)  # same plan: cached
    assert len(traces) == 2, "same plan and input shape must not recompile"
    rm.forward(model, x[:1])
    assert len(traces) == 3  # a new input shape compiles once more


# --------------------------------------------------------------------------- weights and native files


def test_import_is_all_or_nothing():
    spec = _small(rm.get_spec("resnet18"))
    model, _, weights = _flax_and_torch(spec)
    bad = {"fc.bias": np.zeros(1000, np.float32), "bn1.weight": np.zeros(3, np.float32)}
    with pytest.raises(rm.WeightsError, match=r"bn1.weight \(expected flax shape \(64,\) at 'bn1.scale'"):
        fb.import_weights(model, bad)
    np.testing.assert_array_equal(fb.export_weights(model)["fc.bias"], weights["fc.bias"])


def test_msgpack_round_trip_is_bit_exact(tmp_path):
    spec = _small(rm.get_spec("resnet50d"), block=dataclasses.replace(rm.get_spec("resnet50d").block, se_ratio=0.25))
    model, _, weights = _flax_and_torch(spec, seed=5)
    path = tmp_path / "w.msgpack"
    fb.save_native(path, weights)
    loaded = fb.load_native(path)
    # the names, exactly; their order is the file's (msgpack keeps Flax's sorted keys: bn1.bias before
    # conv1.weight), which no reader promises, so it is not asserted
    assert sorted(loaded) == sorted(weights)
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype and loaded[name].flags.writeable, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    # the file is the model's own nnx state as pure dicts (string keys), as Flax users save it ...
    tree = serialization.msgpack_restore(path.read_bytes())
    own = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    flat_file = {k: v for k, v in msgpack_stream.flatten(tree).items()}
    flat_own = {k: v for k, v in msgpack_stream.flatten(own).items()}
    assert flat_file.keys() == flat_own.keys()
    for key in flat_own:
        np.testing.assert_array_equal(flat_file[key], flat_own[key], err_msg=key)
    # ... and loads into a model the Flax way
    other = rm.build(spec, "flax", weights=random_weights(rm.make_plan(spec), seed=6))
    state = nnx.state(other)
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(other, state)
    assert_weights_equal(fb.export_weights(other), weights)


def test_corrupt_msgpack_is_a_clear_error(tmp_path):
    good = tmp_path / "good.msgpack"
    fb.save_native(good, random_weights(rm.make_plan(_small(rm.get_spec("resnet18"))), seed=0))
    data = good.read_bytes()
    cases = {
        "truncated.msgpack": data[: len(data) // 2],
        "garbage.msgpack": b"\xc1\x00 not msgpack at all",
        "empty.msgpack": b"",
        "list.msgpack": serialization.msgpack_serialize([np.zeros(3)]),
        "unknown.msgpack": serialization.msgpack_serialize({"conv1": {"weights": np.zeros((3, 3, 3, 8), np.float32)}}),
    }
    for file_name, payload in cases.items():
        path = tmp_path / file_name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=file_name):
            fb.load_native(path)


def _flax_tree(weights: dict) -> dict:
    """The nested Flax state dict of canonical ``weights`` (Flax names and layout), built the
    straightforward way: every tensor converted, then nested."""
    return msgpack_stream.nested(dict(flax_io._canonical_to_flax(name, array) for name, array in weights.items()))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_msgpack_file_is_msgpack_serialize_of_the_nested_state(tmp_path, dtype):
    # save_native writes the stream piece by piece (map headers, keys, one array at a time); the
    # bytes must stay exactly what flax.serialization writes for the whole nested state dict.
    spec = _small(rm.get_spec("resnet50d"), block=dataclasses.replace(rm.get_spec("resnet50d").block, se_ratio=0.25))
    weights = {name: array.astype(dtype) for name, array in random_weights(rm.make_plan(spec), seed=3).items()}
    path = tmp_path / "w.msgpack"
    fb.save_native(path, weights)
    assert path.read_bytes() == serialization.msgpack_serialize(_flax_tree(weights))
    loaded = fb.load_native(path)
    assert loaded.keys() == weights.keys()
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype and loaded[name].flags.c_contiguous, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_chunked_arrays_are_written_and_read_as_flax_does(tmp_path, monkeypatch):
    # Flax splits arrays over serialization.MAX_CHUNK_SIZE (1 GiB) into a dict of chunks marked
    # msgpack_stream.CHUNKED; shrink the limit (Flax's, and the codec's own copy of it that
    # save_native writes with) so the small model's larger tensors take that path.
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 4096)
    monkeypatch.setattr(msgpack_stream, "MAX_CHUNK_SIZE", 4096)
    weights = random_weights(rm.make_plan(_small(rm.get_spec("resnet18"))), seed=4)
    assert any(array.nbytes > 4096 for array in weights.values())
    path = tmp_path / "chunked.msgpack"
    fb.save_native(path, weights)
    data = path.read_bytes()
    assert msgpack_stream.CHUNKED.encode() in data
    assert data == serialization.msgpack_serialize(_flax_tree(weights))
    restored = msgpack_stream.flatten(serialization.msgpack_restore(data))
    for key, array in msgpack_stream.flatten(_flax_tree(weights)).items():
        np.testing.assert_array_equal(restored[key], array, err_msg=key)
    loaded = fb.load_native(path)
    assert loaded.keys() == weights.keys()
    assert_weights_equal(loaded, weights)


def test_msgpack_stream_errors_name_the_file_and_tensor(tmp_path):
    good = tmp_path / "good.msgpack"
    fb.save_native(good, random_weights(rm.make_plan(_small(rm.get_spec("resnet18"))), seed=0))
    data = good.read_bytes()
    cases = {  # file name -> what the message must say besides the file's name
        "trailing.msgpack": (data + b"\x00", "extra data"),
        "cut_in_header.msgpack": (data[:3], "not a readable Flax msgpack file"),
        "bad_array.msgpack": (msgpack.packb({"conv1": {"kernel": msgpack.ExtType(1, b"\x93junk")}}),
                              "conv1.kernel is not a readable Flax array"),
        "number.msgpack": (msgpack.packb({"fc": {"bias": 3}}), "fc.bias is a int, expected an array"),
    }
    for file_name, (payload, message) in cases.items():
        path = tmp_path / file_name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=file_name) as info:
            fb.load_native(path)
        assert message in str(info.value), (file_name, str(info.value))


def test_failed_save_leaves_no_file(tmp_path):
    weights = random_weights(rm.make_plan(_small(rm.get_spec("resnet18"))), seed=0)
    path = tmp_path / "out.msgpack"
    # no rule for a 3-D weight: found when that tensor is reached, after others were written
    bad = {**weights, "layer2.0.conv1.weight": np.zeros((3, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"layer2.0.conv1.weight: no Flax rule for a 3-D tensor"):
        fb.save_native(path, bad)
    with pytest.raises(ValueError, match=r"fc.weight.extra: fc.weight is a tensor, not a module"):
        fb.save_native(path, {**weights, "fc.weight.extra": np.zeros(3, np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_native_files_hold_one_tensor_at_a_time(tmp_path):
    # The memory contract behind benchmarks/convert_bench.py (issue 4: conversion under 3x the
    # checkpoint): writing needs a few copies of one tensor beyond the weights, reading the
    # canonical result plus that. Reading the bytes and calling msgpack_restore alone costs 2x.
    # tracemalloc sees numpy's buffers and msgpack's bytes; the slack covers the 1 MiB read
    # buffer and small objects.
    import tracemalloc

    rng = np.random.default_rng(0)
    weights = {}
    for i in range(120):  # 17.8 MB in 360 tensors; the largest 147 kB
        weights[f"layer1.{i}.conv1.weight"] = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
        weights[f"layer1.{i}.bn1.weight"] = rng.standard_normal(64, dtype=np.float32)
        weights[f"layer1.{i}.bn1.running_var"] = rng.standard_normal(64, dtype=np.float32)
    payload = sum(array.nbytes for array in weights.values())
    slack = 4 * 2**20
    path = tmp_path / "w.msgpack"

    def peak_extra(call) -> int:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        return tracemalloc.get_traced_memory()[1] - before, result

    tracemalloc.start()
    try:
        write_peak, _ = peak_extra(lambda: fb.save_native(path, weights))
        read_peak, loaded = peak_extra(lambda: fb.load_native(path))
    finally:
        tracemalloc.stop()
    assert write_peak <= slack, f"save_native: {write_peak / 1e6:.1f} MB above the weights ({payload / 1e6:.1f} MB)"
    assert read_peak <= payload + slack, f"load_native: {read_peak / 1e6:.1f} MB for {payload / 1e6:.1f} MB"
    assert loaded.keys() == weights.keys()
