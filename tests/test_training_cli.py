"""``resnet-multi parity SPEC --train``: exit 0 when trainings agree, 1 when they do not, 2 for bad
arguments (as the forward parity command)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

import resnet_multi as rm
from resnet_multi import cli
from resnet_multi.registry import get_backend
from test_training import TINY

pytestmark = pytest.mark.usefixtures("x64_for_the_file")  # float64 Flax models


def main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse rejects malformed options itself, with exit code 2
        return exc.code


@pytest.fixture
def spec_file(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    rm.save_spec(TINY, path)
    return str(path)


FAST = ["--backends", "torch,paddle", "--input", "2,3,33,47", "--steps", "2"]


def test_train_passes_with_table_and_json(spec_file, tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["parity", spec_file, "--train", *FAST, "--optimizer", "adamw", "--lr", "0.01",
                 "--weight-decay", "0.25", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training parity of resnet18" in text and "adamw(lr=0.01" in text and "comparisons pass" in text
    data = json.loads(out.read_text())
    assert data["ok"] and data["steps"] == 2 and data["reference"] == "torch" and data["backends"] == ["paddle"]
    assert data["optimizer"] == {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.25}
    assert data["input_shape"] == [2, 3, 33, 47] and data["dtype"] == "float64"


def test_train_json_on_stdout_float32(spec_file, capsys):
    assert main(["parity", spec_file, "--train", *FAST, "--dtype", "float32", "--momentum", "0.9", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dtype"] == "float32" and data["noise_only"] and data["metric"] == "norm_relative"
    assert data["optimizer"]["momentum"] == 0.9


def test_train_fails_with_exit_1(spec_file, monkeypatch, capsys):
    module = get_backend("paddle")
    make = module.make_optimizer
    monkeypatch.setattr(module, "make_optimizer",
                        lambda model, spec: make(model, replace(spec, momentum=1 - spec.momentum)))
    assert main(["parity", spec_file, "--train", *FAST]) == 1
    assert "first divergence: paddle at step 1, update, conv1.weight" in capsys.readouterr().out


@pytest.mark.parametrize("extra, words", [
    (["--train", "--steps", "0"], "expected an integer >= 1"),
    (["--train", "--optimizer", "adam"], "invalid choice"),
    (["--train", "--momentum", "1.5"], "momentum must be in [0, 1)"),
    (["--train", "--lr", "-1"], "lr must be in (0, inf]"),
    (["--train", "--optimizer", "adamw", "--momentum", "0.9"], "optimizer 'adamw' has no momentum"),
    (["--train", "--atol", "1e-6"], "--atol applies to forward parity"),
    (["--steps", "2"], "--steps: only with --train"),
    (["--train", "--momentum", "0.9"], "not exact in float32"),  # paddle would round it in float64
])
def test_train_bad_arguments_exit_2(spec_file, capsys, extra, words):
    assert main(["parity", spec_file, "--backends", "torch,paddle", "--input", "2,3,33,47", *extra]) == 2
    assert words in capsys.readouterr().err


def test_command_trains_flax_in_float64(spec_file):
    """A fresh `resnet-multi` process: the command turns on JAX's 64-bit mode for its float64 run
    (a library call leaves that process-wide switch to the user)."""
    out = subprocess.run([sys.executable, "-m", "resnet_multi.cli", "parity", spec_file, "--train", "--backends",
                          "torch,flax", "--input", "2,3,33,47", "--steps", "1", "--json", "-"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["ok"] and data["backends"] == ["flax"] and data["dtype"] == "float64"


def test_a_preset_with_head_dropout_trains_at_the_cli_defaults_with_a_note(capsys):
    """GhostNet's head dropout: the command sets it to 0 for --train and says so (the API refuses it)."""
    assert main(["parity", "ghostnet_050", "--train", "--backends", "torch,paddle"]) == 0
    captured = capsys.readouterr()
    assert "resnet-multi parity: note: head.dropout 0.2 set to 0 for --train" in captured.err
    assert "all 2115 comparisons pass" in captured.out
