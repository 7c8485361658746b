"""Export for deployment: the artifact each backend writes, run by its own runtime, against the model.

Bound: the parity bound, max|a - b| <= 1e-6 + 1e-5 * max|ref|, between the exported artifact
(onnxruntime; paddle.jit.load and Paddle Inference) and the ordinary model built from the same weights, at an odd
size and at another batch size than the one given at export (the batch is dynamic).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BACKENDS, assert_close, odd_input
from resnet_multi.registry import get_backend
from resnet_multi.weights import random_weights


def _run_onnx(main_file: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(main_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    return session.run(None, {"x": x})


def _run_paddle_static(main_file: Path, x: np.ndarray) -> list[np.ndarray]:
    import paddle

    layer = paddle.jit.load(os.fspath(main_file.with_suffix("")))  # paddle.jit.load takes the prefix
    layer.eval()
    out = layer(paddle.to_tensor(x))
    return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]


def _run_paddle_inference(main_file: Path, x: np.ndarray) -> list[np.ndarray]:
    """Paddle's deployment engine with its CPU defaults (oneDNN on), which runs other kernels than
    ``paddle.jit.load``: at a fixed image size it once gave HorNet's LayerNorm errors of order 1."""
    from paddle import inference

    config = inference.Config(os.fspath(main_file), os.fspath(main_file.with_suffix(".pdiparams")))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    predictor.get_input_handle(predictor.get_input_names()[0]).copy_from_cpu(x)
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


# The deployment format's runtimes, by the main file's suffix (backend.EXPORT_SUFFIX).
RUNNERS = {".onnx": (_run_onnx,), ".json": (_run_paddle_static, _run_paddle_inference)}
EXPORTING = [b for b in BACKENDS if hasattr(get_backend(b), "export_model")]


def test_every_export_format_has_a_runner_here():
    assert EXPORTING, "no backend exports"
    for backend in EXPORTING:
        assert get_backend(backend).EXPORT_SUFFIX in RUNNERS, backend


def _specs() -> list[rm.ResNetSpec]:
    """ResNet-D (deep stem, ceil-mode avg-pool shortcut: the ops exporters get wrong), a
    feature-pyramid spec without head (several outputs) and HorNet with the global filter (FFTs,
    LayerNorms), all small."""
    tiny_d = rm.get_spec("resnet50d").replace(
        name="tiny_d", stages=(rm.StageSpec(1, 8), rm.StageSpec(2, 16, stride=2)),
        stem=rm.StemSpec(widths=(8, 8, 16), kernel_size=3, stride=2), head=rm.HeadSpec(num_classes=5))
    pyramid = rm.get_spec("resnet18").replace(
        name="pyramid", stages=(rm.StageSpec(1, 8), rm.StageSpec(1, 16, stride=2), rm.StageSpec(1, 32, stride=2)),
        stem=rm.StemSpec(widths=(8,)), head=None, out_indices=(1, 2))
    hornet = rm.get_spec("hornet_tiny_gf")  # LayerNorms, gnconv, the filter with its weight resized
    hornet = hornet.replace(name="tiny_hornet_gf", stages=tuple(
        replace(s, depth=1, channels=s.channels // 8) for s in hornet.stages), stem=replace(hornet.stem, widths=(8,)))
    return [tiny_d, pyramid, hornet]


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.name)
@pytest.mark.parametrize("backend", EXPORTING)
def test_exported_artifact_matches_the_model(backend, spec, tmp_path):
    weights = random_weights(rm.make_plan(spec), seed=0)
    model = rm.build(spec, backend, weights=weights)  # an ordinary model: export folds it
    files = rm.export(model, tmp_path / "net", input_shape=(1, spec.in_channels, 33, 47))

    main = files[0]
    assert main.name == "net" + get_backend(backend).EXPORT_SUFFIX
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)  # no temporary left
    assert rm.plan_of(model) == rm.make_plan(spec)  # the model given is not changed

    for batch in (1, 3):  # exported at batch 1, run at 3: the batch is dynamic
        x = odd_input(spec, batch=batch, seed=batch)
        expected = rm.forward(model, x)
        expected = expected if isinstance(expected, list) else [expected]
        for runner in RUNNERS[main.suffix]:
            actual = runner(main, x)
            assert len(actual) == len(expected), runner.__name__
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                assert_close(a, e, f"{backend} {spec.name} output {i} batch {batch} ({runner.__name__})")


@pytest.mark.parametrize("backend", EXPORTING)
def test_export_does_not_overwrite_without_force_and_checks_the_shape(backend, tmp_path):
    spec = _specs()[0]
    model = rm.build(spec, backend, inference=True)
    suffix = get_backend(backend).EXPORT_SUFFIX
    main = tmp_path / f"net{suffix}"
    main.write_text("keep me")
    with pytest.raises(FileExistsError, match=main.name):
        rm.export(model, main, (1, 3, 33, 47), force=False)
    assert main.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == [main.name]  # nothing else written or left behind
    with pytest.raises(ValueError, match="input_shape"):
        rm.export(model, main, (1, 4, 33, 47))
    rm.export(model, main, (1, 3, 33, 47))  # force=True (default) replaces it
    assert main.stat().st_size > 100


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in EXPORTING])
def test_backend_without_export_says_which_have_one(backend, tmp_path):
    model = rm.build(_specs()[0], backend)
    with pytest.raises(rm.BackendError, match="no deployment export"):
        rm.export(model, tmp_path / "net", (1, 3, 33, 47))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_a_missing_export_package_names_the_extra(package, tmp_path, monkeypatch):
    """The README's export snippet on a machine without the `export` extra: an ImportError naming the
    extra, before any work or file."""
    model = rm.build(_specs()[0], "torch", inference=True)
    monkeypatch.setitem(sys.modules, package, None)  # `import onnxscript` now raises ModuleNotFoundError
    with pytest.raises(ImportError, match=rf"export needs {package}, .*pip install 'resnet_multi\[export\]'"):
        rm.export(model, tmp_path / "net.onnx", (1, 3, 33, 47))
    assert not list(tmp_path.iterdir())


def test_the_export_extra_is_declared_and_in_all():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert sorted(req.split(">")[0] for req in extras["export"]) == ["onnx", "onnxruntime", "onnxscript"]
    assert "export" in extras["all"][0]
