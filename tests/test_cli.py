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


@pytest.mark.parametrize("preset", ["resnet50", "ghostnet_100", "d2l_densenet"])
def test_spec_command_prints_yaml_that_loads_back_equal(preset, tmp_path, capsys):
    import resnet_multi as rm

    assert main(["spec", preset]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert rm.load_spec(printed) == rm.get_spec(preset)
    for name in ("net.yaml", "net.json"):
        assert main(["spec", preset, "-o", str(tmp_path / name)]) == 0
        assert capsys.readouterr().err == f"wrote {tmp_path / name}\n"
        assert rm.load_spec(tmp_path / name) == rm.get_spec(preset)


def _spec_file_cases(tmp_path):
    (tmp_path / "a_directory.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "empty.json").write_text("")
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    (tmp_path / "x.txt").write_text("name: x\n")
    return {
        "a_directory.yaml": "a_directory.yaml: is a directory, not a spec file",
        "binary.yaml": "binary.yaml: not a text file (byte 0 is not UTF-8)",
        "empty.json": "empty.json: the file is empty",
        "loop.yaml": "loop.yaml: cannot read it (Too many levels of symbolic links)",
        "x.txt": "x.txt: a spec file's name ends in .json, .yaml or .yml",
        "missing.yaml": "spec file not found:",
    }


def test_spec_file_errors_are_one_clear_line_and_exit_2(tmp_path, capsys):
    """A directory, a symlink loop, a binary file, an empty file, a .txt, a missing file: each one line
    naming the file (once) and saying what is wrong; all exit 2, as an invalid spec does."""
    for name, message in _spec_file_cases(tmp_path).items():
        assert main(["summary", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert err.count(name) == 1, err  # named once, not "x.json: x.json: ..."


def test_a_negative_seed_names_the_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["parity", "resnet18", "--seed", "-1"])
    assert info.value.code == 2
    assert "argument --seed: expected an integer >= 0, got '-1'" in capsys.readouterr().err


def test_list_shows_ghostnet_depths(capsys):
    assert main(["list", "ghostnet_100"]) == 0
    assert "depths 1-1-1-1-1-1-5-1-4  in_channels 3" in capsys.readouterr().out


def test_summary_columns_never_run_together_and_small_nets_are_not_zero(capsys):
    import re

    import resnet_multi as rm

    with rm.limits(max_activation_bytes=10 ** 16, max_macs=10 ** 17):
        assert main(["summary", "resnet152", "--input", "512,3,4096,4096"]) == 0
    table = capsys.readouterr().out.splitlines()
    total = table[-2]
    assert re.fullmatch(r"total\s+[\d,]+\s{2,}[\d,]+", total), total  # at least two spaces between the numbers
    tiny = rm.get_spec("resnet18").replace(name="tiny", stages=(rm.StageSpec(1, 4),), stem=rm.StemSpec(widths=(4,)),
                                           head=rm.HeadSpec(num_classes=3))
    last = str(rm.summary(tiny, input_shape=(1, 3, 32, 32))).splitlines()[-1]
    assert last.startswith("915 parameters (+24 BN buffer values), 0.17 M")
    assert main(["summary", "resnet18", "--input", "1,3,32,32"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(", 37.52 M multiply-accumulates")


def test_parity_json_file_says_wrote(tmp_path, capsys):
    import resnet_multi as rm

    spec_file = tmp_path / "tiny.yaml"
    tiny = rm.get_spec("resnet18").replace(name="tiny", stages=(rm.StageSpec(1, 4),), stem=rm.StemSpec(widths=(4,)),
                                           head=rm.HeadSpec(num_classes=3))
    rm.save_spec(tiny, spec_file)
    out = tmp_path / "report.json"
    assert main(["parity", str(spec_file), "--backends", "torch", "--json", str(out)]) == 0
    assert f"wrote {out}\n" in capsys.readouterr().err and out.exists()


@pytest.mark.parametrize("command", [["summary"], ["parity"], ["spec"]])
def test_a_spec_file_above_the_limits_is_a_bad_argument(command, tmp_path, capsys):
    import resnet_multi as rm

    data = rm.get_spec("resnet18").to_dict()
    data["stages"][0]["depth"] = 10 ** 9
    path = tmp_path / "absurd.json"
    path.write_text(__import__("json").dumps(data))
    assert main([*command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "above the limit" in err and "max_blocks" in err
