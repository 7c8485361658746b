"""The command line: list and summary need no framework; bad arguments exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resnet_multi.cli import main


def test_list(capsys):
    assert main(["list", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50 " in out and "resnet50d" in out and "resnet18" not in out


def test_summary(capsys):
    assert main(["summary", "resnet50", "--input", "1,3,224,224"]) == 0
    out = capsys.readouterr().out
    assert "25,557,032" in out and "(1, 2048, 7, 7)" in out


def test_summary_of_spec_file(tmp_path, capsys):
    import resnet_multi as rm

    path = tmp_path / "net.yaml"
    rm.save_spec(rm.get_spec("d2l_resnet18"), path)
    assert main(["summary", str(path), "--input", "1,1,96,96"]) == 0
    assert "(1, 10)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["summary", "resnet51"], "unknown preset 'resnet51'"),
    (["summary", "resnet50", "--input", "1,1,224,224"], "expected 3 input channel"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_help():
    for command in ([], ["list"], ["summary"], ["convert"], ["inspect"], ["parity"]):
        out = subprocess.run([sys.executable, "-m", "resnet_multi.cli", *command, "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "usage: resnet-multi" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "resnet_multi.cli", "summary", "resnet50", "--input", "1,3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "expected 4 positive integers" in bad.stderr
