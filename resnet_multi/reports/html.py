"""A parity or training report as one self-contained HTML file, to attach to an issue or a pull request.

The file holds everything and fetches nothing: the plot as inline SVG (text kept as text), the
summary table, every tap's numbers for every backend, the spec as JSON, the environment
(framework versions, CPU, Python) and the report's ``to_dict()`` as embedded JSON for machines.
No scripts, stylesheets, fonts or images are loaded from anywhere.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import platform
import re
from pathlib import Path

from .parity import NUMPY

DISTRIBUTIONS = ("resnet_multi", "numpy", "torch", "paddlepaddle", "jax", "jaxlib", "flax", "matplotlib")
"""The packages whose versions the environment table lists (read from package metadata, so
listing a framework never imports it)."""

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 24px auto;
       max-width: 1180px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.pass { background: #e6f4ea; border: 1px solid #9ccfa8; } .failbox { background: #fdecea; border: 1px solid #f1a59d; }
table { border-collapse: collapse; font: 12.5px/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
tr.stage td { background: #faf7ef; } td.fail { background: #fdecea; color: #b3261e; font-weight: 600; }
td.first { outline: 2px solid #d62728; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 10px; overflow-x: auto; font-size: 12px; }
figure { margin: 0; } figure svg { max-width: 100%; height: auto; }
.muted { color: #666; }
"""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, str]:
    """Python, OS, CPU and the versions of ``DISTRIBUTIONS`` ("not installed" when absent)."""
    from importlib import metadata

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs, {platform.machine()})"}
    for name in DISTRIBUTIONS:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    return env


def _inline_svg(svg: str) -> str:
    """An SVG document as an element to put in HTML: no XML declaration, doctype or metadata
    block, and scaled to the page width (the viewBox keeps the proportions)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)
    svg = re.sub(r'(<svg[^>]*?)\swidth="[^"]*"\s+height="[^"]*"', r"\1", svg, count=1)
    return svg.replace("<svg", '<svg role="img" aria-label="relative error per tap and backend"', 1)


def _num(value: float, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}e}"


def _table(head: list[str], rows: list[tuple[str, list[tuple[str, str]]]]) -> str:
    """head: column titles; rows: (css class of the row, cells as (css class, already-escaped html))."""
    out = ["<table><thead><tr>"]
    out += [f'<th class="{"name" if i == 0 else ""}">{html.escape(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row_class, cells in rows:
        out.append(f'<tr class="{row_class}">' if row_class else "<tr>")
        out += [f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for c, v in cells]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _page_head(title: str) -> str:
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n")


def _generated() -> str:
    return f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC."


def _page_tail(spec, env: dict[str, str] | None, data: dict | None) -> str:
    """Spec, environment, the machine-readable report, and the end of the page."""
    esc = html.escape
    parts = ["\n<h2>Spec</h2>\n"]
    if spec is not None:
        parts.append(f"<pre>{esc(json.dumps(spec.to_dict(), indent=2))}</pre>\n")
    else:
        parts.append('<p class="muted">(not attached)</p>\n')
    parts.append("<h2>Environment</h2>\n")
    env = environment() if env is None else env
    parts.append(_table(["", "version / value"], [("", [("name", esc(k)), ("name", esc(v))]) for k, v in env.items()]))
    if data is not None:
        text = json.dumps(data).replace("</", "<\\/")  # cannot end the script element early
        parts.append(f'\n<script type="application/json" id="report-data">{text}</script>')
    parts.append("\n</body>\n</html>\n")
    return "".join(parts)


def parity_html(report, *, spec=None, command: str | None = None, env: dict[str, str] | None = None) -> str:
    """The HTML text of a parity report (see ``write_html``)."""
    from .canvas import svg_text
    from .plots import parity_figure

    esc = html.escape
    first = report.first_divergence
    ok = first is None
    reference = report.reference + (" (float64 oracle)" if report.reference == NUMPY else "")
    shape = "x".join(map(str, report.input_shape))
    parts = [_page_head(f"parity of {report.spec_name}: {'PASS' if ok else 'FAIL'}")]
    parts.append(f"<h1>Parity of {esc(report.spec_name)}</h1>\n")
    parts.append(f'<p class="muted">input {esc(shape)}, reference {esc(reference)}, backends '
                 f"{esc(', '.join(report.backends))}. A tap passes when max|out - ref| &le; "
                 f"{report.atol:g} + {report.rtol:g} &times; max|ref|. {_generated()}</p>\n")
    if command:
        parts.append(f"<pre>{esc(command)}</pre>\n")
    if ok:
        parts.append(f'<div class="verdict pass">PASS: all {len(report.results)} comparisons are within '
                     f"the bound.</div>\n")
    else:
        failing = report.failures()
        parts.append(f'<div class="verdict failbox" id="first-divergence">FAIL: {len(failing)} of '
                     f"{len(report.results)} comparisons out of bound. First divergence: {esc(first.backend)} at "
                     f"<code>{esc(first.tap)}</code> (max abs {_num(first.max_abs, 3)}, relative "
                     f"{_num(first.rel, 3)}). Later taps inherit its error: look there first.</div>\n")

    parts.append(f"<figure>{_inline_svg(svg_text(parity_figure(report)))}</figure>\n")

    parts.append("<h2>Summary</h2>\n")
    summary_rows = []
    for backend in report.backends:
        s = report.summary_of(backend)
        d = report.divergences.get(backend)
        result = "ok" if d is None else f"FAIL from {esc(d.tap)}"
        summary_rows.append(("", [("name", esc(backend)), ("", f"{s['passed']}/{s['taps']}"),
                             ("", _num(s["worst_rel"])), ("name", esc(s["worst_tap"] or "-")),
                             ("fail" if d else "name", result)]))
    parts.append(_table(["backend", "passed", "worst rel", "at tap", "result"], summary_rows))

    parts.append("\n<h2>Every tap</h2>\n<p class=\"muted\">rel = max|out - ref| / max|ref|; bound = atol + "
                 "rtol &times; max|ref| (absolute). Failing cells are red; the first divergence is outlined.</p>\n")
    head = ["tap", "shape", "max|ref|", "bound"]
    for backend in report.backends:
        head += [f"{backend} max abs", f"{backend} rel"]
    by_key = {(r.backend, r.tap): r for r in report.results}
    tap_rows = []
    for tap in report.taps:
        rows = [by_key.get((b, tap)) for b in report.backends]
        known = next((r for r in rows if r is not None), None)
        shape_text = "x".join(map(str, known.shape)) if known is not None else "-"
        cells = [("name", esc(tap)), ("", esc(shape_text)),
                 ("", _num(known.max_ref if known else None)), ("", _num(known.bound if known else None))]
        for b, r in zip(report.backends, rows):
            if r is None:
                cells += [("", "-"), ("", "-")]
                continue
            klass = "fail" if not r.ok else ""
            if first is not None and (b, tap) == (first.backend, first.tap):
                klass += " first"
            note = f' title="{esc(r.note)}"' if r.note else ""
            rel = _num(r.rel) + (f" <span{note}>({esc(r.note)})</span>" if r.note else "")
            cells += [(klass, _num(r.max_abs)), (klass, rel)]
        tap_rows.append(("stage" if "." not in tap else "", cells))
    parts.append(_table(head, tap_rows))

    parts.append(_page_tail(spec, env, report.to_dict()))
    return "".join(parts)


def training_html(report, *, spec=None, command: str | None = None, env: dict[str, str] | None = None) -> str:
    """The HTML text of a training check (see ``write_html``): verdict, plot, per-backend and
    per-phase summary, loss per step, and every comparison (step, phase, tensor) per backend."""
    from .canvas import svg_text
    from .plots import PHASES, training_figure

    esc = html.escape
    first = getattr(report, "first_divergence", None)
    records = tuple(report.records)
    failing = [r for r in records if not r.ok]
    name = getattr(report, "spec_name", None) or (spec.name if spec is not None else "")
    parts = [_page_head(f"training check {name}: {'FAIL' if failing or first else 'PASS'}".replace("  ", " "))]
    parts.append(f"<h1>Training check{' of ' + esc(name) if name else ''}</h1>\n")
    bound = getattr(report, "bound_label", None)
    parts.append(f'<p class="muted">backends {esc(", ".join(report.backends))}, {int(report.steps)} steps'
                 f"{'; ' + esc(bound) if isinstance(bound, str) and bound else ''}. {_generated()}</p>\n")
    if command:
        parts.append(f"<pre>{esc(command)}</pre>\n")
    if first is None and not failing:
        parts.append(f'<div class="verdict pass">PASS: all {len(records)} comparisons are within the bound.</div>\n')
    else:
        where = ("" if first is None else f" First divergence: step {first.step}, {esc(first.phase)}, "
                 f"{esc(first.backend)}, <code>{esc(first.tensor)}</code> (relative {_num(first.rel, 3)}).")
        parts.append(f'<div class="verdict failbox" id="first-divergence">FAIL: {len(failing)} of {len(records)} '
                     f"comparisons out of bound.{where}</div>\n")
    parts.append(f"<figure>{_inline_svg(svg_text(training_figure(report)))}</figure>\n")

    parts.append("<h2>Summary</h2>\n")
    rows = []
    for backend in report.backends:
        for phase in PHASES:
            mine = [r for r in records if r.backend == backend and r.phase == phase]
            if not mine:
                continue
            worst = max(mine, key=lambda r: math.inf if math.isnan(r.rel) else r.rel)
            bad = sum(not r.ok for r in mine)
            rows.append(("", [("name", esc(backend)), ("name", esc(phase)), ("", f"{len(mine) - bad}/{len(mine)}"),
                              ("fail" if not worst.ok else "", _num(worst.rel)),
                              ("name", f"step {worst.step}: {esc(worst.tensor)}")]))
    parts.append(_table(["backend", "phase", "passed", "worst rel", "at"], rows))

    parts.append("\n<h2>Loss per step</h2>\n")
    names = list(report.losses)
    steps = max((len(v) for v in report.losses.values()), default=0)
    rows = [("", [("name", str(step))] + [("", f"{report.losses[n][step]:.12g}" if step < len(report.losses[n])
                                              else "-") for n in names]) for step in range(steps)]
    parts.append(_table(["step", *names], rows))

    parts.append("\n<h2>Every comparison</h2>\n<p class=\"muted\">relative error per backend; failing cells are "
                 "red; the first divergence is outlined.</p>\n")
    table: dict[tuple, dict] = {}
    order = {phase: i for i, phase in enumerate(PHASES)}
    for r in records:
        table.setdefault((r.step, r.phase, r.tensor), {})[r.backend] = r
    rows = []
    for (step, phase, tensor), by_backend in sorted(table.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
        some = next(iter(by_backend.values()))
        cells = [("name", str(step)), ("name", esc(phase)), ("name", esc(tensor)), ("", _num(some.bound))]
        for backend in report.backends:
            r = by_backend.get(backend)
            if r is None:
                cells.append(("", "-"))
                continue
            klass = "" if r.ok else "fail"
            if first is not None and (r.step, r.phase, r.backend, r.tensor) == (
                    first.step, first.phase, first.backend, first.tensor):
                klass += " first"
            cells.append((klass.strip(), _num(r.rel)))
        rows.append(("", cells))
    parts.append(_table(["step", "phase", "tensor", "bound", *report.backends], rows))
    to_dict = getattr(report, "to_dict", None)
    parts.append(_page_tail(spec, env, to_dict() if callable(to_dict) else None))
    return "".join(parts)


def write_html(report, path: str | os.PathLike, *, spec=None, command: str | None = None) -> Path:
    """Write a parity or training report as one self-contained HTML file (inline SVG plot, the
    tables, spec and environment; nothing is loaded from the network).

    Args:
        report: a ParityReport (``rm.check_parity``) or a TrainingReport (``rm.check_training``:
            anything with ``records``).
        path: the .html file to write (through a temporary file and a rename).
        spec: the ResNetSpec checked, shown as JSON (optional).
        command: the command line that produced the report, shown verbatim (optional).
    Returns:
        The path written.
    Example:
        >>> write_html(rm.check_parity("resnet18", backends=("torch",)), "parity.html", spec=rm.get_spec("resnet18"))
        PosixPath('parity.html')
    """
    from ..io_util import atomic_write_text

    render = training_html if hasattr(report, "records") else parity_html
    atomic_write_text(path, render(report, spec=spec, command=command))
    return Path(path)
