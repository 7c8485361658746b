"""The reports package (issue 17, item 8): one base for both reports, old import paths kept, defaults
from the registry and the tolerance table, and a diagram read from the plan. No framework is
needed: the reports here are made from numbers, and the diagrams from plans."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi import registry
from resnet_multi.reports import base, canvas
from resnet_multi.reports.tolerances import BOUNDS, TRAINING_RTOL, short_number

PACKAGE = Path(rm.__file__).resolve().parent
REPORT_MODULES = [PACKAGE / name for name in ("parity.py", "training.py", "plot.py", "html_report.py", "cli.py",
                                              "summary.py")] + sorted((PACKAGE / "reports").glob("*.py"))


def parity_report(bad_tap: str | None = None) -> rm.ParityReport:
    from resnet_multi.parity import compare_outputs

    plan = rm.make_plan(rm.get_spec("resnet18"))
    rng = np.random.default_rng(0)
    reference = {tap: rng.standard_normal((1, 4)) for tap in plan.tap_names}
    outputs = {b: {tap: ref * (1.5 if b == "paddle" and tap == bad_tap else 1.0) for tap, ref in reference.items()}
               for b in ("torch", "paddle")}
    return compare_outputs(plan, outputs, reference, input_shape=(1, 3, 33, 47))


# --------------------------------------------------------------------------- one base, old paths


def test_both_reports_share_one_base():
    from resnet_multi.reports.training import TrainingRecord, TrainingReport

    assert issubclass(rm.ParityReport, base.Report) and issubclass(TrainingReport, base.Report)
    report = parity_report("layer2.0")
    assert all(isinstance(r, base.Record) for r in report.results)
    assert issubclass(TrainingRecord, base.Record)
    assert report.to_dict()["results"] == [r.to_dict() for r in report.results]
    assert report.first_divergence.tap == "layer2.0" and list(report.divergences) == ["paddle"]
    assert str(report) == report.format()


def test_a_record_with_no_number_is_null_in_json():
    from resnet_multi.parity import compare_tap

    row = compare_tap("torch", "logits", None, np.ones(3), rtol=1e-5, atol=1e-6).to_dict()
    assert row["max_abs"] is None and row["rel"] is None and row["shape"] == [3] and not row["ok"]
    json.dumps(row, allow_nan=False)


def test_old_import_paths_give_the_same_objects():
    import resnet_multi.html_report as old_html
    import resnet_multi.parity as parity
    import resnet_multi.plot as old_plot
    import resnet_multi.training as training
    from resnet_multi.reports import diagram, html, plots
    from resnet_multi.reports import parity as parity_report_module
    from resnet_multi.reports import training as training_report_module

    for name in ("ParityReport", "TapResult", "Divergence", "NUMPY"):
        assert getattr(parity, name) is getattr(parity_report_module, name)
    for name in ("TrainingReport", "TrainingRecord", "TrainingDivergence", "PHASES", "LOSS"):
        assert getattr(training, name) is getattr(training_report_module, name)
    assert training.FLOAT64_RTOL == TRAINING_RTOL and parity.BOUNDS is BOUNDS
    assert issubclass(training.OptimizerError, ValueError)  # the Paddle backend imports it from here
    for name in ("parity_figure", "plot_parity", "training_figure", "plot_training", "thin_labels", "PHASES"):
        assert getattr(old_plot, name) is getattr(plots, name)
    for name in ("FORMATS", "PLOT_EXTRA", "figure_format", "require_matplotlib", "svg_text"):
        assert getattr(old_plot, name) is getattr(canvas, name)
    assert old_plot.diagram is diagram.diagram and rm.diagram is diagram.diagram
    for name in ("write_html", "parity_html", "training_html", "environment", "DISTRIBUTIONS"):
        assert getattr(old_html, name) is getattr(html, name)


def test_importing_the_package_loads_no_drawing_code():
    code = ("import sys, resnet_multi\n"
            "drawing = [m for m in sys.modules if m.startswith('matplotlib') or m in ("
            "'resnet_multi.reports.canvas', 'resnet_multi.reports.plots', 'resnet_multi.reports.diagram', "
            "'resnet_multi.reports.html', 'resnet_multi.plot', 'resnet_multi.html_report')]\n"
            "print(drawing)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("path", REPORT_MODULES, ids=lambda p: p.name)
def test_no_private_name_of_another_module_is_imported(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_") and alias.name != "__future__"
               and node.module != "__future__"]
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names} | {"P", "api", "registry", "canvas"}
    reached = [f"{node.value.id}.{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
               and isinstance(node.value, ast.Name) and node.value.id in modules and node.attr.startswith("_")
               and not node.attr.startswith("__")]
    assert not private and not reached, private + reached


# --------------------------------------------------------------------------- defaults from one place


def test_every_backend_is_the_default_from_the_registry():
    from resnet_multi.cli import make_parser
    from resnet_multi.parity import check_parity
    from resnet_multi.training import check_training

    every = registry.backend_names()
    assert inspect.signature(check_parity).parameters["backends"].default == every
    assert inspect.signature(check_training).parameters["backends"].default == every
    args = make_parser().parse_args(["parity", "resnet18"])
    assert args.backends == ",".join(every)


def test_the_command_line_help_states_the_tolerance_table(capsys):
    from resnet_multi.cli import make_parser

    with pytest.raises(SystemExit):
        make_parser().parse_args(["parity", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    rtols = ", ".join(f"{short_number(rtol)} {dtype}" for dtype, (rtol, _) in BOUNDS.items())
    atols = ", ".join(f"{short_number(atol)} {dtype}" for dtype, (_, atol) in BOUNDS.items())
    training = short_number(TRAINING_RTOL)
    assert f"(default by --dtype: {rtols}); with --train per tensor (default {training} in float64" in text
    assert f"(default by --dtype: {atols})" in text
    assert rtols == "1e-5 float32, 1e-10 float64, 3e-2 bfloat16" and short_number(2.5e-3) == "2.5e-3"


def test_backend_colours_follow_the_registry_order(monkeypatch):
    names = ("torch", "paddle", "flax", "numpy", "mine", "yours")
    assert [c for c, _ in canvas.backend_styles(names).values()] == [
        canvas.COLORS[0], canvas.COLORS[1], canvas.COLORS[2], canvas.COLORS[-1], canvas.COLORS[3], canvas.COLORS[4]]
    monkeypatch.setattr(registry, "backend_names", lambda: ("flax", "torch", "paddle", "mine"))
    styles = canvas.backend_styles(names)
    assert styles["flax"] == (canvas.COLORS[0], canvas.MARKERS[0]) and styles["mine"][0] == canvas.COLORS[3]
    assert styles["yours"][0] == canvas.COLORS[4] and styles["numpy"][0] == canvas.COLORS[-1]


def test_a_missing_extra_names_it():
    with pytest.raises(ImportError, match=r"drawing X needs no_such_module_here, which is not installed: "
                                          r"pip install 'resnet_multi\[plot\]' \(or pip install no_such_module_here\)"):
        canvas.require_extra("no_such_module_here", extra="plot", purpose="drawing X")


def test_training_needs_the_backend_contract(monkeypatch):
    import resnet_multi.training as training

    lacking = types.ModuleType("lacking_backend")
    lacking.NAME = "lacking"
    monkeypatch.setattr(training, "backend_of", lambda model: lacking)
    with pytest.raises(rm.BackendError, match=r"backend 'lacking' does not keep the backend contract "
                                              r"\(resnet_multi.registry.Backend\), so it cannot train: its module "
                                              r"defines no ") as info:
        rm.optimizer(object(), "sgd", lr=0.1)
    missing = str(info.value).split("defines no ")[1].split(", ")
    assert "build" in missing and "forward" in missing and "NAME" not in missing  # what it has is not listed


# --------------------------------------------------------------------------- the diagram reads the plan


def _svg_lines(path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize("spec_name", ["densenet121", "ghostnet_100"])
def test_diagram_of_a_headless_model_with_a_neck(tmp_path, spec_name):
    """A neck without a head (the features end after DenseNet's norm5, GhostNet's last conv) is
    drawn as its own box with the output arrow; it used to fail (the head's shape was looked up)."""
    spec = rm.get_spec(spec_name).replace(head=None)
    plan = rm.make_plan(spec)
    lines = _svg_lines(rm.diagram(spec, tmp_path / "d.svg", input_shape=(1, 3, 64, 96)))
    out = rm.summary(spec, input_shape=(1, 3, 64, 96)).output_shapes[plan.output_names()[0]]
    assert "neck" in lines and "head" not in lines
    assert "output\n" + "\u00d7".join(map(str, out[1:])) in "\n".join(lines)
    assert any(line.startswith("BN") or line.startswith("conv 1\u00d71") for line in lines)


def test_diagram_head_lists_the_plans_linears(tmp_path):
    spec = rm.get_spec("resnet18")
    plan = rm.make_plan(spec)
    head = [op for op in plan.head.ops if op.__class__.__name__ == "Linear"]
    assert plan.classifier == head[-1].name
    lines = _svg_lines(rm.diagram(spec, tmp_path / "d.svg"))
    assert f"global average pool \u2192 512 \u2192 fc {head[-1].in_features} \u2192 {head[-1].out_features}" in lines


def test_report_records_are_frozen_dataclasses():
    report = parity_report()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.results[0].ok = False
