"""Conversion between checkpoint formats: exactness, spec inference, safety, progress and the CLI.

Formats come from the registry (every backend's native suffixes) plus the neutral .safetensors,
so a new backend joins every test here without a new line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BUILT_PRESETS
from resnet_multi.cli import main
from resnet_multi.convert import (NEUTRAL, CheckpointError, detect_format, formats, infer_spec, read_canonical,
                                  write_canonical)
from resnet_multi.registry import backend_names, get_backend, native_suffixes
from resnet_multi.weights import random_weights

# one suffix per format, registry order then the neutral file: {"torch": ".pt", "paddle": ..., "neutral": ...}
SUFFIX = {}
for _suffix, _format in formats().items():
    SUFFIX.setdefault(_format, _suffix)
FORMATS = tuple(SUFFIX)


def tiny_spec(**changes) -> rm.ResNetSpec:
    """resnet18's names with few channels and one block per stage: fast, and not a preset."""
    spec = rm.get_spec("resnet18")
    stages = tuple(dataclasses.replace(s, depth=1, channels=4 * 2 ** i) for i, s in enumerate(spec.stages))
    return spec.replace(name="tiny18", stages=stages, stem=dataclasses.replace(spec.stem, widths=(4,)),
                        head=rm.HeadSpec(num_classes=5), **changes)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_bits(actual: dict, expected: dict, what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: names differ"
    for name, array in expected.items():
        got = actual[name]
        assert got.dtype == array.dtype, f"{what}: {name} dtype {got.dtype} != {array.dtype}"
        assert got.shape == array.shape, f"{what}: {name} shape {got.shape} != {array.shape}"
        assert got.tobytes() == array.tobytes(), f"{what}: {name} bits differ"


def leftovers(directory) -> list[str]:
    """Temporary files a writer left behind."""
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def make_file(directory, fmt: str, weights, spec, stem: str = "w"):
    path = directory / f"{stem}{SUFFIX[fmt]}"
    write_canonical(path, weights, spec)
    return path


# --------------------------------------------------------------------------- formats


def test_suffix_table_agrees_with_every_backend():
    """registry's suffix table (data, so finding a reader imports no framework) == each module's SUFFIXES."""
    for name in backend_names():
        table = {suffix for suffix, backend in native_suffixes().items() if backend == name}
        assert table == set(get_backend(name).SUFFIXES), name


def test_detecting_a_format_imports_no_framework(tmp_path):
    # (rm.convert is the function; the module is reached through `from resnet_multi.convert import`)
    code = ("import sys; from resnet_multi.convert import format_of_suffix as f; "
            "print(f('a.pth'), f('a.msgpack')); "
            "print([m for m in ('torch', 'paddle', 'jax', 'flax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["torch flax", "[]"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_format_checks_content(tmp_path, fmt):
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec))
    path = make_file(tmp_path, fmt, weights, spec)
    assert detect_format(path) == fmt
    for other in FORMATS:  # the same bytes under another format's suffix
        if other == fmt:
            continue
        renamed = tmp_path / f"renamed{SUFFIX[other]}"
        shutil.copyfile(path, renamed)
        with pytest.raises(CheckpointError, match=f"renamed{SUFFIX[other]}: not a {other} checkpoint"):
            detect_format(renamed)


def test_unknown_suffix():
    with pytest.raises(ValueError, match=r"unknown checkpoint suffix '\.npz'.*\.pdparams"):
        rm.convert("a.npz", "b.pth")


# --------------------------------------------------------------------------- exactness


# Full size, so that the spec is inferred at every native step from a real preset's names and
# shapes; one preset per way of naming its tensors (block kind, stem, shortcut, head, biases), the
# smallest of each. The other built presets differ from theirs only in depth or width: a format
# writes and reads every tensor by its role, whatever the depth or width, and that every preset's
# canonical names and shapes infer that preset is test_infer_spec_finds_every_preset's check.
CHAIN_PRESETS = ("resnet18", "resnet50", "resnext50_32x4d", "resnet50d", "resnet45", "d2l_resnet18", "densenet121",
                 "d2l_densenet", "ghostnet_050", "convnext_tiny", "hornet_tiny_gf")


def test_chain_presets_are_built_presets():
    assert set(CHAIN_PRESETS) <= set(BUILT_PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", CHAIN_PRESETS)
def test_chain_through_every_format_is_bit_exact(tmp_path, preset):
    """torch -> paddle -> flax -> neutral -> torch gives back every tensor bit for bit; the spec is
    inferred at every native step (it is stored only in the neutral file); inputs are only read."""
    spec = rm.get_spec(preset)
    weights = random_weights(rm.make_plan(spec), seed=3)
    chain = [*FORMATS, FORMATS[0]]  # registry order: torch, paddle, flax, then neutral, back to torch
    paths = [make_file(tmp_path, chain[0], weights, spec, stem="step0")]
    for i, fmt in enumerate(chain[1:], 1):
        src = paths[-1]
        before = digest(src)
        paths.append(rm.convert(src, tmp_path / f"step{i}{SUFFIX[fmt]}", progress=False))
        assert digest(src) == before, f"{src.name} was modified"
        paths[-2].unlink() if i > 1 else None  # keep the disk footprint of resnet152 small
    back, _ = read_canonical(paths[-1])
    assert_same_bits(back, weights, " -> ".join(chain))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_format_conversion_and_dtypes_kept(tmp_path, fmt):
    """fp16 stays fp16 and fp64 stays fp64 in every format, also converting to the same format."""
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=4)
    for i, name in enumerate(weights):
        weights[name] = weights[name].astype((np.float16, np.float32, np.float64)[i % 3])
    src = make_file(tmp_path, fmt, weights, spec, stem="src")
    dst = rm.convert(src, tmp_path / f"dst{SUFFIX[fmt]}", spec=spec)
    assert_same_bits(read_canonical(dst)[0], weights, f"{fmt} -> {fmt}")
    for other in FORMATS:
        out = rm.convert(src, tmp_path / f"to_{other}{SUFFIX[other]}", spec=spec, force=True)
        assert_same_bits(read_canonical(out)[0], weights, f"{fmt} -> {other}")


@pytest.mark.parametrize("backend", rm.backend_names())  # every backend: a missing one fails, not skips
@pytest.mark.parametrize("fmt", FORMATS)
def test_build_from_a_checkpoint_file(tmp_path, backend, fmt):
    """rm.build(spec, backend, weights=PATH) reads every format (through convert.read_canonical)."""
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=5)
    path = make_file(tmp_path, fmt, weights, spec)
    model = rm.build(spec, backend, weights=path)
    assert_same_bits(rm.export_weights(model), weights, f"{fmt} file -> {backend} model")


# --------------------------------------------------------------------------- spec inference


def shapes_only(spec: rm.ResNetSpec) -> dict[str, np.ndarray]:
    """Zero-cost arrays with the plan's shapes (inference reads only names and shapes)."""
    return {name: np.broadcast_to(np.float32(0), info.shape) for name, info in rm.make_plan(spec).params.items()}


@pytest.mark.parametrize("preset", rm.list_specs())
def test_infer_spec_finds_every_preset(preset):
    assert infer_spec(shapes_only(rm.get_spec(preset))) == rm.get_spec(preset)


@pytest.mark.parametrize("changes", [
    dict(in_channels=1),
    dict(head=rm.HeadSpec(num_classes=7)),
    dict(head=None),
    dict(in_channels=4, head=rm.HeadSpec(num_classes=2)),
], ids=["in_channels", "num_classes", "no_head", "both"])
@pytest.mark.parametrize("preset", ["resnet50", "resnet50d"])
def test_infer_spec_adapts_in_channels_and_head(preset, changes):
    spec = rm.get_spec(preset).replace(**changes)
    assert infer_spec(shapes_only(spec)) == spec


def test_infer_spec_adds_a_head_to_a_headless_preset():
    spec = rm.get_spec("resnet45").replace(head=rm.HeadSpec(num_classes=37))
    assert infer_spec(shapes_only(spec)) == spec


def test_infer_spec_ignores_framework_extras():
    weights = shapes_only(rm.get_spec("resnet18"))
    weights["bn1.num_batches_tracked"] = np.array(0)
    assert infer_spec(weights).name == "resnet18"


def test_no_match_names_the_closest_preset_and_what_differs():
    weights = shapes_only(rm.get_spec("resnet50"))
    del weights["layer4.2.bn3.running_var"]
    weights["layer2.0.conv2.weight"] = np.zeros((128, 128, 5, 5), np.float32)
    weights["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(rm.WeightsError) as info:
        infer_spec(weights, source="my.pth")
    message = str(info.value)
    assert message.startswith("my.pth: the names and shapes match no preset; the closest is 'resnet50'")
    assert "1 missing: layer4.2.bn3.running_var" in message
    assert "1 unexpected: layer9.0.conv1.weight" in message
    assert "layer2.0.conv2.weight (expected (128, 128, 3, 3), found (128, 128, 5, 5))" in message
    assert info.value.missing == ["layer4.2.bn3.running_var"]


# --------------------------------------------------------------------------- safety


def corrupt_versions(good: bytes) -> dict[str, bytes]:
    return {"empty": b"", "garbage": b"\x00garbage, not a checkpoint" * 10, "truncated": good[: len(good) // 2],
            "truncated_end": good[:-10]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_input_exit_1_and_nothing_written(tmp_path, fmt, capsys):
    spec = tiny_spec()
    good = make_file(tmp_path, fmt, random_weights(rm.make_plan(spec)), spec, stem="good")
    target = FORMATS[(FORMATS.index(fmt) + 1) % len(FORMATS)]
    for kind, data in corrupt_versions(good.read_bytes()).items():
        bad = tmp_path / f"{kind}{SUFFIX[fmt]}"
        bad.write_bytes(data)
        before = digest(bad)
        dst = tmp_path / f"out_{kind}{SUFFIX[target]}"
        code = main(["convert", str(bad), str(dst), "--spec", "resnet18"])
        err = capsys.readouterr().err
        assert code == 1, f"{kind}: exit {code}: {err}"
        assert f"{kind}{SUFFIX[fmt]}" in err and "Traceback" not in err, f"{kind}: {err}"
        assert not dst.exists() and leftovers(tmp_path) == [], kind
        assert digest(bad) == before
        with pytest.raises(ValueError, match=f"{kind}{SUFFIX[fmt]}"):  # the API: a ValueError naming the file
            read_canonical(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_write_leaves_no_output(tmp_path, fmt, monkeypatch):
    """A writer that fails half way leaves neither the output nor a temporary file."""
    spec = tiny_spec()
    src = make_file(tmp_path, FORMATS[0], random_weights(rm.make_plan(spec)), spec, stem="src")

    def failing(array):
        failing.calls += 1
        if failing.calls > 3:
            raise OSError("disk full (simulated)")
    failing.calls = 0
    dst = tmp_path / f"out{SUFFIX[fmt]}"
    with pytest.raises(OSError, match="simulated"):
        write_canonical(dst, read_canonical(src)[0], spec, on_tensor=failing)
    assert not dst.exists() and leftovers(tmp_path) == []


def test_existing_output_checked_before_any_work(tmp_path, capsys):
    spec = tiny_spec()
    src = make_file(tmp_path, FORMATS[0], random_weights(rm.make_plan(spec)), spec, stem="src")
    dst = tmp_path / f"out{SUFFIX[NEUTRAL]}"
    dst.write_bytes(b"precious")
    assert main(["convert", str(src), str(dst), "--spec", "resnet18"]) == 1
    assert "out.safetensors exists" in capsys.readouterr().err and dst.read_bytes() == b"precious"
    # the check comes first: a corrupt input is not even read when the output exists
    bad = tmp_path / f"bad{SUFFIX[FORMATS[0]]}"
    bad.write_bytes(b"junk")
    with pytest.raises(FileExistsError):
        rm.convert(bad, dst)
    assert main(["convert", str(src), str(dst), "--force"]) == 1  # tiny18 is no preset: mismatch, exit 1
    assert dst.read_bytes() == b"precious"
    spec_file = tmp_path / "tiny.json"
    rm.save_spec(spec, spec_file)
    assert main(["convert", str(src), str(dst), "--spec", str(spec_file), "--force"]) == 0
    assert rm.load_weights(dst)[1] == spec


def test_output_is_never_the_input(tmp_path):
    spec = tiny_spec()
    src = make_file(tmp_path, NEUTRAL, random_weights(rm.make_plan(spec)), spec)
    before = digest(src)
    with pytest.raises(ValueError, match="output is the input"):
        rm.convert(src, src, force=True)
    assert digest(src) == before


def test_mismatch_reported_all_at_once_exit_1(tmp_path, capsys):
    spec = rm.get_spec("resnet18")
    src = make_file(tmp_path, FORMATS[0], random_weights(rm.make_plan(spec)), spec)
    dst = tmp_path / f"out{SUFFIX[NEUTRAL]}"
    assert main(["convert", str(src), str(dst), "--spec", "resnet34"]) == 1
    err = capsys.readouterr().err
    assert "missing: layer1.2.conv1.weight" in err and not dst.exists()
    assert main(["convert", str(src), str(dst), "--spec", "resnet18"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--spec", "resnet999"], "unknown preset 'resnet999'"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    spec = tiny_spec()
    src = make_file(tmp_path, NEUTRAL, random_weights(rm.make_plan(spec)), spec)
    assert main(["convert", str(src), str(tmp_path / "out.pth"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["convert", "a.pth", "b.npz"], ["convert", "a.ckpt", "b.pth"], ["inspect", "a.bin"]])
def test_unknown_suffix_is_a_bad_argument(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "unknown checkpoint suffix" in capsys.readouterr().err


# --------------------------------------------------------------------------- inspect and progress


def test_inspect_reports_format_size_dtypes_and_preset(tmp_path, capsys):
    spec = rm.get_spec("resnet18").replace(in_channels=1, head=rm.HeadSpec(num_classes=10))
    weights = random_weights(rm.make_plan(spec))
    path = make_file(tmp_path, "torch", weights, spec)  # torch's writer adds num_batches_tracked
    report = rm.inspect_file(path)
    assert (report.format, report.tensor_count, report.preset) == ("torch", len(weights), "resnet18")
    assert report.tensor_bytes == sum(a.nbytes for a in weights.values())
    assert report.dtypes == {"float32": len(weights)} and len(report.extras) == 20
    assert report.to_dict()["adaptations"] == {"in_channels": 1, "head": 10}
    text = str(report)
    assert "preset    resnet18, with in_channels=1, num_classes=10" in text
    assert "(+20 num_batches_tracked left out)" in text
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "resnet18"


def test_inspect_without_a_match_shows_the_closest(tmp_path, capsys):
    spec = tiny_spec()
    path = make_file(tmp_path, NEUTRAL, random_weights(rm.make_plan(spec)), None)
    report = rm.inspect_file(path)
    assert report.preset is None and report.closest is not None and any(report.differences.values())
    assert main(["inspect", str(path)]) == 0
    assert "none matches; closest" in capsys.readouterr().out
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")  # corrupt: exit 1
    assert main(["inspect", str(path)]) == 1


def test_progress_bar_only_on_a_terminal_or_when_forced(tmp_path, capsys):
    spec = tiny_spec()
    src = make_file(tmp_path, NEUTRAL, random_weights(rm.make_plan(spec)), spec)
    rm.convert(src, tmp_path / "warm.pth", progress=False)  # import the backend outside the capture
    capsys.readouterr()
    rm.convert(src, tmp_path / "auto.pth")  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    rm.convert(src, tmp_path / "forced.pth", progress=True)
    err = capsys.readouterr().err
    assert "write forced.pth" in err and "100%" in err


def test_a_whole_detector_is_read_from_under_its_backbone_prefix(tmp_path, capsys):
    """PaddleDetection / PaddleOCR and many torch detectors save the whole model, the backbone's names under
    'backbone.': the prefix is found (or given with --prefix), the neck and head are left out, and a line
    says so."""
    from safetensors.numpy import save_file

    spec = rm.get_spec("d2l_densenet")
    weights = random_weights(rm.make_plan(spec), seed=0)
    whole = {f"backbone.{name}": value for name, value in weights.items()}
    whole["neck.lateral.weight"] = np.ones((8, 4, 1, 1), np.float32)
    whole["head.cls.bias"] = np.zeros(3, np.float32)
    src = tmp_path / "detector.safetensors"
    save_file(whole, str(src))  # a foreign file: no stored spec
    dst = tmp_path / "backbone.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    err = capsys.readouterr().err
    assert (f"resnet-multi convert: warning: {src}: read the {len(weights)} tensors under 'backbone.' (found: no "
            "preset matches the names as they are); 2 other tensor(s) left out") in err
    got, stored = rm.load_weights(dst)
    assert stored == spec and sorted(got) == sorted(weights)
    assert main(["convert", str(src), str(tmp_path / "given.safetensors"), "--prefix", "backbone"]) == 0
    assert "(as asked (--prefix))" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "bad.safetensors"), "--prefix", "model."]) == 1
    assert "no tensor name starts with 'model.'; the names start with backbone., head., neck." in \
        capsys.readouterr().err
    assert main(["inspect", str(src)]) == 0
    assert "preset    d2l_densenet" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_weights_reads_every_format(tmp_path, fmt):
    """rm.load_weights is the public any-format reader: canonical names and layouts, bit for bit."""
    spec = tiny_spec()
    weights = random_weights(rm.make_plan(spec), seed=0)
    path = make_file(tmp_path, fmt, weights, spec)
    got, stored = rm.load_weights(path)
    assert_same_bits(got, weights, fmt)
    assert stored == (spec if fmt == NEUTRAL else None)
