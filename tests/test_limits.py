"""Absurd specs and inputs are refused before anything is built or allocated (resnet_multi.limits),
and every float setting is finite and means something in float32."""

from __future__ import annotations

import re
import time

import pytest

import resnet_multi as rm


def _resnet18(**stage0) -> rm.ResNetSpec:
    data = rm.get_spec("resnet18").to_dict()
    data["stages"][0].update(stage0)
    return rm.ResNetSpec.from_dict(data)


@pytest.mark.parametrize("spec, limit", [
    (_resnet18(depth=10 ** 9), "max_blocks"),
    (_resnet18(channels=100_000), "max_parameters"),
])
def test_absurd_spec_is_refused_before_anything_is_allocated(spec, limit):
    start = time.perf_counter()
    for call in (lambda: rm.summary(spec, input_shape=(1, 3, 64, 64)), lambda: rm.make_plan(spec)):
        with pytest.raises(rm.LimitError, match=rf"above the limit .*rm\.limits\({limit}="):
            call()
    assert time.perf_counter() - start < 5, "refused only after building"


def test_absurd_input_is_refused_and_limits_can_be_raised_on_purpose():
    with pytest.raises(rm.LimitError, match="activation memory"):
        rm.summary("resnet18", input_shape=(64, 3, 8192, 8192))
    with rm.limits(max_activation_bytes=10 ** 15, max_macs=10 ** 16):
        assert rm.summary("resnet18", input_shape=(64, 3, 8192, 8192)).total_macs > 10 ** 14
    with pytest.raises(rm.LimitError):  # restored on leaving the block
        rm.summary("resnet18", input_shape=(64, 3, 8192, 8192))
    with pytest.raises(TypeError, match="unknown limit"):
        with rm.limits(max_weights=1):
            pass


def test_summary_is_linear_in_depth():
    """Plan.part_params looks parameters up per module: 10x the blocks costs about 10x, not 100x."""
    def seconds(depth):
        start = time.perf_counter()
        rm.summary(_resnet18(depth=depth), input_shape=(1, 3, 32, 32))
        return time.perf_counter() - start

    seconds(50)  # warm up
    small, large = min(seconds(200) for _ in range(2)), min(seconds(2000) for _ in range(2))
    assert large < 30 * small, f"depth 2000 took {large:.2f} s, depth 200 {small:.2f} s: worse than linear"


@pytest.mark.parametrize("path, value", [
    ("norm.eps", float("inf")), ("norm.eps", 1e39), ("norm.eps", 1e-50), ("head.dropout", 1e-45),
])
def test_float_settings_must_mean_something_in_float32(path, value):
    data = rm.get_spec("resnet18").to_dict()
    section, name = path.split(".")
    data[section][name] = value
    expected = rf"{path}: must be a finite number that float32 can hold.*got {re.escape(repr(value))}"
    with pytest.raises(rm.SpecError, match=expected):
        rm.ResNetSpec.from_dict(data)


def test_ghost_block_settings_are_checked_too():
    data = rm.get_spec("ghostnet_100").to_dict()
    data["stages"][3]["blocks"][0]["se_ratio"] = 1e-45
    with pytest.raises(rm.SpecError, match=r"stages\[3\]\.blocks\[0\]\.se_ratio: must be a finite number"):
        rm.ResNetSpec.from_dict(data)


def test_a_files_stored_spec_is_sized_before_any_tensor_is_read(tmp_path):
    """A safetensors file whose stored spec says depth 1e9 (and whose one tensor is 400 MB): refused by
    ``load_weights``, ``inspect`` and ``convert`` quickly, naming the file, before the tensor is read."""
    import json
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import save_file

    data = rm.get_spec("resnet18").to_dict()
    data["stages"][0]["depth"] = 10 ** 9
    path = tmp_path / "absurd.safetensors"
    save_file({"fc.weight": np.zeros((10 ** 8,), np.float32)}, str(path),
              metadata={"resnet_multi.format": "1", "resnet_multi.spec": json.dumps(data)})
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(rm.LimitError, match=rf"^{re.escape(str(path))}: the spec stored in the file: .*max_blocks"):
            rm.load_weights(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 50e6, f"{peak / 1e6:.0f} MB"
    for argv in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "out.safetensors")]):
        run = subprocess.run([sys.executable, "-m", "resnet_multi.cli", *argv], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 1 and run.stderr.startswith(f"resnet-multi {argv[0]}: error: {path}: the spec"), \
            run.stderr
