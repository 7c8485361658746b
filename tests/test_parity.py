"""check_parity / ParityReport / the `parity` command, and fault localization: a parity check
must not only fail on a wrong port, it must name the backend and the first tap that is wrong."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import _wrong_backends as wrong
import resnet_multi as rm
from conftest import BACKENDS, odd_input, small
from resnet_multi import cli
from resnet_multi.parity import Divergence, check_models
from resnet_multi.weights import random_weights


SMALL_R18 = small(rm.get_spec("resnet18"))
SMALL_R50 = small(rm.get_spec("resnet50"))


# --------------------------------------------------------------------------- the report


def test_passing_report():
    report = rm.check_parity(SMALL_R18, backends=("torch",))
    plan = rm.make_plan(SMALL_R18)
    assert report.ok and report.first_divergence is None and report.divergences == {}
    assert report.input_shape == (1, 3, 33, 47)  # the documented default: odd, non-square
    assert [r.tap for r in report.rows("torch")] == list(plan.tap_names)
    for r in report.results:
        assert r.ok and r.max_abs <= r.bound == pytest.approx(1e-6 + 1e-5 * r.max_ref)
        assert r.rel == pytest.approx(r.max_abs / r.max_ref)
        assert r.shape == plan.shapes(report.input_shape)[r.tap]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["first_divergence"] is None and data["reference"] == "numpy"
    assert len(data["results"]) == len(plan.tap_names)
    assert data["summary"]["torch"]["passed"] == len(plan.tap_names)
    text = str(report)
    assert "torch" in text and "all 15 comparisons pass" in text and "layer3.1" not in text
    assert "layer3.1" in report.format(all_taps=True)


def test_numpy_as_a_row_against_a_backend_reference():
    report = rm.check_parity(SMALL_R18, backends=("torch", "numpy"), reference="torch")
    assert report.ok and report.reference == "torch" and report.backends == ("numpy",)


def test_user_inputs_and_weights_are_used():
    plan = rm.make_plan(SMALL_R18)
    weights = random_weights(plan, seed=5)
    x = np.random.default_rng(9).standard_normal((2, 3, 21, 18))
    report = rm.check_parity(SMALL_R18, backends=("torch",), weights=weights, inputs=x)
    assert report.ok and report.input_shape == (2, 3, 21, 18)
    # the same weights and input give the same figures through check_models
    model = rm.build(SMALL_R18, "torch", weights=weights)
    again = check_models({"torch": model}, x, weights=weights)
    assert [r.max_abs for r in again.results] == [r.max_abs for r in report.results]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_checkpoint_file(tmp_path, suffix):
    from resnet_multi.convert import write_canonical

    plan = rm.make_plan(SMALL_R18)
    path = write_canonical(tmp_path / f"w{suffix}", random_weights(plan, seed=2), spec=SMALL_R18)
    assert rm.check_parity(SMALL_R18, backends=("torch",), weights=path).ok
    assert main(["parity", _spec_file(tmp_path, SMALL_R18), "--backends", "torch", "--weights", str(path)]) == 0


def test_bad_arguments_are_named():
    with pytest.raises(rm.BackendError, match="unknown backend 'tensorflow'"):
        rm.check_parity(SMALL_R18, backends=("torch", "tensorflow"))
    with pytest.raises(rm.BackendError, match="already the reference"):
        rm.check_parity(SMALL_R18, backends=("numpy",))
    with pytest.raises(ValueError, match="3 input channel"):
        rm.check_parity(SMALL_R18, backends=("torch",), input_shape=(1, 1, 33, 47))
    with pytest.raises(ValueError, match="input_shape"):
        rm.check_parity(SMALL_R18, backends=("torch",), inputs=np.zeros((1, 3, 8, 8)), input_shape=(1, 3, 9, 9))
    with pytest.raises(ValueError, match="rtol"):
        rm.check_parity(SMALL_R18, backends=("torch",), rtol=-1)
    with pytest.raises(rm.WeightsError, match="fc.weight"):
        rm.check_parity(SMALL_R18, backends=("torch",), weights={"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(KeyError, match="resnet5000"):
        rm.check_parity("resnet5000", backends=("torch",))


def test_missing_and_misshaped_taps_fail_without_crashing():
    plan = rm.make_plan(SMALL_R18)
    ref = rm.reference_forward(plan, random_weights(plan), np.ones((1, 3, 33, 47)), taps=True)
    outputs = dict(ref)
    del outputs["layer2.1"]
    outputs["layer3"] = ref["layer3"][:, :, :-1]
    outputs["logits"] = np.full_like(ref["logits"], np.nan)
    report = rm.parity.compare_outputs(plan, {"x": outputs}, ref, input_shape=(1, 3, 33, 47))
    failed = {r.tap: r for r in report.failures()}
    assert list(failed) == ["layer2.1", "layer3", "logits"]
    assert "missing" in failed["layer2.1"].note and "shape" in failed["layer3"].note
    assert math.isnan(failed["logits"].max_abs)
    assert report.first_divergence.tap == "layer2.1"
    json.dumps(report.to_dict(), allow_nan=False)  # inf / nan are null in JSON


def test_first_divergence_is_earliest_in_execution_order():
    plan = rm.make_plan(SMALL_R18)
    ref = rm.reference_forward(plan, random_weights(plan), np.ones((1, 3, 33, 47)), taps=True)
    late = {**ref, "logits": ref["logits"] + 1}
    early = {**ref, **{t: ref[t] + 1 for t in plan.tap_names[plan.tap_names.index("layer2.0"):]}}
    report = rm.parity.compare_outputs(plan, {"a": late, "b": early, "c": ref}, ref, input_shape=(1, 3, 33, 47))
    first = report.first_divergence
    assert isinstance(first, Divergence) and (first.backend, first.tap) == ("b", "layer2.0")
    assert first.max_abs == pytest.approx(1.0) and first.rel == pytest.approx(1.0 / np.abs(ref["layer2.0"]).max())
    assert report.divergences["a"].tap == "logits" and "c" not in report.divergences
    assert "first divergence: b at layer2.0" in str(report)


# --------------------------------------------------------------------------- fault localization


@pytest.mark.parametrize("victim", BACKENDS)
def test_one_perturbed_parameter_in_one_backend_is_located(victim):
    """Same weights everywhere except layer3.2.bn2.running_var in ``victim``: the report must
    name ``victim`` and layer3.2 (every earlier tap still agrees), and the others pass."""
    plan = rm.make_plan(SMALL_R50)
    weights = random_weights(plan, seed=1)
    models = {name: rm.build(SMALL_R50, name, weights=weights) for name in BACKENDS}
    rm.import_weights(models[victim], {"layer3.2.bn2.running_var": weights["layer3.2.bn2.running_var"] * 2},
                      strict=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 33, 47))
    report = check_models(models, x, weights=weights)
    assert not report.ok
    first = report.first_divergence
    assert (first.backend, first.tap) == (victim, "layer3.2"), str(report)
    assert first.rel > 1e-2  # a bug is orders of magnitude above the 1e-5 bound, not borderline
    assert list(report.divergences) == [victim]
    before = plan.tap_names[:plan.tap_names.index("layer3.2")]
    assert all(r.ok for r in report.rows(victim) if r.tap in before)


@pytest.mark.parametrize("bug, hw, first_tap", [
    ("swap_mean_var", (33, 47), "stem"),      # the stem's bn1 is the first BN
    ("kernel_hw", (33, 47), "stem"),          # the 7x7 stem conv is the first non-symmetric kernel
    ("same_padding", (33, 47), "layer2.0"),   # odd sizes: 'SAME' = symmetric, until layer2.0's 3x3/2 on 9x12
    ("same_padding", (32, 32), "stem"),       # even: the 7x7/2 stem pads (2, 3), not (3, 3)
])
def test_wrong_toy_backend_is_caught_at_the_right_tap(monkeypatch, bug, hw, first_tap):
    name = wrong.register(monkeypatch, bug)
    control = wrong.register(monkeypatch, None)
    report = rm.check_parity(SMALL_R18, backends=(control, name), input_shape=(1, 3, *hw))
    assert report.first_divergence[:2] == (name, first_tap), str(report)
    assert not report.first_divergence.rel <= 1e-2  # far off, or nan (swapped stats give negative variances)
    assert list(report.divergences) == [name]  # the control (the same code without the bug) passes


def test_symmetric_kernels_would_hide_the_transpose_bug(monkeypatch):
    """Why parity weights must be random: with kernels symmetric in H and W the spatial
    transpose bug passes unnoticed."""
    name = wrong.register(monkeypatch, "kernel_hw")
    plan = rm.make_plan(SMALL_R18)
    weights = random_weights(plan)
    for k, info in plan.params.items():
        if info.role == "conv_weight":
            weights[k] = (weights[k] + weights[k].transpose(0, 1, 3, 2)) / 2
    assert rm.check_parity(SMALL_R18, backends=(name,), weights=weights).ok
    assert not rm.check_parity(SMALL_R18, backends=(name,)).ok


# --------------------------------------------------------------------------- the command


def main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse rejects malformed options itself, with exit code 2
        return exc.code


def _spec_file(tmp_path, spec) -> str:
    path = tmp_path / "net.yaml"
    rm.save_spec(spec, path)
    return str(path)


def test_cli_passes_with_table_and_json(tmp_path, capsys):
    out_json = tmp_path / "report.json"
    assert main(["parity", _spec_file(tmp_path, SMALL_R18), "--backends", "torch", "--input", "1,3,33,47",
                 "--json", str(out_json)]) == 0
    assert "all 15 comparisons pass" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["ok"] and data["input_shape"] == [1, 3, 33, 47]


def test_cli_fails_with_exit_code_1_and_names_the_tap(tmp_path, monkeypatch, capsys):
    name = wrong.register(monkeypatch, "same_padding")
    assert main(["parity", _spec_file(tmp_path, SMALL_R18), "--backends", name, "--input", "1,3,32,32"]) == 1
    out = capsys.readouterr().out
    assert f"first divergence: {name} at stem" in out and "FAIL" in out


@pytest.mark.parametrize("argv", [
    ["parity", "resnet5000", "--backends", "torch"],            # unknown preset
    ["parity", "resnet18", "--backends", "torch,tensorflow"],   # unknown backend
    ["parity", "resnet18", "--backends", "numpy"],              # numpy is already the reference
    ["parity", "resnet18", "--backends", "torch", "--input", "1,1,33,47"],  # channels do not fit
    ["parity", "resnet18", "--input", "1,3,33"],                # malformed shape
    ["parity", "resnet18", "--rtol", "-1e-5"],                  # negative tolerance
])
def test_cli_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_cli_as_a_process_json_on_stdout(tmp_path):
    spec = _spec_file(tmp_path, small(rm.get_spec("d2l_resnet18")))
    done = subprocess.run([sys.executable, "-m", "resnet_multi.cli", "parity", spec, "--backends", "torch",
                           "--json", "-"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["torch"]["taps"] == 15


@pytest.mark.parametrize("backend,dtype", [("torch", "bfloat16"), ("flax", "bfloat16"), ("torch", "float64"),
                                           ("paddle", "float64")])
def test_check_parity_in_another_dtype_uses_that_dtypes_bound(backend, dtype):
    report = rm.check_parity("resnet18", backends=(backend,), dtype=dtype)
    from resnet_multi.parity import BOUNDS

    assert report.ok, report.format()
    assert (report.dtype, report.rtol, report.atol) == (dtype, *BOUNDS[dtype])
    assert f"{dtype} models" in str(report) and report.to_dict()["dtype"] == dtype
    worst = max(r.rel for r in report.results)
    if dtype == "float64":
        assert worst < 1e-10  # float64 all the way: a float32 step anywhere would show ~1e-7
    else:
        assert 1e-4 < worst < BOUNDS[dtype][0]  # really bfloat16 (float32 would be ~1e-6)
    plan = rm.make_plan(rm.get_spec("resnet18"))
    weights = random_weights(plan, 0)
    weights["layer3.1.bn2.running_var"] = weights["layer3.1.bn2.running_var"] * 1.5  # a planted bug...
    broken = check_models({backend: rm.build("resnet18", backend, weights=weights)},
                             odd_input(rm.get_spec("resnet18")), weights=random_weights(plan, 0))
    assert broken.first_divergence.tap == "layer3.1"  # ...that the bfloat16 bound would also catch (18%)
    assert broken.first_divergence.rel > BOUNDS["bfloat16"][0]
