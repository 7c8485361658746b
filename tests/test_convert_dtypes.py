"""Half precision end to end (bfloat16 and float16 in every format, casting on the way, building
float32 models from half-precision files) and conversion hygiene (NaN/Inf warnings, permissions of
written files, a missing output directory).

The formats come from the registry plus the neutral file (test_convert.FORMATS), so a new backend
joins every test here without a new line.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings

import ml_dtypes
import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi.cli import main
from resnet_multi.convert import read_canonical, tensor_group, write_canonical
from resnet_multi.weights import (NonFiniteWarning, PrecisionWarning, cast_weights, check_weights, random_weights,
                                  resolve_dtype, warn_nonfinite)
from test_convert import FORMATS, SUFFIX, assert_same_bits, digest, leftovers, make_file, tiny_spec
from test_plan import _run_fresh

HALF = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}

# Values a careless conversion gets wrong, placed in fc.bias of the tiny spec (5 outputs): -0.0 (sign
# bit only), the smallest subnormal and the largest finite value of the dtype, a value that needs the
# last significand bit, and an ordinary one.
_EDGES = {name: np.array([-0.0, float(ml_dtypes.finfo(d).smallest_subnormal), float(ml_dtypes.finfo(d).max),
                          1 + float(ml_dtypes.finfo(d).eps), -0.3], dtype=d) for name, d in HALF.items()}


def half_weights(spec: rm.ResNetSpec, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random canonical weights of ``dtype``, with the edge values above in fc.bias."""
    weights = {name: a.astype(HALF[dtype]) for name, a in random_weights(rm.make_plan(spec), seed=seed).items()}
    weights["fc.bias"] = _EDGES[dtype].copy()
    return weights


def exactly_representable(spec: rm.ResNetSpec, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights whose every value ``dtype`` holds exactly: any framework's cast to ``dtype``
    (round to nearest or truncate) gives the same bits as numpy's."""
    return {name: a.astype(HALF[dtype]).astype(np.float32)
            for name, a in random_weights(rm.make_plan(spec), seed=seed).items()}


@contextlib.contextmanager
def caught(category):
    """Collects the ``category`` warnings raised in the block (every one: no once-per-place filter);
    the list is filled when the block ends."""
    found: list = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", category)
        yield found
    found.extend(r for r in records if issubclass(r.category, category))


# --------------------------------------------------------------------------- every format, every pair


@pytest.mark.parametrize("dst", FORMATS)
@pytest.mark.parametrize("src", FORMATS)
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_between_every_pair_of_formats(tmp_path, dtype, src, dst):
    """A bfloat16/float16 checkpoint in any format converts to any format (the same one too) bit
    for bit, dtype kept, spec inferred or stored; reading it back gives the same arrays."""
    spec = tiny_spec()
    weights = half_weights(spec, dtype)
    source = make_file(tmp_path, src, weights, spec, stem="src")
    assert_same_bits(read_canonical(source)[0], weights, f"{dtype} {src} round trip")
    before = digest(source)
    out = rm.convert(source, tmp_path / f"out{SUFFIX[dst]}", spec=spec if src != "neutral" else None)
    assert_same_bits(read_canonical(out)[0], weights, f"{dtype} {src} -> {dst}")
    assert digest(source) == before and leftovers(tmp_path) == []


# Each framework's own view of its native file: what its save writes and its load gives back.
# state(model): the native state dict (framework tensors) of a model built by rm.


def _torch():
    import torch

    class Torch:
        name = "torch"
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}

        @staticmethod
        def state(model):
            return dict(model.state_dict())

        @staticmethod
        def cast(tensor, dtype):
            return tensor.to(Torch.dtypes[dtype]) if tensor.is_floating_point() else tensor

        @staticmethod
        def save(state, path):
            torch.save(state, path)

        @staticmethod
        def load(path):
            return torch.load(path, weights_only=True)

        @staticmethod
        def describe(tensor):  # (dtype name, float32 values) or None for non-float buffers
            if not tensor.is_floating_point():
                return None
            return str(tensor.dtype).removeprefix("torch."), tensor.float().numpy()
    return Torch


def _paddle():
    import paddle

    class Paddle:
        name = "paddle"

        @staticmethod
        def state(model):
            return dict(model.state_dict())

        @staticmethod
        def cast(tensor, dtype):
            return tensor.astype(dtype)

        @staticmethod
        def save(state, path):
            paddle.save(state, str(path))

        @staticmethod
        def load(path):
            return paddle.load(str(path))

        @staticmethod
        def describe(tensor):
            return str(tensor.dtype).removeprefix("paddle."), tensor.astype("float32").numpy()
    return Paddle


def _flax():
    import jax.numpy as jnp
    from flax import nnx, serialization, traverse_util

    class Flax:
        name = "flax"

        @staticmethod
        def state(model):
            flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
            return {".".join(map(str, key)): value for key, value in flat.items()}

        @staticmethod
        def cast(array, dtype):
            return jnp.asarray(array).astype(getattr(jnp, dtype))

        @staticmethod
        def save(state, path):  # the Flax way: msgpack_serialize of the nested pure dict
            nested = traverse_util.unflatten_dict({tuple(k.split(".")): v for k, v in state.items()})
            path.write_bytes(serialization.msgpack_serialize(nested))

        @staticmethod
        def load(path):
            flat = traverse_util.flatten_dict(serialization.msgpack_restore(path.read_bytes()))
            return {".".join(map(str, key)): value for key, value in flat.items()}

        @staticmethod
        def describe(array):
            array = np.asarray(array)
            return array.dtype.name, array.astype(np.float32)
    return Flax


FRAMEWORKS = {"torch": _torch, "paddle": _paddle, "flax": _flax}
assert set(FRAMEWORKS) == set(rm.backend_names()), "a new backend needs its entry here"


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("backend", rm.backend_names())
def test_files_the_frameworks_write_and_read_in_half_precision(tmp_path, backend, dtype):
    """A file the framework itself saved in bfloat16/float16 reads as arrays of that dtype, bit for
    bit; a file we write loads in the framework itself as tensors of that dtype with the same values
    (so the dtype is stored natively: torch.bfloat16, Paddle's bfloat16, Flax's bfloat16 arrays)."""
    fw = FRAMEWORKS[backend]()
    spec = tiny_spec()
    values = exactly_representable(spec, dtype)
    native = fw.state(rm.build(spec, backend, weights=values))  # float32 tensors in native names/layout
    theirs = tmp_path / f"theirs{SUFFIX[backend]}"
    fw.save({key: fw.cast(tensor, dtype) for key, tensor in native.items()}, theirs)
    expected = {name: a.astype(HALF[dtype]) for name, a in values.items()}
    assert_same_bits(read_canonical(theirs)[0], expected, f"{backend}'s own {dtype} file")

    ours = make_file(tmp_path, backend, expected, spec, stem="ours")
    loaded = fw.load(ours)
    assert sorted(loaded) == sorted(native)
    for key, tensor in loaded.items():
        described, reference = fw.describe(tensor), fw.describe(native[key])
        if described is None:  # torch's integer num_batches_tracked
            continue
        assert described[0] == dtype, f"{key}: {described[0]} in the file, expected {dtype}"
        np.testing.assert_array_equal(described[1], reference[1], err_msg=key)


# --------------------------------------------------------------------------- building from half precision


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("backend", rm.backend_names())
def test_half_precision_file_builds_a_float32_model_exactly(tmp_path, backend, dtype, fmt):
    """rm.build(weights=half-precision file) gives a float32 model holding the exact upcast values;
    rm.import_weights of the same file into a model does too."""
    spec = tiny_spec()
    weights = half_weights(spec, dtype, seed=2)
    path = make_file(tmp_path, fmt, weights, spec)
    upcast = {name: a.astype(np.float32) for name, a in weights.items()}
    model = rm.build(spec, backend, weights=path)
    assert_same_bits(rm.export_weights(model), upcast, f"{dtype} {fmt} file -> {backend} model")
    model = rm.build(spec, backend, seed=9)
    rm.import_weights(model, path)
    assert_same_bits(rm.export_weights(model), upcast, f"{dtype} {fmt} file imported into {backend}")


# --------------------------------------------------------------------------- casting on the way


def relative_change(before: dict, after: dict) -> tuple[float, str]:
    """The largest max|after - before| / max|before| over the tensors, and that tensor's name."""
    worst = max(before, key=lambda n: np.max(np.abs(after[n].astype(np.float64) - before[n]))
                / np.max(np.abs(before[n])))
    b = before[worst].astype(np.float64)
    return float(np.max(np.abs(after[worst].astype(np.float64) - b)) / np.max(np.abs(b))), worst


@pytest.mark.parametrize("dtype, bound", [("bfloat16", 2.0 ** -8), ("float16", 2.0 ** -11)])
def test_casting_down_warns_with_the_largest_relative_change(tmp_path, dtype, bound):
    """float32 -> half: the output holds numpy's cast bit for bit, and a PrecisionWarning gives the
    largest relative change and its tensor. Round to nearest moves a value by at most half a unit
    in the last place: 2**-8 relative for bfloat16 (8 significant bits), 2**-11 for float16 (11)."""
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=5)
    src = make_file(tmp_path, "neutral", weights, spec, stem="src")
    with caught(PrecisionWarning) as records:
        out = rm.convert(src, tmp_path / "out.pth", dtype=dtype)
    expected = {name: a.astype(HALF[dtype]) for name, a in weights.items()}
    assert_same_bits(read_canonical(out)[0], expected, f"float32 -> {dtype}")
    change, worst = relative_change(weights, expected)
    assert 0 < change <= bound
    assert len(records) == 1, [str(r.message) for r in records]
    message = str(records[0].message)
    assert f"casting to {dtype} changed values by up to {change:.3g} relative" in message, message
    assert f"largest in {worst})" in message and str(src) in message
    assert records[0].filename == __file__  # the warning points at the caller's line


def test_overflow_when_casting_down_names_the_tensors(tmp_path):
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=6)
    weights["bn1.running_var"][0] = 1e6  # beyond float16's 65504
    src = make_file(tmp_path, "torch", weights, spec, stem="src")
    with caught(PrecisionWarning) as records:
        out = rm.convert(src, tmp_path / "out.msgpack", spec=spec, dtype="float16")
    assert len(records) == 1 and "became +-inf in 1 tensor(s): bn1.running_var" in str(records[0].message)
    assert np.isinf(read_canonical(out)[0]["bn1.running_var"][0])


@pytest.mark.parametrize("dtype", HALF)
def test_casting_up_is_exact_and_silent(tmp_path, dtype):
    """half -> float32 (and -> float64) keeps every value, with no warning; so does a cast down of
    values the narrower dtype holds exactly."""
    spec = tiny_spec()
    weights = half_weights(spec, dtype)
    src = make_file(tmp_path, "paddle", weights, spec, stem="src")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        for wide in ("float32", "float64"):
            out = rm.convert(src, tmp_path / f"{wide}.safetensors", spec=spec, dtype=wide)
            assert_same_bits(read_canonical(out)[0], {n: a.astype(wide) for n, a in weights.items()}, wide)
        back = rm.convert(tmp_path / "float32.safetensors", tmp_path / "back.pth", dtype=dtype)
    assert_same_bits(read_canonical(back)[0], weights, f"{dtype} -> float32 -> {dtype}")


def test_cast_weights_passes_tensors_of_the_target_dtype_through():
    weights = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float16)}
    out = cast_weights(weights, "float32")
    assert out["a"] is weights["a"] and out["b"].dtype == np.float32 and weights["b"].dtype == np.float16


@pytest.mark.parametrize("bad", ["int8", "float8", "bf16", np.int32])
def test_bad_dtype_fails_before_any_file_is_touched(tmp_path, bad):
    with pytest.raises(ValueError, match=r"dtype: expected one of float16, bfloat16, float32, float64"):
        rm.convert(tmp_path / "missing.pth", tmp_path / "out.pth", dtype=bad)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_dtype(bad)


def test_cli_dtype(tmp_path, capsys):
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=7)
    src = make_file(tmp_path, "flax", weights, spec, stem="src")
    rm.save_spec(spec, tmp_path / "tiny.json")
    dst = tmp_path / "out.pdparams"
    assert main(["convert", str(src), str(dst), "--spec", str(tmp_path / "tiny.json"), "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"resnet-multi convert: warning: .* casting to bfloat16 changed values by up to [0-9.e-]+ relative",
                     err), err
    assert {a.dtype.name for a in read_canonical(dst)[0].values()} == {"bfloat16"}
    assert main(["convert", str(dst), str(tmp_path / "up.pth"), "--spec", str(tmp_path / "tiny.json"),
                 "--dtype", "float32"]) == 0
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["convert", str(src), str(tmp_path / "x.pth"), "--dtype", "int8"])
    assert info.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err


def test_cli_shows_other_warnings_once_as_python_does(tmp_path, capsys, monkeypatch):
    """A framework's own warning during convert is shown as Python shows it (once), beside the
    library's one-line warnings, and the command completes."""
    convert_module = importlib.import_module("resnet_multi.convert")  # (rm.convert is the function)

    def noisy(weights, **kwargs):
        warnings.warn("a framework's own warning", UserWarning)
        return warn_nonfinite(weights, **kwargs)
    monkeypatch.setattr(convert_module, "warn_nonfinite", noisy)
    spec = tiny_spec()
    src = make_file(tmp_path, "neutral", with_nonfinite(spec), spec, stem="src")
    with pytest.warns(UserWarning) as record:  # where showwarning sends it under pytest
        assert main(["convert", str(src), str(tmp_path / "out.safetensors"), "--dtype", "float16"]) == 0
    assert [str(w.message) for w in record] == ["a framework's own warning"]
    err = capsys.readouterr().err
    assert err.count("resnet-multi convert: warning: ") == 2, err  # NaN/Inf, and the cast


# --------------------------------------------------------------------------- inspect


def test_inspect_shows_dtypes_per_tensor_group(tmp_path, capsys):
    """A mixed-precision checkpoint as AMP-style releases have it: convs and the linear in bfloat16,
    BatchNorm and its statistics in float32."""
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=8)
    groups = {name: tensor_group(name, weights) for name in weights}
    mixed = {name: a.astype(HALF["bfloat16"]) if groups[name] in ("conv", "linear") else a
             for name, a in weights.items()}
    count = {g: list(groups.values()).count(g) for g in ("conv", "norm", "norm stats", "linear")}
    assert groups["conv1.weight"] == "conv" and groups["layer1.0.bn1.bias"] == "norm"
    assert groups["fc.bias"] == "linear" and groups["bn1.running_var"] == "norm stats"
    path = make_file(tmp_path, "torch", mixed, spec)
    report = rm.inspect_file(path)
    assert report.dtypes == {"bfloat16": count["conv"] + count["linear"],
                             "float32": count["norm"] + count["norm stats"]}
    assert report.dtype_groups == {"conv": {"bfloat16": count["conv"]}, "norm": {"float32": count["norm"]},
                                   "norm stats": {"float32": count["norm stats"]},
                                   "linear": {"bfloat16": count["linear"]}}
    text = str(report)
    assert f"\n  conv        bfloat16 ({count['conv']})\n  norm        float32 ({count['norm']})\n" in text, text
    assert main(["inspect", str(path), "--json"]) == 0
    assert '"norm stats": {\n      "float32"' in capsys.readouterr().out


# --------------------------------------------------------------------------- NaN and Inf


def with_nonfinite(spec):
    weights = random_weights(rm.make_plan(spec), seed=9)
    weights["layer2.0.conv1.weight"][0, 0, 0, :2] = np.nan
    weights["bn1.running_var"][1] = np.inf
    weights["fc.bias"][2] = -np.inf
    return weights


NONFINITE = {"bn1.running_var": "1 Inf", "layer2.0.conv1.weight": "2 NaN", "fc.bias": "1 Inf"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_nonfinite_tensors_convert_with_a_warning_naming_them(tmp_path, fmt, capsys):
    spec = tiny_spec()
    weights = with_nonfinite(spec)
    src = make_file(tmp_path, "neutral", weights, spec, stem="src")
    with caught(NonFiniteWarning) as records:
        out = rm.convert(src, tmp_path / f"out{SUFFIX[fmt]}")
    assert len(records) == 1
    message = str(records[0].message)
    for name, what in NONFINITE.items():
        assert f"{name} ({what})" in message, message
    assert_same_bits(read_canonical(out)[0], weights, f"NaN/Inf kept in {fmt}")

    # inspect: a warning, and the report lists them
    with caught(NonFiniteWarning) as records:
        report = rm.inspect_file(out)
    assert report.nonfinite == NONFINITE
    assert len(records) == 1 and "3 tensor(s) hold NaN or Inf" in str(records[0].message)
    assert "NaN/Inf   3 tensor(s): " in str(report)
    assert main(["inspect", str(out)]) == 0
    captured = capsys.readouterr()
    assert "resnet-multi inspect: warning: " in captured.err and "bn1.running_var (1 Inf)" in captured.err


@pytest.mark.parametrize("backend", rm.backend_names())
def test_import_weights_with_nonfinite_tensors_warns_and_loads(tmp_path, backend):
    spec = tiny_spec()
    weights = with_nonfinite(spec)
    model = rm.build(spec, backend)
    with caught(NonFiniteWarning) as records:
        rm.import_weights(model, weights)
    assert len(records) == 1 and "layer2.0.conv1.weight (2 NaN)" in str(records[0].message)
    assert records[0].filename == __file__  # the warning points at the caller's line
    assert_same_bits(rm.export_weights(model), weights, f"NaN/Inf loaded into {backend}")
    path = make_file(tmp_path, "neutral", weights, spec)
    with caught(NonFiniteWarning) as records:
        rm.build(spec, backend, weights=path)
    assert len(records) == 1 and str(path) in str(records[0].message)


# --------------------------------------------------------------------------- written files


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640  # what a new file gets: 0o666 & ~0o027
    os.umask(old)


@pytest.mark.parametrize("fmt", FORMATS)
def test_written_files_have_normal_permissions(tmp_path, fmt, umask_027):
    """New files get 0o666 less the umask (not the temporary file's 0o600); an overwritten file keeps
    its permissions, as writing it in place would."""
    spec = tiny_spec()
    src = make_file(tmp_path, "neutral", random_weights(rm.make_plan(spec)), spec, stem="src")
    out = rm.convert(src, tmp_path / f"out{SUFFIX[fmt]}")
    assert oct(out.stat().st_mode & 0o777) == oct(umask_027)
    os.chmod(out, 0o604)
    rm.convert(src, out, force=True)
    assert oct(out.stat().st_mode & 0o777) == oct(0o604)
    rm.save_spec(spec, tmp_path / "spec.json")
    assert oct((tmp_path / "spec.json").stat().st_mode & 0o777) == oct(umask_027)


WRITERS = {
    **{f"convert to {fmt}": lambda src, d, fmt=fmt: rm.convert(src, d / f"out{SUFFIX[fmt]}") for fmt in FORMATS},
    "write_canonical": lambda src, d: write_canonical(d / "out.pth", read_canonical(src)[0]),
    "save_weights": lambda src, d: rm.save_weights(d / "out.safetensors", read_canonical(src)[0]),
    "save_spec": lambda src, d: rm.save_spec(tiny_spec(), d / "spec.json"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_missing_output_directory_is_refused_not_created(tmp_path, writer):
    spec = tiny_spec()
    src = make_file(tmp_path, "neutral", random_weights(rm.make_plan(spec)), spec, stem="src")
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=re.escape(f"the output directory {missing} does not exist")):
        WRITERS[writer](src, missing)
    assert not (tmp_path / "no").exists()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=f"{not_a_dir} is not a directory"):
        WRITERS[writer](src, not_a_dir)
    assert leftovers(tmp_path) == []


def test_missing_output_directory_exit_1_before_reading(tmp_path, capsys):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"junk")  # not read: the directory is checked first
    assert main(["convert", str(bad), str(tmp_path / "nodir" / "out.msgpack")]) == 1
    err = capsys.readouterr().err
    assert "the output directory" in err and "nodir does not exist" in err and "junk" not in err
    assert not (tmp_path / "nodir").exists()


# --------------------------------------------------------------------------- the core stays light


def test_check_weights_takes_bfloat16_and_refuses_integers():
    spec = tiny_spec()
    weights = half_weights(spec, "bfloat16")
    assert check_weights(rm.make_plan(spec), weights)["fc.bias"].dtype == HALF["bfloat16"]
    weights["fc.bias"] = weights["fc.bias"].view(np.int16)
    with pytest.raises(rm.WeightsError, match=r"not floating point: fc.bias \(dtype int16\)"):
        check_weights(rm.make_plan(spec), weights)


def test_ml_dtypes_is_imported_only_when_a_dtype_is_named():
    """Checking arrays' dtypes needs no import; naming bfloat16 does."""
    code = ("import sys, resnet_multi as rm\n"
            "from resnet_multi.weights import check_weights, init_weights, resolve_dtype\n"
            "plan = rm.make_plan(rm.get_spec('resnet18'))\n"
            "check_weights(plan, init_weights(plan)); resolve_dtype('float16')\n"
            "before = 'ml_dtypes' in sys.modules\n"
            "resolve_dtype('bfloat16')\n"
            "print(before, 'ml_dtypes' in sys.modules)")
    assert _run_fresh(code) == "False True"


def test_overflow_is_reported_once_as_a_precision_warning_not_numpys():
    """numpy's 'overflow encountered in cast' RuntimeWarning is not shown beside the PrecisionWarning."""
    from resnet_multi.weights import cast_weights

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        cast_weights({"w": np.array([1e6, 1.0], np.float32)}, "float16", source="w")
    assert [r.category for r in records] == [PrecisionWarning], [str(r.message) for r in records]
