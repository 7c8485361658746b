"""Every reader against arbitrary and mutated bytes (issue 19): each file is either read, or refused
with one clear error naming it (a ValueError or OSError: CheckpointError, WeightsError, SpecError and
LimitError are ValueErrors), within bounded time and memory. Never another exception, a hang or a
memory blow-up (docs/DESIGN.md, "Untrusted files").

The checkpoint readers are fed small valid files of a tiny network with bytes flipped, cut,
repeated or inserted, and bytes from nowhere; the spec readers YAML and JSON text likewise.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet_multi as rm
from resnet_multi.convert import read_canonical, write_canonical
from resnet_multi.formats import pdparams
from resnet_multi.weights import random_weights

SECONDS = 10.0
"""Per file: far above what a valid tiny file takes (milliseconds), far below a hang."""
PEAK_BYTES = 64 * 2 ** 20
"""Per file, as tracemalloc sees it (numpy's and Python's allocations): the files are a few KB."""

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def tiny_spec() -> rm.ResNetSpec:
    spec = rm.get_spec("resnet18")
    stages = tuple(dataclasses.replace(s, depth=1, channels=2) for s in spec.stages[:2])
    return spec.replace(name="fuzz", stages=stages, stem=dataclasses.replace(spec.stem, widths=(2,)),
                        head=rm.HeadSpec(num_classes=2))


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """One small valid file per checkpoint suffix, and valid spec texts."""
    directory = tmp_path_factory.mktemp("valid")
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=0)
    files = {}
    for suffix in (".pth", ".pdparams", ".msgpack", ".safetensors"):
        path = directory / f"valid{suffix}"
        write_canonical(path, weights, spec)
        files[suffix] = path.read_bytes()
    rm.save_spec(spec, directory / "spec.yaml")
    rm.save_spec(spec, directory / "spec.json")
    files[".yaml"] = (directory / "spec.yaml").read_bytes()
    files[".json"] = (directory / "spec.json").read_bytes()
    return files


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, a piece cut out, repeated or inserted, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "repeat", "insert", "truncate"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


def assert_read_or_refused(read, path) -> None:
    """``read(path)`` returns, or raises a ValueError/OSError naming the file, in bounded time and memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        read(path)
    except (ValueError, OSError) as error:
        assert path.name in str(error), f"{type(error).__name__} does not name the file: {error}"
        assert "\n" not in str(error).strip(), f"not one line: {error}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < SECONDS
    assert peak < PEAK_BYTES, f"{peak / 2 ** 20:.0f} MiB"


def _write(tmp_path, suffix, data: bytes):
    path = tmp_path / f"fuzzed{suffix}"
    path.write_bytes(data)
    return path


# .pdparams: the core codec (formats.pdparams.read), which the Paddle backend is to read through
CHECKPOINT_READERS = {".pth": read_canonical, ".msgpack": read_canonical, ".safetensors": read_canonical,
                      ".pdparams": pdparams.read}


@pytest.mark.parametrize("suffix", list(CHECKPOINT_READERS))
def test_checkpoint_readers_on_mutated_files(suffix, valid_files, tmp_path):
    read = CHECKPOINT_READERS[suffix]
    read(_write(tmp_path, suffix, valid_files[suffix]))  # the valid file itself is read

    @FUZZ
    @given(data=mutated(valid_files[suffix]))
    def check(data):
        assert_read_or_refused(read, _write(tmp_path, suffix, data))
    check()


@pytest.mark.parametrize("suffix", list(CHECKPOINT_READERS))
def test_checkpoint_readers_on_arbitrary_bytes(suffix, valid_files, tmp_path):
    read = CHECKPOINT_READERS[suffix]
    head = valid_files[suffix][:16]  # sometimes the right magic, so the parser itself is reached

    @FUZZ
    @given(prefix=st.sampled_from([b"", head]), data=st.binary(max_size=512))
    def check(prefix, data):
        assert_read_or_refused(read, _write(tmp_path, suffix, prefix + data))
    check()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_spec_readers_on_mutated_and_arbitrary_text(suffix, valid_files, tmp_path):
    rm.load_spec(_write(tmp_path, suffix, valid_files[suffix]))

    @FUZZ
    @given(data=st.one_of(mutated(valid_files[suffix]), st.binary(max_size=256),
                          st.text(max_size=256).map(str.encode)))
    def check(data):
        assert_read_or_refused(rm.load_spec, _write(tmp_path, suffix, data))
    check()


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    """Nine levels of ten aliases (1e9 strings if expanded) in the stages: refused at the first entry."""
    lines = ["name: bomb", "stages:", '  - &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = _write(tmp_path, ".yaml", "\n".join(lines).encode())
    assert_read_or_refused(rm.load_spec, path)
    with pytest.raises(rm.SpecError, match=r"stages\[0\]"):
        rm.load_spec(path)


def test_the_valid_files_are_read_equal(valid_files, tmp_path):
    """The fuzzing starts from files that are read back as written (so a mutation is what fails)."""
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=0)
    for suffix in (".pth", ".msgpack", ".safetensors"):
        got, _ = read_canonical(_write(tmp_path, suffix, valid_files[suffix]))
        assert sorted(got) == sorted(weights)
        for name, array in weights.items():
            np.testing.assert_array_equal(got[name], array)
