"""The neutral weight file: safetensors with canonical names, the spec and a format version in
the metadata; checked before writing; corrupt files named in the error; dtypes kept."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi.weights import FORMAT_KEY, FORMAT_VERSION, SPEC_KEY, random_weights


def small_spec() -> rm.ResNetSpec:
    """A resnet18 with few channels: same names as the preset, tiny tensors."""
    spec = rm.get_spec("resnet18")
    stages = tuple(s.__class__(depth=1, channels=4 * 2 ** i, stride=s.stride) for i, s in enumerate(spec.stages))
    return spec.replace(name="tiny18", stages=stages, head=rm.HeadSpec(num_classes=5))


def _tmp_files(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_round_trip_keeps_names_bits_dtypes_and_spec(tmp_path):
    spec = small_spec()
    weights = random_weights(rm.make_plan(spec), seed=1)
    weights["fc.weight"] = weights["fc.weight"].astype(np.float16)  # dtypes are stored as they are
    weights["fc.bias"] = weights["fc.bias"].astype(np.float64)
    path = tmp_path / "w.safetensors"
    rm.save_weights(path, weights, spec=spec)
    loaded, loaded_spec = rm.load_weights(path)
    assert loaded_spec == spec
    assert list(loaded) == list(rm.make_plan(spec).params)  # the plan's order when the spec is known
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes(), name
    assert _tmp_files(tmp_path) == []


def test_metadata_holds_spec_json_and_format_version(tmp_path):
    from safetensors import safe_open

    spec = small_spec()
    path = tmp_path / "w.safetensors"
    rm.save_weights(path, random_weights(rm.make_plan(spec)), spec=spec)
    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata()
    assert metadata[FORMAT_KEY] == FORMAT_VERSION
    assert rm.ResNetSpec.from_dict(json.loads(metadata[SPEC_KEY])) == spec


def test_without_spec_any_canonical_dict_round_trips(tmp_path):
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.num_batches_tracked": np.array(3)}
    path = tmp_path / "w.safetensors"
    rm.save_weights(path, weights)
    loaded, spec = rm.load_weights(path)
    assert spec is None and list(loaded) == ["a.weight"]  # the framework extra is dropped explicitly
    np.testing.assert_array_equal(loaded["a.weight"], weights["a.weight"])


def test_weights_checked_against_spec_before_writing(tmp_path):
    spec = small_spec()
    weights = random_weights(rm.make_plan(spec))
    del weights["fc.bias"]
    weights["conv1.weight"] = weights["conv1.weight"][:, :1]
    weights["extra.weight"] = np.zeros(2, np.float32)
    path = tmp_path / "w.safetensors"
    with pytest.raises(rm.WeightsError) as info:
        rm.save_weights(path, weights, spec=spec)
    message = str(info.value)
    # all problems at once, by name, with expected and found shapes
    assert "fc.bias" in message and "extra.weight" in message
    assert "conv1.weight (expected (64, 3, 7, 7), found (64, 1, 7, 7))" in message
    assert info.value.missing == ["fc.bias"] and info.value.unexpected == ["extra.weight"]
    assert not path.exists() and _tmp_files(tmp_path) == []


def test_force_false_refuses_existing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="w.safetensors exists"):
        rm.save_weights(path, {"a": np.zeros(1, np.float32)}, force=False)
    assert path.read_bytes() == b"keep me"


def _corrupt_variants(good: bytes) -> dict[str, bytes]:
    (header_len,) = struct.unpack("<Q", good[:8])
    return {
        "empty": b"",
        "garbage": b"this is not a safetensors file at all",
        "truncated_header": good[: 8 + header_len // 2],
        "truncated_data": good[:-7],
        "huge_header_length": struct.pack("<Q", 1 << 40) + good[8:],
    }


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated_header", "truncated_data", "huge_header_length"])
def test_corrupt_file_is_a_clear_error(tmp_path, kind):
    spec = small_spec()
    good = tmp_path / "good.safetensors"
    rm.save_weights(good, random_weights(rm.make_plan(spec)), spec=spec)
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes(_corrupt_variants(good.read_bytes())[kind])
    with pytest.raises(ValueError, match=f"{kind}.safetensors"):
        rm.load_weights(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        rm.load_weights(tmp_path / "nope.safetensors")


def _write_with_metadata(path, weights, metadata):
    from safetensors.numpy import save_file

    save_file(weights, str(path), metadata=metadata)


def test_newer_format_version_and_bad_spec_metadata(tmp_path):
    weights = {"a": np.zeros(2, np.float32)}
    _write_with_metadata(tmp_path / "v2.safetensors", weights, {FORMAT_KEY: "2"})
    with pytest.raises(ValueError, match="v2.safetensors: neutral format version '2'"):
        rm.load_weights(tmp_path / "v2.safetensors")
    _write_with_metadata(tmp_path / "bad.safetensors", weights, {FORMAT_KEY: FORMAT_VERSION, SPEC_KEY: "{oops"})
    with pytest.raises(ValueError, match="bad.safetensors: invalid spec in the metadata") as info:
        rm.load_weights(tmp_path / "bad.safetensors")
    assert not isinstance(info.value, rm.SpecError)  # a bad file, not a bad argument (CLI exit 1, not 2)


def test_tensors_that_do_not_fit_the_stored_spec(tmp_path):
    spec = small_spec()
    weights = random_weights(rm.make_plan(spec))
    del weights["fc.weight"]
    _write_with_metadata(tmp_path / "w.safetensors", weights, {FORMAT_KEY: FORMAT_VERSION, SPEC_KEY: spec.to_json()})
    with pytest.raises(rm.WeightsError, match=r"w.safetensors .*fc.weight"):
        rm.load_weights(tmp_path / "w.safetensors")


def test_foreign_safetensors_without_metadata(tmp_path):
    """A plain safetensors file of canonical names (e.g. timm's model.safetensors) reads with spec None."""
    _write_with_metadata(tmp_path / "timm.safetensors", {"conv1.weight": np.ones((2, 3, 1, 1), np.float32)}, None)
    weights, spec = rm.load_weights(tmp_path / "timm.safetensors")
    assert spec is None and weights["conv1.weight"].shape == (2, 3, 1, 1)
