"""resnet_multi.formats: the framework-free codecs, the suffix and content sniffing, atomic writes.

The codecs (``formats.pdparams``, ``formats.msgpack_stream``) must run with numpy alone, write the
bytes the backends' writers (and so ``paddle.save`` / ``flax.serialization``) write, read what the
frameworks themselves write, and keep every safety property of the readers.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import ml_dtypes
import msgpack
import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi import io_util, registry, weights as weights_module
from resnet_multi.formats import atomic, msgpack_stream, pdparams, sniff
from resnet_multi.registry import get_backend
from resnet_multi.weights import random_weights

# the module: `from resnet_multi import convert` gives rm.convert, the function
convert = importlib.import_module("resnet_multi.convert")

FRAMEWORKS = ("torch", "paddle", "flax", "jax", "jaxlib", "optax")

# Put first on sys.meta_path in a child process: every import of a framework (or a submodule of
# one) raises ImportError there, as if it were not installed. The child checks that it works.
_BLOCK_FRAMEWORKS = textwrap.dedent(f"""
    import importlib, importlib.abc, sys

    BLOCKED = {FRAMEWORKS!r}

    class NoFrameworks(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not importable in this test")
            return None

    sys.meta_path.insert(0, NoFrameworks())
    for name in BLOCKED:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        raise AssertionError(f"{{name}} imported although it is blocked")
""")


def run_without_frameworks(code: str, *args: str) -> str:
    """Run ``code`` in a child Python in which no framework can be imported; its stdout. The child
    fails (and so the test) if any framework module ends up in sys.modules."""
    script = _BLOCK_FRAMEWORKS + textwrap.dedent(code) + textwrap.dedent(f"""
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {FRAMEWORKS!r})
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tiny_spec() -> rm.ResNetSpec:
    """resnet18's names with few channels and one block per stage: fast, and not a preset."""
    spec = rm.get_spec("resnet18")
    stages = tuple(dataclasses.replace(s, depth=1, channels=4 * 2 ** i) for i, s in enumerate(spec.stages))
    return spec.replace(name="tiny18", stages=stages, stem=dataclasses.replace(spec.stem, widths=(4,)),
                        head=rm.HeadSpec(num_classes=5))


def assert_same_bits(actual: dict, expected: dict, what: str) -> None:
    """Same names in the same order, and every array with the same dtype, shape and bytes."""
    assert list(actual) == list(expected), f"{what}: names or their order differ"
    for name, array in expected.items():
        got = actual[name]
        assert got.dtype == array.dtype, f"{what}: {name} dtype {got.dtype} != {array.dtype}"
        assert got.shape == array.shape, f"{what}: {name} shape {got.shape} != {array.shape}"
        assert got.tobytes() == array.tobytes(), f"{what}: {name} bits differ"


DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}

# Byte-identity against the backends' writers: three families, every dtype each format keeps
# (.pdparams and .msgpack keep all four), full-size presets whose writing takes well under a second.
WRITER_CASES = [("resnet18", "float32"), ("densenet121", "bfloat16"), ("ghostnet_100", "float16"),
                ("d2l_densenet", "float64"), ("resnet45", "bfloat16")]


def _preset_weights(preset: str, dtype: str) -> dict[str, np.ndarray]:
    return {name: array.astype(DTYPES[dtype])
            for name, array in random_weights(rm.make_plan(rm.get_spec(preset)), seed=7).items()}


# --------------------------------------------------------------------------- no framework needed


def test_codecs_write_and_read_both_formats_without_any_framework(tmp_path):
    out = run_without_frameworks("""
        import sys
        from pathlib import Path
        import ml_dtypes
        import numpy as np
        from resnet_multi.formats import msgpack_stream, pdparams, sniff

        directory = Path(sys.argv[1])
        rng = np.random.default_rng(0)
        state = {}
        for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
            name = np.dtype(dtype).name
            state[f"{name}.conv.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
            state[f"{name}.fc.weight"] = rng.standard_normal((5, 7)).astype(dtype).T  # not C-ordered
            state[f"{name}.bn._mean"] = rng.standard_normal(4).astype(dtype)

        def same(got, want, what):
            assert list(got) == list(want), what
            for key, array in want.items():
                assert got[key].dtype == array.dtype and got[key].shape == array.shape, (what, key)
                assert got[key].tobytes() == np.ascontiguousarray(array).tobytes(), (what, key)

        pdparams.write(directory / "w.pdparams", state)
        same(pdparams.read(directory / "w.pdparams"), state, "pdparams")

        msgpack_stream.MAX_CHUNK_SIZE = 64  # every array above 64 bytes goes in chunks, as Flax splits them
        msgpack_stream.write(directory / "w.msgpack", msgpack_stream.nested(state))
        assert msgpack_stream.CHUNKED.encode() in (directory / "w.msgpack").read_bytes()
        flat = msgpack_stream.read(directory / "w.msgpack")
        same(flat, dict(sorted(state.items())), "msgpack")  # the writer sorts keys, as Flax does

        formats = [sniff.detect_format(directory / f"w{s}") for s in (".pdparams", ".msgpack")]
        print(*formats)
    """, str(tmp_path))
    assert out.split() == ["paddle", "flax"]


def test_files_the_frameworks_write_are_read_without_any_framework(tmp_path):
    """paddle.save's and flax.serialization's own files (name table, tuples, protocol 2, bfloat16,
    chunked arrays), read in a child that cannot import either, equal what the frameworks read."""
    import paddle
    from flax import serialization

    rng = np.random.default_rng(1)
    paddle_state = {"conv1.weight": paddle.to_tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                    "bn1._variance": paddle.to_tensor(rng.standard_normal(4)),  # float64
                    "fc.weight": paddle.to_tensor(rng.standard_normal((6, 5)).astype(np.float32)).astype("bfloat16")}
    expected, dtypes = {}, {}  # "stem/name" -> values (float64), dtype name the reader must give
    for protocol in (2, 3, 4):
        paddle.save(paddle_state, str(tmp_path / f"p{protocol}.pdparams"), protocol=protocol)
        for name, tensor in paddle_state.items():
            expected[f"p{protocol}/{name}"] = tensor.astype("float64").numpy()
            dtypes[f"p{protocol}/{name}"] = str(tensor.dtype).rpartition(".")[2]
    # a dict that is not a state_dict (a tensor beside an array): paddle.save pickles the tensor as a
    # tuple, which protocol 2 names __builtin__.tuple
    mixed = {"a": paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)), "b": np.ones(3, np.float64)}
    for protocol in (2, 4):
        paddle.save(mixed, str(tmp_path / f"mixed{protocol}.pdparams"), protocol=protocol)
        expected.update({f"mixed{protocol}/a": mixed["a"].numpy(), f"mixed{protocol}/b": mixed["b"]})
        dtypes.update({f"mixed{protocol}/a": "float32", f"mixed{protocol}/b": "float64"})
    tree = {"conv1": {"kernel": rng.standard_normal((3, 3, 3, 4)).astype(np.float32)},
            "bn1": {"scale": rng.standard_normal(4).astype(ml_dtypes.bfloat16), "var": rng.standard_normal(4)},
            "layer1": {"0": {"conv1": {"kernel": rng.standard_normal((3, 3, 4, 4)).astype(np.float16)}}}}
    (tmp_path / "flax.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    previous = serialization.MAX_CHUNK_SIZE
    serialization.MAX_CHUNK_SIZE = 64
    try:
        (tmp_path / "chunked.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    finally:
        serialization.MAX_CHUNK_SIZE = previous
    assert msgpack_stream.CHUNKED.encode() in (tmp_path / "chunked.msgpack").read_bytes()
    for stem in ("flax", "chunked"):
        for name, array in msgpack_stream.flatten(tree).items():
            expected[f"{stem}/{name}"], dtypes[f"{stem}/{name}"] = array, array.dtype.name
    assert "bfloat16" in dtypes.values() and "float64" in dtypes.values()
    np.savez(tmp_path / "expected.npz", **{key: np.asarray(array, np.float64) for key, array in expected.items()})
    out = run_without_frameworks("""
        import json, sys
        from pathlib import Path
        import numpy as np
        from resnet_multi.formats import msgpack_stream, pdparams

        directory, dtypes = Path(sys.argv[1]), json.loads(sys.argv[2])
        expected = np.load(directory / "expected.npz")
        for stem in ("p2", "p3", "p4", "mixed2", "mixed4", "flax", "chunked"):
            if stem in ("flax", "chunked"):
                got = msgpack_stream.read(directory / f"{stem}.msgpack")
            else:
                got = pdparams.read(directory / f"{stem}.pdparams")
            want = sorted(key.partition("/")[2] for key in expected.files if key.startswith(stem + "/"))
            assert sorted(got) == want, (stem, sorted(got), want)
            for name, array in got.items():
                key = f"{stem}/{name}"
                assert array.dtype.name == dtypes[key], (key, array.dtype)
                np.testing.assert_array_equal(array.astype(np.float64), expected[key], err_msg=key)
            print(stem, len(got))
    """, str(tmp_path), json.dumps(dtypes))
    assert out.split() == ["p2", "3", "p3", "3", "p4", "3", "mixed2", "2", "mixed4", "2", "flax", "4", "chunked", "4"]


# --------------------------------------------------------------------------- the same bytes as the backends


@pytest.mark.parametrize("preset,dtype", WRITER_CASES)
def test_pdparams_writer_is_byte_identical_to_the_paddle_backend(tmp_path, preset, dtype):
    import paddle

    weights = _preset_weights(preset, dtype)
    backend_file, ours = tmp_path / "backend.pdparams", tmp_path / "ours.pdparams"
    get_backend("paddle").save_native(backend_file, weights)
    state = pdparams.read(backend_file)
    pdparams.write(ours, state)
    assert ours.read_bytes() == backend_file.read_bytes()
    # the reader sees what paddle.load sees: names, order, dtypes (uint16 bits = bfloat16) and bits
    loaded = paddle.load(str(backend_file))
    assert list(loaded) == list(state)
    for name, tensor in loaded.items():
        assert str(tensor.dtype).rpartition(".")[2] == state[name].dtype.name, name
        bits = tensor.numpy()  # Paddle gives a bfloat16 tensor's bits as uint16
        assert bits.shape == state[name].shape and bits.tobytes() == state[name].tobytes(), name


def test_pdparams_writer_of_nothing_is_paddle_saves(tmp_path):
    get_backend("paddle").save_native(tmp_path / "backend.pdparams", {})
    pdparams.write(tmp_path / "ours.pdparams", {})
    assert (tmp_path / "ours.pdparams").read_bytes() == (tmp_path / "backend.pdparams").read_bytes()
    assert pdparams.read(tmp_path / "ours.pdparams") == {}


@pytest.mark.parametrize("preset,dtype", WRITER_CASES)
def test_msgpack_writer_is_byte_identical_to_the_flax_backend(tmp_path, preset, dtype):
    from flax import serialization

    weights = _preset_weights(preset, dtype)
    backend_file, ours = tmp_path / "backend.msgpack", tmp_path / "ours.msgpack"
    get_backend("flax").save_native(backend_file, weights)
    flat = msgpack_stream.read(backend_file)
    msgpack_stream.write(ours, msgpack_stream.nested(flat))
    assert ours.read_bytes() == backend_file.read_bytes()
    # the reader sees what Flax's msgpack_restore sees: names, order, dtypes and bits
    assert_same_bits(flat, msgpack_stream.flatten(serialization.msgpack_restore(backend_file.read_bytes())),
                     "msgpack_restore")


def test_msgpack_writer_is_flax_serialize_for_chunks_scalars_and_every_dtype(tmp_path, monkeypatch):
    from flax import serialization

    rng = np.random.default_rng(2)
    tree = {name: {"kernel": rng.standard_normal((3, 3, 2, 4)).astype(dtype).transpose(1, 0, 2, 3),
                   "bias": rng.standard_normal(4).astype(dtype), "10": {"x": np.arange(3)}, "2": {"x": np.ones(1)}}
            for name, dtype in DTYPES.items()}
    for limit in (serialization.MAX_CHUNK_SIZE, 40):  # 40 bytes: most arrays in chunks, some chunks partial
        monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", limit)
        monkeypatch.setattr(msgpack_stream, "MAX_CHUNK_SIZE", limit)
        path = tmp_path / f"{limit}.msgpack"
        msgpack_stream.write(path, tree)
        assert path.read_bytes() == serialization.msgpack_serialize(tree), limit
        restored = msgpack_stream.flatten(serialization.msgpack_restore(path.read_bytes()))
        assert_same_bits(msgpack_stream.read(path), restored, f"chunks of {limit} bytes")
    # a numpy scalar (an optimizer's step count, say) is Flax's scalar record; the reader wants arrays
    with_scalar = {**tree, "step": np.float32(3.5)}
    msgpack_stream.write(tmp_path / "scalar.msgpack", with_scalar)
    assert (tmp_path / "scalar.msgpack").read_bytes() == serialization.msgpack_serialize(with_scalar)
    with pytest.raises(ValueError, match="step is a float32, expected an array"):
        msgpack_stream.read(tmp_path / "scalar.msgpack")


def test_msgpack_reads_what_flax_writes_for_a_model(tmp_path, monkeypatch):
    """The nnx state of a built model, serialized by Flax (integer keys for numbered children), in
    float32 and bfloat16, whole and in chunks."""
    from flax import nnx, serialization

    spec = tiny_spec()
    for dtype in ("float32", "bfloat16"):
        model = rm.build(spec, "flax", weights=random_weights(rm.make_plan(spec), seed=3), dtype=dtype)
        tree = nnx.to_pure_dict(nnx.state(model))
        for limit in (serialization.MAX_CHUNK_SIZE, 256):
            monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", limit)
            path = tmp_path / f"{dtype}{limit}.msgpack"
            path.write_bytes(serialization.msgpack_serialize(tree))
            expected = msgpack_stream.flatten(serialization.msgpack_restore(path.read_bytes()))
            assert {array.dtype.name for array in expected.values()} == {dtype}
            assert_same_bits(msgpack_stream.read(path), expected, f"{dtype}, chunks of {limit} bytes")


def test_lazy_maps_are_fetched_as_the_file_is_written(tmp_path):
    """dump calls each map's items() once, when that map is written, so a backend's renaming view
    fetches (and reports) each module's tensors in file order."""
    fetched = []

    class Lazy(dict):
        def items(self):
            fetched.append(sorted(self))
            return super().items()

    tree = Lazy(b=Lazy(y=np.zeros(2)), a=Lazy(x=np.ones(2)))
    msgpack_stream.write(tmp_path / "w.msgpack", tree)
    assert fetched == [["a", "b"], ["x"], ["y"]]


def test_msgpack_codec_holds_one_array_at_a_time(tmp_path):
    """Writing needs about one array's encoding beyond the tree; reading the arrays plus that (not
    the file's bytes beside them, as reading the file and calling msgpack_restore would). tracemalloc
    sees numpy's buffers and msgpack's bytes; the slack covers the 1 MiB read buffer and small objects."""
    import tracemalloc

    rng = np.random.default_rng(0)
    tree = {"layer1": {str(i): {"conv1": {"kernel": rng.standard_normal((3, 3, 64, 64), dtype=np.float32)},
                                "bn1": {"scale": rng.standard_normal(64, dtype=np.float32)}} for i in range(120)}}
    payload = sum(array.nbytes for array in msgpack_stream.flatten(tree).values())  # 17.7 MB, largest 147 kB
    slack = 4 * 2**20
    path = tmp_path / "w.msgpack"

    def peak_extra(call):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        return tracemalloc.get_traced_memory()[1] - before, result

    tracemalloc.start()
    try:
        write_peak, _ = peak_extra(lambda: msgpack_stream.write(path, tree))
        read_peak, flat = peak_extra(lambda: msgpack_stream.read(path))
    finally:
        tracemalloc.stop()
    assert write_peak <= slack, f"write: {write_peak / 1e6:.1f} MB above the tree ({payload / 1e6:.1f} MB)"
    assert read_peak <= payload + slack, f"read: {read_peak / 1e6:.1f} MB for {payload / 1e6:.1f} MB"
    assert len(flat) == 240


# --------------------------------------------------------------------------- safety


class _Reduce:
    """Pickles as the call ``function(*args)``: how a pickle runs code, and how paddle.save writes
    DenseTensors (``eval``) and protocol 2's bytes (``_codecs.encode``)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("function,message", [(open, f"refusing to load {open.__module__}.open"),
                                              (os.system, f"refusing to load {os.system.__module__}.system")])
def test_pdparams_refuses_code_in_the_pickle(tmp_path, protocol, function, message):
    marker = tmp_path / "ran"  # would be created if the pickle's call ran
    call = _Reduce(function, str(marker), "w") if function is open else _Reduce(function, f"touch {marker}")
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"x": call}, protocol=protocol))
    with pytest.raises(ValueError, match=message) as info:
        pdparams.read(path)
    assert str(path) in str(info.value) and not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("call,message", [
    (_Reduce(eval, "__import__('os').getcwd()", {}), "unexpected eval"),
    (_Reduce(eval, "data", {"data": 3}), "unexpected eval"),
    (_Reduce(codecs.encode, "abc", "rot13"), "unexpected _codecs.encode"),
])
def test_pdparams_allowed_globals_take_only_their_safe_arguments(tmp_path, call, message, protocol):
    path = tmp_path / "bad.pdparams"
    path.write_bytes(pickle.dumps({"x": call}, protocol=protocol))
    with pytest.raises(ValueError, match=message):
        pdparams.read(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_pdparams_allowed_globals_do_their_job(tmp_path, protocol):
    array = np.arange(6.0).reshape(2, 3)
    path = tmp_path / "ok.pdparams"
    path.write_bytes(pickle.dumps({"t": _Reduce(eval, "data", {"data": array}), "b": _Reduce(tuple, ("n", array))},
                                  protocol=protocol))
    state = pdparams.read(path)
    assert list(state) == ["t", "b"]
    np.testing.assert_array_equal(state["t"], array)
    np.testing.assert_array_equal(state["b"], array)


def test_pdparams_corrupt_files_name_the_file(tmp_path):
    good = tmp_path / "good.pdparams"
    pdparams.write(good, {"conv1.weight": np.ones((2, 2, 3, 3), np.float32), "fc.bias": np.zeros(2)})
    data = good.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "not a readable Paddle .pdparams file"),
        "garbage": (b"\x00not a pickle at all" * 10, "not a readable Paddle .pdparams file"),
        "not_a_dict": (pickle.dumps([1, 2, 3], protocol=4), "expected a dict of arrays, found list"),
        "not_arrays": (pickle.dumps({"a": 1, 2: np.ones(2)}, protocol=4), "2 entries are not named arrays"),
        "bad_slices": (pickle.dumps({pdparams.BIG_PARAM_INFO: {"w": {"slices": ["w@@.0"], "OriginShape": (3,)}}},
                                    protocol=4), "malformed UnpackBigParamInfor@@ entry"),
    }
    for stem, (payload, message) in cases.items():
        path = tmp_path / f"{stem}.pdparams"
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=message) as info:
            pdparams.read(path)
        assert str(path) in str(info.value), stem
    with pytest.raises(FileNotFoundError, match="missing.pdparams"):
        pdparams.read(tmp_path / "missing.pdparams")


def test_pdparams_joins_big_tensor_slices_as_paddle_load_does(tmp_path):
    whole = np.arange(10, dtype=np.float32).reshape(2, 5)
    flat = whole.reshape(-1)
    saved = {"a": np.ones(2), "w@@.0": flat[:4], "w@@.1": flat[4:8], "w@@.2": flat[8:],
             pdparams.NAME_TABLE: {"a": "param_0"},
             pdparams.BIG_PARAM_INFO: {"w": {"OriginShape": (2, 5), "slices": ["w@@.0", "w@@.1", "w@@.2"]}}}
    path = tmp_path / "big.pdparams"
    path.write_bytes(pickle.dumps(saved, protocol=2))
    state = pdparams.read(path)
    assert list(state) == ["a", "w"]
    np.testing.assert_array_equal(state["w"], whole)


def test_msgpack_corrupt_files_name_the_file_and_tensor(tmp_path):
    good = tmp_path / "good.msgpack"
    msgpack_stream.write(good, {"conv1": {"kernel": np.ones((3, 3, 2, 4), np.float32)}, "fc": {"bias": np.ones(3)}})
    data = good.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "not a readable Flax msgpack file"),
        "cut_in_header": (data[:3], "not a readable Flax msgpack file"),
        "garbage": (b"\xc1\x00 not msgpack at all", "not a readable Flax msgpack file"),
        "empty": (b"", "not a readable Flax msgpack file"),
        "trailing": (data + b"\x00", "extra data"),
        "list": (msgpack.packb([1, 2]), "expected a nested dict of arrays (a Flax state dict), found list"),
        "bad_array": (msgpack.packb({"conv1": {"kernel": msgpack.ExtType(1, b"\x93junk")}}),
                      "conv1.kernel is not a readable Flax array"),
        "bad_chunks": (msgpack.packb({"w": {msgpack_stream.CHUNKED: True, "shape": {"0": 9}, "chunks": {}}}),
                       "w is not a readable Flax array"),
        "number": (msgpack.packb({"fc": {"bias": 3}}), "fc.bias is a int, expected an array"),
    }
    for stem, (payload, message) in cases.items():
        path = tmp_path / f"{stem}.msgpack"
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=f"{stem}.msgpack") as info:
            msgpack_stream.read(path)
        assert message in str(info.value), (stem, str(info.value))


def test_msgpack_length_beyond_the_file_is_refused_before_allocating(tmp_path):
    # a bin32 record claiming 2 GiB in a tiny file: refused by the buffer limit, not attempted
    path = tmp_path / "liar.msgpack"
    path.write_bytes(b"\x81\xa1w\xc6\x7f\xff\xff\xff" + b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable Flax msgpack file"):
        msgpack_stream.read(path)


def test_msgpack_writer_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="a.b: expected an array, found str"):
        msgpack_stream.write(tmp_path / "w.msgpack", {"a": {"b": "text"}})
    with pytest.raises(ValueError, match="a: object and structured dtypes"):
        msgpack_stream.write(tmp_path / "w.msgpack", {"a": np.array([None])})

    class Twice(dict):
        def items(self):
            return [("k", np.ones(1)), ("k", np.zeros(1))]

    with pytest.raises(ValueError, match="m.k: two entries of the map have this key"):
        msgpack_stream.write(tmp_path / "w.msgpack", {"m": Twice()})


# --------------------------------------------------------------------------- sniffing


def test_suffix_table_is_the_registrys(monkeypatch):
    assert sniff.formats() == {**registry.native_suffixes(), ".safetensors": "neutral"}
    # asked at call time, not copied: a backend the registry gains is a format at once
    monkeypatch.setattr(sniff, "native_suffixes", lambda: {".npz": "toy"})
    assert sniff.format_of_suffix("w.NPZ") == "toy" and convert.formats() == {".npz": "toy", ".safetensors": "neutral"}
    with pytest.raises(ValueError, match=r"unknown checkpoint suffix '\.pt'; known: \.npz \(toy\)"):
        sniff.format_of_suffix("w.pt")


def test_old_import_paths_give_the_same_objects():
    assert convert.CheckpointError is sniff.CheckpointError is rm.CheckpointError
    assert (convert.NEUTRAL, convert.detect_format, convert.format_of_suffix) == \
        (sniff.NEUTRAL, sniff.detect_format, sniff.format_of_suffix)
    assert weights_module.NEUTRAL_SUFFIX == sniff.NEUTRAL_SUFFIX == ".safetensors"
    assert (io_util.atomic_path, io_util.atomic_write_text, io_util.check_output_dir) == \
        (atomic.atomic_path, atomic.atomic_write_text, atomic.check_output_dir)


@pytest.mark.parametrize("head,size,kind", [
    (b"PK\x03\x04rest", 100, "zip"),
    (sniff._TORCH_LEGACY_MAGIC, 100, "torch_legacy"),
    (b"\x80\x04\x95", 100, "pickle"),
    (b"\x80\x02}", 100, "pickle"),
    ((20).to_bytes(8, "little") + b"{", 100, "safetensors"),
    ((200).to_bytes(8, "little") + b"{", 100, None),  # a header longer than the file
    (b"\x83\xa1a", 100, "msgpack_map"),
    (b"\xde\x00\x20", 100, "msgpack_map"),
    (b"\x00\x01", 100, None),
])
def test_looks_like(head, size, kind):
    assert sniff.looks_like(head, size) == kind


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("fmt", sorted(set(sniff.formats().values())))
def test_one_temporary_file_per_write(tmp_path, monkeypatch, fmt):
    """However many layers ask for atomicity (write_canonical, save_weights, a backend's save_native),
    a write makes one temporary file, renamed onto the output."""
    made = []
    new_temp = atomic._new_temp
    monkeypatch.setattr(atomic, "_new_temp", lambda path: made.append(new_temp(path)) or made[-1])
    spec = tiny_spec()
    suffix = next(s for s, f in sniff.formats().items() if f == fmt)
    path = tmp_path / f"w{suffix}"
    convert.write_canonical(path, random_weights(rm.make_plan(spec)), spec)
    assert len(made) == 1 and made[0].parent == tmp_path and not made[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert sniff.detect_format(path) == fmt


def test_nested_atomic_path_is_the_same_write(tmp_path):
    target = tmp_path / "out.bin"
    with atomic.atomic_path(target) as tmp:
        with atomic.atomic_path(tmp, overwrite=False) as inner:  # the temporary file exists: no refusal
            assert inner == tmp
            inner.write_bytes(b"data")
        assert tmp.read_bytes() == b"data" and not target.exists()  # renamed by the outer block only
    assert target.read_bytes() == b"data" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    with pytest.raises(OSError, match="simulated"):
        with atomic.atomic_path(target) as tmp:
            with atomic.atomic_path(tmp) as inner:
                inner.write_bytes(b"half")
                raise OSError("simulated")
    assert target.read_bytes() == b"data" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    assert not atomic._OPEN_TEMPS
    # a file of the same name that no atomic_path has open is written through a temporary file
    with atomic.atomic_path(tmp_path / "plain.bin") as tmp:
        assert tmp != tmp_path / "plain.bin"
        tmp.write_bytes(b"x")
