"""Pictures of reports and specs (issue 12): parity plots, training plots, architecture diagrams
and the HTML report. Each kind is rendered for a passing and a failing report in every format;
files must be valid images of sensible size, and the failing ones must carry the first divergence,
read back from the SVG's text (matplotlib keeps text as text with svg.fonttype none)."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

import resnet_multi as rm
from resnet_multi.parity import compare_outputs
from resnet_multi.plot import parity_figure, plot_parity, plot_training, thin_labels, training_figure

SVG = "{http://www.w3.org/2000/svg}"
FORMATS = ("png", "svg", "pdf")


# --------------------------------------------------------------------------- reports to draw


def synthetic_parity(spec_name: str, bad_from: str | None = None, *, backends=("torch", "paddle", "flax"),
                     extra: dict | None = None):
    """A ParityReport from made-up outputs (no framework): each backend is the reference plus
    float32-sized noise; ``paddle`` is off by 2% from tap ``bad_from`` on. ``extra`` overrides
    single outputs, e.g. {("flax", "logits"): None} for a missing tap."""
    plan = rm.make_plan(rm.get_spec(spec_name))
    rng = np.random.default_rng(0)
    reference = {tap: rng.standard_normal((1, 8)) * (1 + 10 * i) for i, tap in enumerate(plan.tap_names)}
    outputs = {}
    for k, backend in enumerate(backends):
        broken = False
        taps = {}
        for tap, ref in reference.items():
            broken = broken or (backend == "paddle" and tap == bad_from)
            scale = 2e-2 if broken else 1e-7 * (k + 1)
            taps[tap] = ref + scale * np.abs(ref).max() * rng.standard_normal(ref.shape)
        for (name, tap), value in (extra or {}).items():
            if name == backend:
                taps[tap] = value
        outputs[backend] = taps
    return compare_outputs(plan, outputs, reference, input_shape=(1, 3, 33, 47))


@dataclasses.dataclass(frozen=True)
class Record:
    step: int
    phase: str
    backend: str
    tensor: str
    rel: float
    bound: float
    ok: bool


@dataclasses.dataclass(frozen=True)
class Divergence:
    step: int
    phase: str
    backend: str
    tensor: str
    rel: float


@dataclasses.dataclass(frozen=True)
class FakeTrainingReport:
    """The attributes plot_training reads, as the training check's TrainingReport has them."""

    backends: tuple
    steps: int
    bound_label: str
    rtol: float
    losses: dict
    records: tuple
    first_divergence: object
    spec_name: str = "resnet18"


PHASE_TENSORS = {"loss": ("loss",), "gradient": ("conv1.weight", "layer1.0.conv2.weight", "fc.weight"),
                 "update": ("conv1.weight", "layer1.0.conv2.weight", "fc.weight"),
                 "running_stats": ("bn1.running_mean", "bn1.running_var", "layer1.0.bn1.running_var")}


def synthetic_training(fail: bool, steps: int = 3, rtol: float = 1e-9) -> FakeTrainingReport:
    """float64-like errors (1e-14 .. 1e-11); when ``fail``, paddle's running variances are off by
    1e-3 from step 1 and everything of paddle's from step 2 (the first divergence: step 1,
    running_stats, paddle, bn1.running_var)."""
    rng = np.random.default_rng(1)
    backends = ("torch", "paddle", "flax")
    records = []
    for step in range(steps):
        for phase, tensors in PHASE_TENSORS.items():
            for backend in backends:
                for tensor in tensors:
                    rel = float(10 ** rng.uniform(-14, -11))
                    if fail and backend == "paddle" and (step >= 2 or (step == 1 and tensor.endswith("running_var"))):
                        rel = float(10 ** rng.uniform(-3, -2))
                    records.append(Record(step, phase, backend, tensor, rel, rtol, rel <= rtol))
    first = Divergence(1, "running_stats", "paddle", "bn1.running_var",
                       next(r.rel for r in records if not r.ok)) if fail else None
    losses = {"numpy": tuple(2.3 - 0.2 * s for s in range(steps))}
    for backend in backends:
        losses[backend] = tuple(v + (0.05 if fail and backend == "paddle" and s == 2 else 0.0)
                                for s, v in enumerate(losses["numpy"]))
    return FakeTrainingReport(backends, steps, f"bound {rtol:g} relative (float64)", rtol, losses, tuple(records),
                              first)


# --------------------------------------------------------------------------- reading files back


def image_size(path) -> tuple[float, float]:
    """(width, height) of a PNG (pixels), SVG (points) or PDF (points), after checking it is one."""
    data = path.read_bytes()
    if path.suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
        return struct.unpack(">II", data[16:24])
    if path.suffix == ".svg":
        root = ET.fromstring(data)
        assert root.tag == SVG + "svg"
        return float(root.get("width").removesuffix("pt")), float(root.get("height").removesuffix("pt"))
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), "not a PDF"
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert box, "PDF without a MediaBox"
    return float(box.group(1)), float(box.group(2))


def svg_texts(path, gid: str | None = None) -> str:
    """All text of an SVG file (or of its element with id ``gid``), one line per <text> element
    (matplotlib writes each line of a multi-line text as its own element)."""
    root = ET.parse(path).getroot()
    if gid is not None:
        root = next(e for e in root.iter() if e.get("id") == gid)
    return "\n".join("".join(t.itertext()) for t in root.iter(SVG + "text"))


def svg_group(path, gid: str):
    root = ET.parse(path).getroot()
    return next((g for g in root.iter() if g.get("id") == gid), None)


def rings(fig) -> dict[str, int]:
    """Markers per scatter with an id (the red rings around failures), read from the figure (the
    SVG backend writes a lone marker as a path and several as <use> references)."""
    return {c.get_gid(): len(c.get_offsets()) for ax in fig.axes for c in ax.collections if c.get_gid()}


# Sensible sizes: a page-width picture, neither a thumbnail nor a poster (PNG at 150 dpi).
SIZES = {"png": ((900, 500), (2000, 2200)), "svg": ((450, 250), (1000, 1100)), "pdf": ((450, 250), (1000, 1100))}


def assert_sensible(path, fmt):
    width, height = image_size(path)
    (min_w, min_h), (max_w, max_h) = SIZES[fmt]
    assert min_w <= width <= max_w and min_h <= height <= max_h, f"{path.name}: {width} x {height}"
    assert path.stat().st_size > 5_000


# --------------------------------------------------------------------------- parity plots


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("failing", [False, True], ids=["pass", "fail"])
def test_parity_plot_is_a_valid_image(tmp_path, fmt, failing):
    report = synthetic_parity("resnet50", "layer3.1" if failing else None)
    assert report.ok is not failing
    path = report.plot(tmp_path / f"parity.{fmt}")
    assert path == tmp_path / f"parity.{fmt}"
    assert_sensible(path, fmt)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_failing_parity_plot_annotates_the_first_divergence(tmp_path):
    report = synthetic_parity("resnet50", "layer3.1")
    path = report.plot(tmp_path / "fail.svg")
    text = svg_texts(path)
    row = next(r for r in report.results if (r.backend, r.tap) == ("paddle", "layer3.1"))
    assert svg_texts(path, "first-divergence").splitlines() == [
        "first divergence: paddle at layer3.1", f"rel {row.rel:.2e}, bound {row.bound / row.max_ref:.1e}"]
    assert "FAIL" in text and "PASS" not in text
    # every failing tap is ringed: layer3.1 .. layer3.5, layer3, layer4.0 .. layer4.2, layer4, pre_logits, logits
    assert rings(parity_figure(report)) == {"failing-taps": len(report.failures())}
    assert len(report.failures()) == 12


def test_passing_parity_plot_has_no_divergence(tmp_path):
    path = synthetic_parity("resnet50").plot(tmp_path / "pass.svg")
    text = svg_texts(path)
    assert "PASS: all 69 comparisons within the bound" in text
    assert "first divergence" not in text
    assert svg_group(path, "failing-taps") is None and svg_group(path, "first-divergence") is None
    for backend in ("torch", "paddle", "flax"):
        assert backend in text.splitlines()  # legend entries


def test_parity_plot_draws_missing_nan_and_zero_errors(tmp_path):
    """Non-numbers (a missing tap, nan) and exact zeros cannot sit on a log axis: they are drawn
    at the edges with their own markers and named in the legend, and the plot still says why."""
    plan = rm.make_plan(rm.get_spec("resnet18"))
    report = synthetic_parity("resnet18", extra={("flax", "layer2.0"): None,
                                                 ("torch", "logits"): np.full((1, 8), np.nan)})
    assert not report.ok and report.first_divergence.tap == "layer2.0"
    text = svg_texts(plot_parity(report, tmp_path / "odd.svg"))
    assert "no number: missing, mis-shaped or nan" in text
    assert "missing: the backend did not return this tap" in text  # the first divergence's note
    # a backend compared with itself: every error is exactly 0
    same = compare_outputs(plan, {"torch": {t: np.ones((1, 8)) for t in plan.tap_names}},
                           {t: np.ones((1, 8)) for t in plan.tap_names}, input_shape=(1, 3, 33, 47))
    assert all(r.rel == 0 for r in same.results)
    assert "exactly 0 (drawn at the bottom)" in svg_texts(plot_parity(same, tmp_path / "zero.svg"))


def _tick_label_boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in labels]


@pytest.mark.parametrize("spec_name", ["resnet18", "resnet152"])
def test_parity_plot_tap_labels_do_not_overlap(spec_name):
    report = synthetic_parity(spec_name, "layer3.1")
    boxes = _tick_label_boxes(parity_figure(report))
    names = [name for name, _ in boxes]
    assert names == list(report.taps)  # at resnet152 (57 taps) every label still fits
    for (a, box_a), (b, box_b) in zip(boxes, boxes[1:]):
        assert box_a.x1 <= box_b.x0 + 0.5, f"labels {a} and {b} overlap"


def test_parity_plot_thins_labels_that_would_overlap():
    """A report with 300 taps (as a much deeper spec would give) labels a readable subset: stages
    and the first divergence always, blocks at an even pitch, none overlapping."""
    plan_taps = ["stem"]
    for s in range(1, 5):
        plan_taps += [f"layer{s}.{i}" for i in range(74)] + [f"layer{s}"]
    plan_taps += ["pre_logits", "logits"]
    base = synthetic_parity("resnet18", "layer3.1")
    rows = []
    for backend in base.backends:
        for i, tap in enumerate(plan_taps):
            bad = backend == "paddle" and i >= plan_taps.index("layer3.41")
            rows.append(rm.parity.TapResult(backend, tap, (1, 8), 1e-1 if bad else 1e-6, 1.0, 1e-1 if bad else 1e-6,
                                            1.1e-5, not bad))
    report = dataclasses.replace(base, taps=tuple(plan_taps), results=tuple(rows))
    assert report.first_divergence.tap == "layer3.41"
    boxes = _tick_label_boxes(parity_figure(report))
    names = [name for name, _ in boxes]
    assert 20 < len(names) < len(plan_taps)
    # the ends, the first divergence and stages (layer4 sits two taps before logits: no room)
    assert {"stem", "logits", "layer3.41", "layer1", "layer2", "layer3"} <= set(names)
    for (a, box_a), (b, box_b) in zip(boxes, boxes[1:]):
        assert box_a.x1 <= box_b.x0 + 0.5, f"labels {a} and {b} overlap"


def test_thin_labels_keeps_priorities_and_spacing():
    taps = ["stem"] + [f"layer1.{i}" for i in range(20)] + ["layer1"] + [f"layer2.{i}" for i in range(9)]
    taps += ["layer2", "pre_logits", "logits"]
    chosen = thin_labels(taps, 4, keep=("layer1.9",))
    picked = [taps[i] for i in chosen]
    assert {"stem", "layer1", "logits", "layer1.9"} <= set(picked)
    assert "layer2" not in picked and "pre_logits" not in picked  # too close to logits, which ends the net
    assert all(b - a >= 4 for a, b in zip(chosen, chosen[1:]))
    assert thin_labels(taps, 1) == list(range(len(taps)))


@pytest.mark.parametrize("bad", ["parity.jpg", "parity", "parity.svg.txt"])
def test_plot_rejects_unknown_suffix(tmp_path, bad):
    with pytest.raises(ValueError, match=r"expected one of \.png, \.svg, \.pdf"):
        synthetic_parity("resnet18").plot(tmp_path / bad)
    assert list(tmp_path.iterdir()) == []


def test_plot_keeps_an_existing_file_when_drawing_fails(tmp_path):
    path = tmp_path / "parity.png"
    path.write_bytes(b"old")
    broken = dataclasses.replace(synthetic_parity("resnet18"), results=("not a TapResult",))
    with pytest.raises(AttributeError):
        broken.plot(path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["parity.png"]


# --------------------------------------------------------------------------- training plots


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("failing", [False, True], ids=["pass", "fail"])
def test_training_plot_is_a_valid_image(tmp_path, fmt, failing):
    path = plot_training(synthetic_training(failing), tmp_path / f"training.{fmt}")
    assert_sensible(path, fmt)


def test_failing_training_plot_annotates_the_first_divergence(tmp_path):
    report = synthetic_training(True)
    path = plot_training(report, tmp_path / "training.svg")
    text = svg_texts(path)
    assert "first divergence at step 1, running_stats, paddle: bn1.running_var" in text  # the title
    assert svg_texts(path, "first-divergence").splitlines() == [
        "first divergence", "step 1, paddle", "bn1.running_var", f"rel {report.first_divergence.rel:.2e}"]
    # one ring per (phase, step) where some paddle tensor fails: running_stats at steps 1 and 2,
    # every other phase at step 2
    assert rings(training_figure(report)) == {"failing-loss-paddle": 1, "failing-gradient-paddle": 1,
                                              "failing-update-paddle": 1, "failing-running_stats-paddle": 2}


def test_passing_training_plot(tmp_path):
    text = svg_texts(plot_training(synthetic_training(False), tmp_path / "ok.svg"))
    assert "PASS: all 90 comparisons within the bound" in text
    assert "first divergence" not in text
    for title in ("loss per step", "loss error", "worst gradient error", "worst update error",
                  "worst running-stat error", "bound 1e-09 relative (float64)", "numpy (reference)"):
        assert title in text


# --------------------------------------------------------------------------- diagrams


@pytest.mark.parametrize("spec_name", rm.list_specs())
def test_diagram_of_every_preset(tmp_path, spec_name):
    spec = rm.get_spec(spec_name)
    path = rm.diagram(spec, tmp_path / f"{spec_name}.svg", input_shape=(1, spec.in_channels, 64, 96))
    width, height = image_size(path)
    # one page, resnet18 through resnet152; GhostNet's 10 stages of different blocks, and its blocks'
    # lines (a ghost block's convs and its dw + conv projection) ~850 px wide: the box is as wide as its text, which once overran it; its blocks of
    # different widths are a box each, and its neck is drawn, ~1440 px high (issue 19)
    assert 600 <= width <= 870 and 400 <= height <= 1450
    text = svg_texts(path)
    plan = rm.make_plan(spec)
    table = rm.summary(spec, input_shape=(1, spec.in_channels, 64, 96))
    for stage, row in zip(plan.stages, [r for r in table.rows if r.name.startswith("layer")]):
        assert stage.name in text.splitlines()
        assert "out " + "\u00d7".join(map(str, row.output_shape[1:])) in text  # the stage's output shape
    assert (f"{table.total_params / 1e6:.2f} M parameters" in text
            or f"{table.total_params / 1e3:.1f} k parameters" in text)  # small nets (d2l) in thousands
    assert ("shortcut identity" in text or "shortcut concatenation" in text  # DenseNet's layers
            or all(len(s.blocks) == 1 for s in plan.stages))


def test_diagram_reads_hornets_two_residuals_and_its_filter(tmp_path):
    """HorNet's block adds twice (x + gnconv(...), then + mlp(...)): read from the graph, drawn as
    two arcs per box; its gnconv's products of two maps are not squeeze-excite; the filter stages
    say so."""
    path = rm.diagram("hornet_tiny_gf", tmp_path / "hornet.svg")
    text = svg_texts(path)
    lines = [line for line in text.splitlines() if "shortcut identity" in line]
    assert len(lines) == 4 and all(line.endswith("shortcut identity \u00d72") for line in lines), lines
    assert "SE" not in text
    assert sum("global filter" in line for line in lines) == 2  # stages 3 and 4 (the _gf presets)
    assert "conv 1\u00d71, 128 \u2192 7\u00d77 dw \u2192 1\u00d71, 64 \u2192 1\u00d71, 64" in lines[0]  # proj_in, dw, pws, proj_out
    from resnet_multi.reports.diagram import diagram_figure

    arcs = [line for line in diagram_figure("hornet_tiny_gf").axes[0].lines if line.get_gid() == "residual"]
    assert len(arcs) == 2 * len(lines) == 8  # one box per stage (its blocks collapsed), two arcs each
    convnext = svg_texts(rm.diagram("convnext_tiny", tmp_path / "convnext.svg"))
    assert "shortcut identity\n" in convnext + "\n" and "shortcut identity \u00d7" not in convnext


def test_diagram_collapses_repeated_blocks_of_resnet152(tmp_path):
    text = svg_texts(rm.diagram("resnet152", tmp_path / "r152.svg"))
    lines = text.splitlines()
    for title in ("layer1.0", "layer1.1 \u2026 layer1.2  \u00d72", "layer2.1 \u2026 layer2.7  \u00d77",
                  "layer3.1 \u2026 layer3.35  \u00d735", "layer4.1 \u2026 layer4.2  \u00d72"):
        assert title in lines
    assert not any(line == "layer3.5" for line in lines)
    # shapes and parameter counts of the collapsed row (from the plan's parameter table)
    assert "1024\u00d714\u00d714   1.12 M params each" in lines
    assert "conv 1\u00d71, 256 \u2192 3\u00d73, 256 \u2192 1\u00d71, 1024   \u2502   shortcut identity" in lines
    assert ("conv 1\u00d71, 256 \u2192 3\u00d73, 256 \u2192 1\u00d71, 1024   \u2502   shortcut projection: "
            "conv 1\u00d71 + BN, stride 2") in lines


@pytest.mark.parametrize("spec_name, shortcut", [
    ("resnet50d", "projection: pool + conv 1\u00d71 + BN, stride 2"),   # ResNet-D: avg-pool shortcut
    ("d2l_resnet18", "projection: conv 1\u00d71, stride 2"),            # conv without BN
    ("resnext50_32x4d", "3\u00d73, 128, 32 groups"),                     # grouped conv
    # GhostNet: depthwise shortcut under `shortcut.*` (not `downsample`), read from the graph
    ("ghostnet_100", ("conv 1\u00d71, 24 \u2192 3\u00d73 dw \u2192 3\u00d73 dw \u2192 1\u00d71, 12 \u2192 3\u00d73 dw   "
                      "\u2502   shortcut projection: dw 3\u00d73 + BN + conv 1\u00d71 + BN, stride 2")),
    ("densenet121", "conv 1\u00d71, 128 \u2192 3\u00d73, 32 \u2026 (widths grow)   \u2502   shortcut concatenation"),
    ("densenet121", "conv 1\u00d71, 128   \u2502   no shortcut, stride 2"),  # a transition
])
def test_diagram_names_shortcut_kinds(tmp_path, spec_name, shortcut):
    assert shortcut in svg_texts(rm.diagram(spec_name, tmp_path / "d.svg"))


def test_diagram_shows_feature_pyramid_outputs(tmp_path):
    spec = dataclasses.replace(rm.get_spec("resnet50"), name="resnet50_fpn", head=None, out_indices=(1, 2, 3))
    path = rm.diagram(spec, tmp_path / "fpn.png", input_shape=(1, 3, 96, 128))
    assert_sensible(path, "png")
    text = svg_texts(rm.diagram(spec, tmp_path / "fpn.svg", input_shape=(1, 3, 96, 128)))
    assert "feature output 0 (out_indices[0] = 1)\n512\u00d712\u00d716" in text
    assert "feature output 2 (out_indices[2] = 3)\n2048\u00d73\u00d74" in text
    assert "head" not in text.splitlines() and "logits" not in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_diagram_formats(tmp_path, fmt):
    assert_sensible(rm.diagram("resnet18", tmp_path / f"r18.{fmt}"), fmt)


def test_diagram_rejects_a_bad_input_shape(tmp_path):
    with pytest.raises(ValueError, match=r"input_shape: expected 3 input channel\(s\)"):
        rm.diagram("resnet50", tmp_path / "d.svg", input_shape=(1, 1, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        rm.diagram("resnet50", tmp_path / "d.svg", input_shape=(1, 3, 0, 47))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- without matplotlib, and imports


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_drawing_imports_no_framework_and_import_stays_free_of_matplotlib(tmp_path):
    code = (
        "import sys, resnet_multi as rm\n"
        "assert 'matplotlib' not in sys.modules, 'import resnet_multi imported matplotlib'\n"
        "assert 'resnet_multi.plot' not in sys.modules, 'the drawing code is loaded on first use'\n"
        f"rm.diagram('resnet152', {str(tmp_path / 'd.svg')!r})\n"
        "assert 'matplotlib' in sys.modules\n"
        "loaded = [m for m in ('torch', 'paddle', 'jax', 'flax') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    out = _run_fresh(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_without_matplotlib_the_error_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None  # as if not installed\n"
        "import resnet_multi as rm\n"
        "try:\n"
        f"    rm.diagram('resnet18', {str(tmp_path / 'd.svg')!r})\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "from resnet_multi.cli import main\n"
        f"sys.exit(main(['summary', 'resnet18', '--diagram', {str(tmp_path / 'd.png')!r}]))\n"
    )
    out = _run_fresh(code)
    assert "pip install 'resnet_multi[plot]'" in out.stdout
    assert out.returncode == 2 and "resnet_multi[plot]" in out.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- HTML report


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.data: dict[str, str] = {}
        self._current = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._current = dict(attrs).get("id")

    def handle_data(self, data):
        if self._current:
            self.data[self._current] = self.data.get(self._current, "") + data


@pytest.mark.parametrize("failing", [False, True], ids=["pass", "fail"])
def test_html_report_is_self_contained_and_complete(tmp_path, failing):
    from resnet_multi.html_report import write_html

    report = synthetic_parity("resnet50", "layer3.1" if failing else None)
    spec = rm.get_spec("resnet50")
    path = write_html(report, tmp_path / "report.html", spec=spec, command="resnet-multi parity resnet50")
    page = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    # self-contained: no external resources of any kind
    assert tags.count("svg") == 1 and "img" not in tags and "link" not in tags and "iframe" not in tags
    for tag, attrs in parser.tags:
        assert "src" not in attrs, (tag, attrs)
        assert not str(attrs.get("href", "")).startswith(("http:", "https:", "//")), (tag, attrs)
    assert "@import" not in page
    assert re.findall(r"url\((?!#)", page) == []  # only references inside the page (SVG clip paths)
    # every tap's numbers for every backend
    for r in report.results:
        assert f">{r.tap}<" in page
        assert f"{r.rel:.2e}" in page and f"{r.max_abs:.2e}" in page
    # the machine-readable copy is the report
    assert json.loads(parser.data["report-data"]) == json.loads(json.dumps(report.to_dict()))
    # spec and environment
    assert html.escape(json.dumps(spec.to_dict(), indent=2)) in page
    import numpy

    assert f"<td class=\"name\">numpy</td><td class=\"name\">{numpy.__version__}</td>" in page
    assert "logical CPUs" in page
    assert "resnet-multi parity resnet50" in page
    if failing:
        assert 'id="first-divergence"' in page and "first divergence: paddle at layer3.1" in page
        assert 'class="fail first"' in page
    else:
        assert "PASS: all 69 comparisons" in page and 'id="first-divergence"' not in page
        assert "first divergence:" not in page


@pytest.mark.parametrize("failing", [False, True], ids=["pass", "fail"])
def test_training_html_report(tmp_path, failing):
    from resnet_multi.html_report import write_html

    report = synthetic_training(failing)
    page = write_html(report, tmp_path / "training.html", spec=rm.get_spec("resnet18")).read_text()
    parser = _Collector()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert tags.count("svg") == 1 and "img" not in tags and "link" not in tags
    assert all("src" not in attrs for _, attrs in parser.tags)
    for r in report.records:  # every comparison's number, in its row
        assert f"{r.rel:.2e}" in page and f">{r.tensor}<" in page
    for name, values in report.losses.items():
        assert f"<th class=\"\">{name}</th>" in page and f"{values[-1]:.12g}" in page
    assert ('id="first-divergence"' in page) is failing
    if failing:
        assert ("First divergence: step 1, running_stats, paddle, <code>bn1.running_var</code>" in page
                and 'class="fail first"' in page)
    else:
        assert "PASS: all 90 comparisons" in page


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("failing", [False, True], ids=["pass", "fail"])
def test_cli_parity_writes_plot_and_html(tmp_path, capsys, failing):
    """A real check (torch against the oracle); --rtol 0 --atol 0 makes every tap fail (float32
    is never exactly float64), and the files are written for the failing report too."""
    from resnet_multi.cli import main

    bound = ["--rtol", "0", "--atol", "0"] if failing else []
    code = main(["parity", "resnet18", "--backends", "torch", *bound, "--plot", str(tmp_path / "p.svg"),
                 "--html", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == (1 if failing else 0), err
    assert f"wrote {tmp_path / 'p.svg'}" in err and f"wrote {tmp_path / 'r.html'}" in err
    text = svg_texts(tmp_path / "p.svg")
    page = (tmp_path / "r.html").read_text()
    assert ("first divergence: torch at stem" in text) is failing
    assert ("first divergence: torch at stem" in page) is failing
    assert "resnet-multi parity resnet18 --backends torch" in page
    assert '"name": "resnet18"' in page.replace("&quot;", '"')


def test_cli_summary_diagram(tmp_path, capsys):
    from resnet_multi.cli import main

    assert main(["summary", "resnet50", "--input", "1,3,160,160", "--diagram", str(tmp_path / "r50.png")]) == 0
    assert "layer4" in capsys.readouterr().out  # the table is still printed
    assert_sensible(tmp_path / "r50.png", "png")


@pytest.mark.parametrize("argv, message", [
    (["parity", "resnet18", "--plot", "p.jpg"], "expected a file name ending in .png, .svg, .pdf"),
    (["parity", "resnet18", "--html", "r.txt"], "expected a file name ending in .html, .htm"),
    (["summary", "resnet18", "--diagram", "d"], "expected a file name ending in .png, .svg, .pdf"),
])
def test_cli_rejects_bad_output_names_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    from resnet_multi.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_real_training_report_plots(tmp_path):
    """TrainingReport.plot on an actual check_training result (the tests above use stand-ins)."""
    from test_training import tiny

    report = rm.check_training(tiny("resnet18"), backends=("torch", "paddle"), steps=2)
    path = report.plot(tmp_path / "training.svg")
    text = path.read_text()
    assert report.ok and path.stat().st_size > 5_000 and "loss" in text and "paddle" in text


@pytest.mark.parametrize("spec_name", rm.list_specs())
def test_diagram_parameters_add_up_to_the_summarys(spec_name):
    """Every parameter is drawn somewhere: stem, blocks (a collapsed run counts each of its blocks),
    neck (GhostNet's 1x1 conv 160->960, DenseNet's final BN, once missing) and head."""
    from resnet_multi.reports.diagram import _diagram_rows, drawn_parameters

    spec = rm.get_spec(spec_name)
    shape = (1, spec.in_channels, 64, 96)
    _, rows, _ = _diagram_rows(spec, shape)
    assert drawn_parameters(rows) == rm.summary(spec, input_shape=shape).total_params
    if rm.make_plan(spec).neck is not None:
        assert [row.kind for row in rows][-2:] == ["neck", "head"]


@pytest.mark.parametrize("spec_name", ["ghostnet_100", "resnet50d", "resnext50_32x4d", "densenet121"])
def test_diagram_text_stays_inside_its_box(spec_name):
    """The block lines (convs | shortcut) of the widest presets end inside their boxes, as rendered."""
    from matplotlib.patches import FancyBboxPatch

    from resnet_multi.reports.diagram import diagram_figure

    spec = rm.get_spec(spec_name)
    fig = diagram_figure(spec, (1, spec.in_channels, 224, 224))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [patch.get_window_extent(renderer) for patch in ax.patches if isinstance(patch, FancyBboxPatch)]
    lines = [text for text in ax.texts if text.get_gid() == "shortcut"]
    assert lines
    for text in lines:
        extent = text.get_window_extent(renderer)
        box = min((b for b in boxes if b.y0 <= extent.y0 and extent.y1 <= b.y1 and b.x0 <= extent.x0),
                  key=lambda b: b.width)
        assert extent.x1 <= box.x1, f"{text.get_text()!r} overruns its box by {extent.x1 - box.x1:.0f} px"


def test_diagram_groups_only_blocks_that_differ_in_input_width():
    """GhostNet's blocks of other widths or with squeeze-excite are their own boxes; DenseNet's layers,
    which differ only in the channels they take in, stay one box."""
    from resnet_multi.reports.diagram import _diagram_rows

    _, rows, _ = _diagram_rows(rm.get_spec("ghostnet_100"), (1, 3, 224, 224))
    assert not any(row.varying for row in rows)
    _, rows, _ = _diagram_rows(rm.get_spec("densenet121"), (1, 3, 224, 224))
    assert [row.title for row in rows if row.varying] == [f"denselayer1 \u2026 denselayer{n}  \u00d7{n}"
                                                           for n in (6, 12, 24, 16)]


def test_plot_titles_name_the_model_and_fit_the_figure():
    """The training plot's title names the model; a failing parity plot's long verdict is wrapped inside
    the figure, not cut off at its right edge."""
    from resnet_multi.reports.plots import parity_figure, training_figure

    fig = training_figure(synthetic_training(fail=True))
    assert fig._suptitle.get_text().startswith("training check of resnet18: torch, paddle, flax, 3 steps")
    fig = parity_figure(synthetic_parity("resnet152", bad_from="layer1.0", backends=("torch", "paddle", "flax")))
    fig.canvas.draw()
    title = fig.axes[0].title if fig.axes[0].title.get_text() else fig.axes[0]._left_title
    extent = title.get_window_extent(fig.canvas.get_renderer())
    assert "FAIL" in title.get_text() and extent.x1 <= fig.bbox.x1, (extent.x1, fig.bbox.x1)
