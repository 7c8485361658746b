"""Writes under faults (issue 19, items 1, 8 and 9): racing writers, a full disk, a killed writer, Ctrl-C,
and an output path that cannot be written. Every format, through ``write_canonical`` and the CLI."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi.cli import main
from resnet_multi.convert import formats, read_canonical, write_canonical
from resnet_multi.formats import atomic
from resnet_multi.weights import random_weights

SUFFIX = {}
for _suffix, _format in formats().items():
    SUFFIX.setdefault(_format, _suffix)
FORMATS = tuple(SUFFIX)


def tiny_spec() -> rm.ResNetSpec:
    """resnet18's names with few channels and one block per stage: fast, and not a preset."""
    spec = rm.get_spec("resnet18")
    stages = tuple(dataclasses.replace(s, depth=1, channels=4 * 2 ** i) for i, s in enumerate(spec.stages))
    return spec.replace(name="tiny18", stages=stages, stem=dataclasses.replace(spec.stem, widths=(4,)),
                        head=rm.HeadSpec(num_classes=5))


def temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def assert_holds(path, expected: dict) -> None:
    """``path`` holds exactly ``expected``, bit for bit (a whole file, this writer's)."""
    got, _ = read_canonical(path)
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].tobytes() == np.asarray(array).tobytes(), name


# --------------------------------------------------------------------------- item 1: racing writers


@pytest.mark.parametrize("fmt", FORMATS)
def test_racing_writers_without_force_exactly_one_wins(tmp_path, fmt):
    """A second writer makes the output while the first is writing (after the first's up-front check):
    the first fails at its final step, naming the file, and the second's file is kept whole."""
    spec = tiny_spec()
    mine, theirs = random_weights(rm.make_plan(spec), seed=1), random_weights(rm.make_plan(spec), seed=2)
    dst = tmp_path / f"out{SUFFIX[fmt]}"

    def other_writer_finishes_first(array):
        if not dst.exists():
            write_canonical(dst, theirs, spec)
    with pytest.raises(FileExistsError, match=f"{dst} exists"):  # (the neutral writer checks again before its write)
        write_canonical(dst, mine, spec, on_tensor=other_writer_finishes_first)
    assert_holds(dst, theirs)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_racing_writers_with_force_last_writer_wins_a_whole_file(tmp_path, fmt):
    spec = tiny_spec()
    mine = random_weights(rm.make_plan(spec), seed=1)
    dst = tmp_path / f"out{SUFFIX[fmt]}"

    def other_writer(array):
        if not dst.exists():
            dst.write_bytes(b"the other writer's file")
    write_canonical(dst, mine, spec, force=True, on_tensor=other_writer)
    assert_holds(dst, mine)
    assert temporaries(tmp_path) == []


def test_atomic_path_without_overwrite_never_replaces_a_file(tmp_path):
    """The guard itself, without a caller's up-front check: refused before the block, and at the end."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="out.bin exists"):
        with atomic.atomic_path(target, overwrite=False):
            pytest.fail("the block ran although the output exists")
    target.unlink()
    with pytest.raises(FileExistsError, match="out.bin exists"):
        with atomic.atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs" and temporaries(tmp_path) == []


def test_two_cli_conversions_racing_for_one_output(tmp_path):
    """Two processes at once, no --force: exactly one exits 0; the other exits 1 naming the file."""
    spec = tiny_spec()
    src = tmp_path / "src.safetensors"
    rm.save_weights(src, random_weights(rm.make_plan(spec)), spec)
    dst = tmp_path / "out.safetensors"
    command = [sys.executable, "-m", "resnet_multi.cli", "convert", str(src), str(dst)]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((run.wait(), run.stderr.read()) for run in runs)
    assert [code for code, _ in results] == [0, 1], results
    assert f"{dst} exists" in results[1][1] and "Traceback" not in results[1][1]
    assert_holds(dst, read_canonical(src)[0])
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- item 8: failing writes

_FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from resnet_multi.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_write_that_fails_half_way_gives_one_line_naming_the_output(tmp_path, fmt):
    """A real I/O failure part way through each format's writer (a file size limit, as a full disk
    would fail it): one line naming the output, exit 1, nothing left behind."""
    spec = tiny_spec()
    src = tmp_path / "src.safetensors"
    rm.save_weights(src, random_weights(rm.make_plan(spec)), spec)
    spec_file = tmp_path / "tiny.json"
    rm.save_spec(spec, spec_file)
    dst = tmp_path / f"out{SUFFIX[fmt]}"
    run = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, "convert", str(src), str(dst),
                          "--spec", str(spec_file)], capture_output=True, text=True)
    errors = [line for line in run.stderr.splitlines() if "resnet-multi" in line or "Error" in line]
    assert run.returncode == 1, run.stderr
    assert len(errors) == 1 and errors[0].startswith(f"resnet-multi convert: error: {dst}: cannot write it: "), errors
    assert errors[0].endswith("(nothing was written)") and "Traceback" not in run.stderr, run.stderr
    assert not dst.exists() and temporaries(tmp_path) == []


def test_os_errors_name_the_output_not_the_temporary_file(tmp_path, monkeypatch):
    dst = tmp_path / "out.bin"
    with pytest.raises(atomic.WriteError) as info:
        with atomic.atomic_path(dst) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert str(info.value) == f"{dst}: cannot write it: No space left on device (nothing was written)"
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(dst)
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if ".tmp" in os.fspath(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(atomic.os, "open", read_only)
    with pytest.raises(OSError, match=f"^{dst}: cannot write it: Read-only file system") as info:
        with atomic.atomic_path(dst):
            pass
    assert ".tmp" not in str(info.value)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_an_output_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys, force):
    (tmp_path / "out.pth").mkdir()
    src = tmp_path / "src.safetensors"
    src.write_bytes(b"not a checkpoint: refused before it is read")
    assert main(["convert", str(src), str(tmp_path / "out.pth"), *force]) == 1
    err = capsys.readouterr().err
    assert err == f"resnet-multi convert: error: {tmp_path / 'out.pth'}: is a directory; give the output file's name\n"


# --------------------------------------------------------------------------- item 9: killed writers and Ctrl-C


def test_temporary_names_are_recognisable_and_stale_ones_are_removed(tmp_path):
    """A writer killed with -9 leaves its temporary file (named with its pid); the next write of the
    same output removes it, but not a running writer's, nor another output's."""
    dst = tmp_path / "victim.pdparams"
    script = textwrap.dedent(f"""
        import time
        from resnet_multi.formats.atomic import atomic_path
        with atomic_path({str(dst)!r}) as tmp:
            tmp.write_bytes(b"half a file")
            print(tmp.name, flush=True)
            time.sleep(60)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    name = writer.stdout.readline().strip()
    assert name == atomic.TEMP_NAME.format(name=dst.name, pid=writer.pid, token=name.split(".")[4],
                                           suffix=".pdparams")
    assert atomic.temporaries_of(dst) == [tmp_path / name]
    running = tmp_path / atomic.TEMP_NAME.format(name=dst.name, pid=os.getppid(), token="0badf00d",
                                                 suffix=".pdparams")
    running.write_bytes(b"a running writer's")
    other = tmp_path / atomic.TEMP_NAME.format(name="other.pdparams", pid=writer.pid, token="0badf00d",
                                               suffix=".pdparams")
    other.write_bytes(b"another output's")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert (tmp_path / name).exists()  # what kill -9 leaves
    atomic.atomic_write_text(dst, "whole")
    assert dst.read_text() == "whole"
    assert temporaries(tmp_path) == sorted([running.name, other.name])


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    spec = tiny_spec()
    src = tmp_path / "src.safetensors"
    rm.save_weights(src, random_weights(rm.make_plan(spec)), spec)
    spec_file = tmp_path / "tiny.json"
    rm.save_spec(spec, spec_file)
    import safetensors.numpy

    def interrupted(arrays, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.numpy, "save_file", interrupted)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst), "--spec", str(spec_file)]) == 130
    assert capsys.readouterr().err == "resnet-multi convert: interrupted\n"
    assert not dst.exists() and temporaries(tmp_path) == []


def test_ctrl_c_in_a_real_process(tmp_path):
    """SIGINT to the command itself: exit 130, one line, no traceback."""
    script = textwrap.dedent("""
        import sys, time
        import resnet_multi.cli as cli

        def slow(args):  # `list`, made to wait for the signal
            print("ready", flush=True)
            time.sleep(60)
        cli._cmd_list = slow
        sys.exit(cli.main(["list"]))
    """)
    # SIGINT back to its default in the child: a shell that starts the suite in the background
    # leaves it ignored, and Python then never raises KeyboardInterrupt (what a user's Ctrl-C does)
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.stdout.readline().strip() == "ready"
    time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == 130
    assert run.stderr.read() == "resnet-multi list: interrupted\n"
