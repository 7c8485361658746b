"""Pictures of reports and specs: parity error against depth, training errors per step, and an
architecture diagram.

matplotlib is an optional extra (``pip install 'resnet_multi[plot]'``). It is imported inside the
functions that draw, never when ``resnet_multi`` is imported, and always through the Agg canvas:
figures are made with ``matplotlib.figure.Figure`` (not pyplot), so drawing never opens a window,
never needs a display and never changes matplotlib's global backend.

Files are PNG, SVG or PDF, chosen by the suffix of the path, and written through a temporary file
that is renamed when complete. SVGs keep their text as text (``svg.fonttype = none``): a reader
can search it, and tests read the annotations back from the file.

- ``plot_parity(report, path)``: one line per backend, relative error of every tap in execution
  order on a log scale, the bound drawn in, failing taps ringed, the first divergence annotated.
- ``plot_training(report, path)``: loss per step; worst loss, gradient, update and running-stat
  error per step and backend, against the bound.
- ``diagram(spec, path, input_shape=...)``: stem, stages, blocks (repeated blocks collapsed), their
  output shapes, parameter counts, shortcut kinds, head and feature-pyramid outputs, from the plan.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

from . import plan as P

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""Suffix -> matplotlib format of the files the plotting functions write."""

PLOT_EXTRA = "resnet_multi[plot]"

# The tab10 palette without its red: red means "fails" in every picture.
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
_MARKERS = ("o", "s", "D", "^", "v", "P", "*", "h")
_FAIL = "#d62728"

# Text stays text in SVG; the file is the same on every run (no date, fixed ids).
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "resnet_multi",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
}
_METADATA = {"svg": {"Date": None, "Creator": "resnet_multi"},
             "pdf": {"CreationDate": None, "Creator": "resnet_multi"},
             "png": {"Software": "resnet_multi"}}


# --------------------------------------------------------------------------- plumbing


def require_matplotlib():
    """Import matplotlib (the ``plot`` extra) or raise an ImportError that says how to get it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"drawing plots and diagrams needs matplotlib, which is not installed: "
                          f"pip install '{PLOT_EXTRA}' (or pip install matplotlib)") from exc
    return matplotlib


def figure_format(path: str | os.PathLike) -> str:
    """The file format ("png", "svg" or "pdf") named by ``path``'s suffix; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{os.fspath(path)!r}: cannot tell the picture format from the suffix "
                         f"{suffix or '(none)'!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def _new_figure(figsize, **kwargs):
    """A Figure on an Agg canvas (no pyplot: no window, no display, no global state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


@contextlib.contextmanager
def _style():
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def _save(fig, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    from .io_util import atomic_path

    fmt = figure_format(path)
    with _style(), atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_METADATA[fmt], facecolor="white")
    return Path(path)


def svg_text(fig) -> str:
    """The figure as an SVG document (text kept as text), for embedding in HTML."""
    buffer = io.StringIO()
    with _style():
        fig.savefig(buffer, format="svg", metadata=_METADATA["svg"], facecolor="white")
    return buffer.getvalue()


def _finite_positive(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]


def _on_log_axis(value: float, floor: float, ceiling: float) -> float:
    """Where an error is drawn on a log axis: non-numbers (inf, nan) at the top edge, exact
    zeros at the bottom edge (each with its own marker where it matters)."""
    if not math.isfinite(value):
        return ceiling
    return floor if value <= 0 else value


_FIXED = {"torch": 0, "paddle": 1, "flax": 2, "numpy": 7}  # one colour per backend in every picture


def _colors(names) -> dict[str, tuple[str, str]]:
    """(colour, marker) per name: the known backends keep theirs; other labels take the rest in order."""
    free = [i for i in range(len(_COLORS)) if i not in _FIXED.values()]
    style, k = {}, 0
    for name in names:
        if name in _FIXED:
            i = _FIXED[name]
        else:
            i, k = free[k % len(free)], k + 1
        style[name] = (_COLORS[i], _MARKERS[i])
    return style


# --------------------------------------------------------------------------- parity


def _groups(taps: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(stage, first index, last index) for every tap that names a group of taps: ``layer2`` for
    ``layer2.0 .. layer2.3, layer2``. From the names alone, so any family that names blocks under
    their stage gets the bands."""
    index = {t: i for i, t in enumerate(taps)}
    groups = []
    for tap in taps:
        members = [index[t] for t in taps if t.startswith(tap + ".")]
        if members:
            groups.append((tap, min(members + [index[tap]]), max(members + [index[tap]])))
    return groups


def thin_labels(taps, capacity_gap: int, keep=()) -> list[int]:
    """Indices of the taps to label on an axis where labels closer than ``capacity_gap`` taps
    would overlap. Taps in ``keep`` come first (in their order), then the taps without a dot
    (stem, stages, pre_logits, logits), then blocks at an even pitch; a tap is labelled only if
    it is at least ``capacity_gap`` away from every tap labelled before it."""
    if not taps:
        return []
    gap = max(1, int(capacity_gap))
    index = {t: i for i, t in enumerate(taps)}
    order = [index[t] for t in keep if t in index]
    order += [0, len(taps) - 1]  # where the network starts and ends
    order += [i for i, t in enumerate(taps) if any(u.startswith(t + ".") for u in taps)]  # stages
    order += [i for i, t in enumerate(taps) if "." not in t]
    order += list(range(len(taps)))
    chosen: list[int] = []
    for i in order:
        if i not in chosen and all(abs(i - j) >= gap for j in chosen):
            chosen.append(i)
    return sorted(chosen)


def parity_figure(report):
    """The matplotlib Figure of ``plot_parity`` (for embedding; most callers want the file)."""
    taps = tuple(report.taps)
    n = max(len(taps), 1)
    x_of = {t: i for i, t in enumerate(taps)}
    width = min(12.0, max(7.0, 3.0 + 0.14 * n))
    with _style():
        fig = _new_figure((width, 5.2), layout="constrained")
        ax = fig.add_subplot()
        ax.set_yscale("log")

        # The bound, in the units plotted: bound / max|ref| = rtol + atol / max|ref| (one reference,
        # so one value per tap whichever backend's row it is read from).
        max_ref: dict[str, float] = {}
        for r in report.results:
            max_ref.setdefault(r.tap, r.max_ref)
        rel_bound = [report.rtol + report.atol / max_ref[t] if max_ref.get(t, 0) > 0 else math.nan for t in taps]

        finite = _finite_positive([r.rel for r in report.results] + rel_bound)
        low = min(finite) / 20 if finite else 1e-12
        high = max(finite) * 20 if finite else 1.0
        floor, ceiling = low * 2, high / 2  # where exact zeros and non-numbers are drawn

        for name, lo, hi in _groups(taps)[::2]:
            ax.axvspan(lo - 0.5, hi + 0.5, color="0.95", lw=0, zorder=0)
        for name, lo, hi in _groups(taps):
            ax.text((lo + hi) / 2, 0.985, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=7.5, color="0.35", zorder=1)

        xs = list(range(len(taps)))
        drawn_bound = [max(b, floor) if math.isfinite(b) else b for b in rel_bound]  # a zero bound (rtol=atol=0)
        ax.step(xs, drawn_bound, where="mid", color="0.25", ls="--", lw=1.2, zorder=3,
                label=f"bound: {report.rtol:g} + {report.atol:g} / max|ref|")
        ax.fill_between(xs, drawn_bound, [high] * len(xs), step="mid", color=_FAIL, alpha=0.07, lw=0, zorder=0)

        style = _colors(report.backends)
        zeros = nonnumbers = False
        fail_x, fail_y = [], []
        for backend in report.backends:
            rows = report.rows(backend)
            color, marker = style[backend]
            bx, by = [], []
            for r in rows:
                y = r.rel
                if not math.isfinite(y):
                    y, nonnumbers = ceiling, True
                    ax.plot([x_of[r.tap]], [y], marker="^", ms=7, color=color, zorder=5)
                elif y <= 0:
                    y, zeros = floor, True
                    ax.plot([x_of[r.tap]], [y], marker="v", ms=7, color=color, zorder=5)
                bx.append(x_of[r.tap])
                by.append(y)
                if not r.ok:
                    fail_x.append(x_of[r.tap])
                    fail_y.append(y)
            ax.plot(bx, by, color=color, marker=marker, ms=3.5, lw=1.3, zorder=4, label=backend)
        if fail_x:
            ax.scatter(fail_x, fail_y, s=70, facecolors="none", edgecolors=_FAIL, linewidths=1.4, zorder=6,
                       label="failing tap", gid="failing-taps")
        if zeros:
            ax.plot([], [], ls="none", marker="v", color="0.3", label="exactly 0 (drawn at the bottom)")
        if nonnumbers:
            ax.plot([], [], ls="none", marker="^", color="0.3", label="no number: missing, mis-shaped or nan")

        first = report.first_divergence
        keep = []
        if first is not None:
            keep.append(first.tap)
            x = x_of.get(first.tap, 0)
            row = next(r for r in report.results if r.backend == first.backend and r.tap == first.tap)
            y = _on_log_axis(row.rel, floor, ceiling)
            detail = row.note or (f"rel {row.rel:.2e}, bound {rel_bound[x]:.1e}" if math.isfinite(row.rel)
                                  else f"rel {row.rel}")
            right = x < 0.6 * n
            ax.annotate(f"first divergence: {first.backend} at {first.tap}\n{detail}", xy=(x, y),
                        xytext=(18 if right else -18, -34), textcoords="offset points",
                        ha="left" if right else "right", va="top", color=_FAIL, fontsize=8.5, zorder=7,
                        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=_FAIL, lw=0.8, alpha=0.92),
                        arrowprops=dict(arrowstyle="-|>", color=_FAIL, lw=1.0), gid="first-divergence")

        ax.set_xlim(-0.6, len(taps) - 0.4)
        ax.set_ylim(low, high)
        ax.set_ylabel("relative error  max|out - ref| / max|ref|")
        ax.set_xlabel("tap, in execution order")
        ax.grid(True, axis="y", which="major", color="0.85", lw=0.6)
        ax.set_axisbelow(True)

        # Thin the labels to what fits: rotated labels need about 1.45 font sizes of width each.
        axis_points = (width - 1.2) * 72
        gap = math.ceil(8.0 * 1.45 / (axis_points / n))
        shown = thin_labels(taps, gap, keep)
        ax.set_xticks(shown, [taps[i] for i in shown], rotation=90, fontsize=8.0)
        ax.set_xticks(xs, minor=True)
        for label in ax.get_xticklabels():
            if first is not None and label.get_text() == first.tap:
                label.set_color(_FAIL)

        ref = report.reference + (" (float64 oracle)" if report.reference == "numpy" else "")
        shape = "x".join(map(str, report.input_shape))
        failing = report.failures()
        if first is None:
            verdict = f"PASS: all {len(report.results)} comparisons within the bound"
        else:
            bad = sorted({r.backend for r in failing}, key=report.backends.index)
            verdict = (f"FAIL: {len(failing)} of {len(report.results)} comparisons out of bound "
                       f"({', '.join(bad)}); first divergence {first.backend} at {first.tap}")
        ax.set_title(f"parity of {report.spec_name}, input {shape}, against {ref}\n{verdict}", loc="left",
                     color="black" if first is None else _FAIL)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=8, frameon=False, fontsize=8)
    return fig


def plot_parity(report, path: str | os.PathLike) -> Path:
    """Draw a ParityReport: relative error of every tap per backend, against the bound.

    One line per backend follows the taps in execution order (x, labelled with tap names, thinned
    to what stays readable) on a log scale (y). The dashed step line is the bound, rtol + atol /
    max|ref| in the same units; the shaded area above it fails. Failing taps are ringed in red and
    the first divergence is annotated; exact zeros and non-numbers (a missing tap, a shape
    mismatch, nan) are drawn at the bottom and top edges with their own markers.

    Args:
        report: a ParityReport (``rm.check_parity``).
        path: the file to write; .png, .svg or .pdf.
    Returns:
        The path written.
    Example:
        >>> rm.check_parity("resnet18", backends=("torch",)).plot("parity.svg")
        PosixPath('parity.svg')
    """
    figure_format(path)
    return _save(parity_figure(report), path)


# --------------------------------------------------------------------------- training

PHASES = ("loss", "gradient", "update", "running_stats")
_PHASE_TITLES = {"loss": "loss error", "gradient": "worst gradient error", "update": "worst update error",
                 "running_stats": "worst running-stat error"}


def _worst(records) -> object | None:
    """The record with the largest relative error (nan and inf count as largest)."""
    def key(r):
        return math.inf if math.isnan(r.rel) else r.rel
    return max(records, key=key, default=None)


def training_figure(report):
    """The matplotlib Figure of ``plot_training``."""
    backends = tuple(report.backends)
    steps = int(report.steps)
    names = tuple(report.losses)  # the reference and the backends
    style = _colors(backends + tuple(n for n in names if n not in backends))
    rtol = getattr(report, "rtol", None)
    label = getattr(report, "bound_label", None)
    bound_label = label if isinstance(label, str) and label else (f"bound (rtol {rtol:g})" if rtol else "bound")
    first = getattr(report, "first_divergence", None)
    records = tuple(report.records)
    step_ticks = list(range(steps))

    with _style():
        fig = _new_figure((12.0, 6.6), layout="constrained")
        grid = fig.add_gridspec(2, len(PHASES), height_ratios=(1.0, 1.25))

        ax = fig.add_subplot(grid[0, :])
        for i, name in enumerate(names):
            values = list(report.losses[name])
            if name in backends:
                color, marker = style[name]
                ax.plot(range(len(values)), values, color=color, marker=marker, ms=6 - i, lw=1.2,
                        ls=(0, (4, 2 + i)), label=name, zorder=4)
            else:  # the reference: wide and grey, so the backends drawn on it stay visible
                ax.plot(range(len(values)), values, color="0.6", lw=5, alpha=0.6, label=f"{name} (reference)",
                        zorder=3, solid_capstyle="round")
        ax.set_title("loss per step", loc="left")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_xticks(step_ticks)
        ax.grid(True, color="0.88", lw=0.6)
        legend = dict(zip(*reversed(ax.get_legend_handles_labels())))  # label -> handle

        all_rel = _finite_positive([r.rel for r in records] + [r.bound for r in records])
        low = min(all_rel) / 20 if all_rel else 1e-16
        high = max(all_rel) * 20 if all_rel else 1.0
        floor, ceiling = low * 2, high / 2
        for col, phase in enumerate(PHASES):
            ax = fig.add_subplot(grid[1, col])
            ax.set_yscale("log")
            ax.set_title(_PHASE_TITLES[phase], loc="left")
            ax.set_xlabel("step")
            ax.set_xticks(step_ticks)
            ax.set_xlim(-0.4, max(steps - 1, 0) + 0.4)
            ax.set_ylim(low, high)
            ax.grid(True, axis="y", color="0.88", lw=0.6)
            if col == 0:
                ax.set_ylabel("relative error (worst tensor)")
            mine = [r for r in records if r.phase == phase]
            if not mine:
                ax.text(0.5, 0.5, "not compared", transform=ax.transAxes, ha="center", va="center", color="0.4")
                continue
            bounds = sorted({r.bound for r in mine if math.isfinite(r.bound)})
            if len(bounds) == 1:
                ax.axhline(bounds[0], color="0.25", ls="--", lw=1.2, label=bound_label, zorder=3)
            for backend in backends:
                color, marker = style[backend]
                xs, ys, ok = [], [], []
                for step in range(steps):
                    worst = _worst([r for r in mine if r.backend == backend and r.step == step])
                    if worst is None:
                        continue
                    y = _on_log_axis(worst.rel, floor, ceiling)
                    xs.append(step)
                    ys.append(y)
                    ok.append(all(r.ok for r in mine if r.backend == backend and r.step == step))
                    if len(bounds) > 1 and math.isfinite(worst.bound):  # per-tensor bounds: the worst one's
                        ax.plot([step], [worst.bound], marker="_", ms=14, color="0.25", zorder=3)
                if not xs:
                    continue
                ax.plot(xs, ys, color=color, marker=marker, ms=5, lw=1.3, label=backend, zorder=4)
                bad = [(x, y) for x, y, good in zip(xs, ys, ok) if not good]
                if bad:
                    ax.scatter(*zip(*bad), s=80, facecolors="none", edgecolors=_FAIL, linewidths=1.4, zorder=6,
                               label="a tensor fails at this step", gid=f"failing-{phase}-{backend}")
            if first is not None and first.phase == phase:
                y = _on_log_axis(first.rel, floor, ceiling)
                ax.annotate(f"first divergence\nstep {first.step}, {first.backend}\n{first.tensor}\n"
                            f"rel {first.rel:.2e}", xy=(first.step, y),
                            xytext=(0.5, 0.5), textcoords="axes fraction", ha="center", va="center",
                            color=_FAIL, fontsize=7.5, zorder=7,
                            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=_FAIL, lw=0.8, alpha=0.92),
                            arrowprops=dict(arrowstyle="-|>", color=_FAIL, lw=1.0), gid="first-divergence")
            legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels())
                           if label not in legend})

        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=8, frameon=False,
                   fontsize=8)
        failing = [r for r in records if not r.ok]
        if first is None and not failing:
            verdict = f"PASS: all {len(records)} comparisons within the bound"
        elif first is not None:
            verdict = (f"FAIL: {len(failing)} of {len(records)} comparisons out of bound; first divergence at "
                       f"step {first.step}, {first.phase}, {first.backend}: {first.tensor}")
        else:
            verdict = f"FAIL: {len(failing)} of {len(records)} comparisons out of bound"
        fig.suptitle(f"training check: {', '.join(backends)}, {steps} step{'s' * (steps != 1)}\n{verdict}",
                     x=0.01, ha="left", color="black" if not failing and first is None else _FAIL, fontsize=10)
    return fig


def plot_training(report, path: str | os.PathLike) -> Path:
    """Draw a TrainingReport: loss per step, and per step and backend the worst loss, gradient,
    update and running-statistic error against the bound.

    Each error panel shows, for every backend and step, the largest relative error over the
    tensors of that phase (log scale), the bound as a dashed line, failing steps ringed in red;
    the first divergence (step, phase, backend, tensor) is annotated in its phase's panel.

    Args:
        report: a TrainingReport (``rm.check_training``): ``backends``, ``steps``, ``losses``
            (name -> loss per step, the reference's included), ``records`` (``step``, ``phase``,
            ``backend``, ``tensor``, ``rel``, ``bound``, ``ok``), ``first_divergence``, ``rtol``.
        path: the file to write; .png, .svg or .pdf.
    Returns:
        The path written.
    Example:
        >>> rm.check_training("resnet18", backends=("torch", "paddle"), steps=3).plot("training.png")
        PosixPath('training.png')
    """
    figure_format(path)
    return _save(training_figure(report), path)


# --------------------------------------------------------------------------- architecture diagram


def _count(n: int) -> str:
    """A parameter count as a reader takes it in: 9,408 / 215.8 k / 25.56 M."""
    if n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} k"
    return f"{n / 1e6:.2f} M"


def _chw(shape) -> str:
    return "\u00d7".join(str(v) for v in tuple(shape)[1:])


def _under(params: dict, prefix: str) -> list[tuple[str, object]]:
    """(canonical name, ParamInfo) of the parameters named under ``prefix``, in module order."""
    return [(name, info) for name, info in params.items() if name.startswith(prefix + ".")]


def _depthwise(conv: P.Conv) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _conv_text(conv: P.Conv) -> str:
    """'k x k, out' of a conv, with its groups; 'k x k dw' for a depthwise conv."""
    k = f"{conv.kernel_size}\u00d7{conv.kernel_size}"
    if _depthwise(conv):
        return f"{k} dw"
    return f"{k}, {conv.out_channels}" + (f", {conv.groups} groups" if conv.groups > 1 else "")


def _op_text(op) -> str:
    if isinstance(op, P.Conv):
        return f"{'dw' if _depthwise(op) else 'conv'} {op.kernel_size}\u00d7{op.kernel_size}"
    if isinstance(op, P.BatchNorm):
        return "BN"
    if isinstance(op, (P.AvgPool, P.MaxPool)):
        return "pool"
    return type(op).__name__.lower()


def _read_block(block: P.Part) -> tuple[list, bool, str]:
    """(main-path convs, has squeeze-excite, shortcut) of a block, read from its graph alone.

    The merge is the node the output comes from (past a final activation). An Add is residual:
    its input with the shortest path from the block's input is the shortcut, ``identity`` when
    that is the input itself, else ``projection: <ops>``. A Concat of the input is DenseNet's
    ``concatenation``; anything else (a DenseNet transition) has no shortcut, ``none``.
    Squeeze-excite is the gate a Mul takes as its second input, back to its global pool.
    """
    made_by = {node.output: node for node in block.nodes}

    def first_path(value: str) -> list:
        ops = []
        while value != P.INPUT:
            node = made_by[value]
            ops.append(node.op)
            value = node.inputs[0]
        return ops[::-1]

    excite = []
    for node in block.nodes:
        if isinstance(node.op, P.Mul):
            value = node.inputs[1]
            while value in made_by:
                gate = made_by[value]
                excite.append(gate.op)
                if isinstance(gate.op, P.GlobalAvgPool):
                    break
                value = gate.inputs[0]
    merge = made_by.get(block.output)
    while merge is not None and isinstance(merge.op, P.Act):
        merge = made_by.get(merge.inputs[0])
    skip: list = []
    if merge is not None and isinstance(merge.op, P.Add):
        skip = min((first_path(v) for v in merge.inputs), key=len)
        shortcut = "projection: " + " + ".join(_op_text(op) for op in skip) if skip else "identity"
    elif merge is not None and isinstance(merge.op, P.Concat) and P.INPUT in merge.inputs:
        shortcut = "concatenation"
    else:
        shortcut = "none"
    aside = {id(op) for op in skip + excite}
    convs = [op for op in block.ops if isinstance(op, P.Conv) and id(op) not in aside]
    return convs, bool(excite), shortcut


def _stride(before, after) -> int:
    if len(before) < 4 or len(after) < 4 or after[2] < 1:
        return 1
    return max(1, round(before[2] / after[2]))



class _Row:
    """One box of the diagram: a title, a detail line, an output shape, a parameter count."""

    def __init__(self, kind, title, detail, shape, params, shortcut=None, stage=None, varying=False):
        self.kind, self.title, self.detail, self.shape = kind, title, detail, shape
        self.params, self.shortcut, self.stage = params, shortcut, stage
        self.varying = varying  # a collapsed run whose blocks differ in width: params are the run's total


def _diagram_rows(spec, input_shape):
    """The boxes of the diagram, from the plan, its parameter table and the summary only."""
    from .plan import make_plan
    from .summary import summary

    plan = make_plan(spec)
    table = {row.name: row for row in summary(spec, input_shape=input_shape).rows}  # checks input_shape
    shapes = plan.shapes(input_shape)
    params = plan.params
    stage_names = [stage.name for stage in plan.stages]

    def owned(name):
        return any(name.startswith(s + ".") for s in stage_names)

    names = list(params)
    inside = [i for i, n in enumerate(names) if owned(n)]
    first, last = (inside[0], inside[-1]) if inside else (len(names), len(names) - 1)
    stem_items = [(n, params[n]) for n in names[:first]]
    head_items = [(n, params[n]) for n in names[last + 1:]]

    def count(items):
        return sum(math.prod(i.shape) for _, i in items if not i.is_buffer)

    rows = [_Row("input", "input", f"{input_shape[1]} channel{'s' * (input_shape[1] != 1)}", tuple(input_shape), 0)]
    stem_shape = shapes["stem"]
    down = _stride(input_shape, stem_shape)
    convs = " \u2192 ".join(_conv_text(op) for op in plan.stem.ops if isinstance(op, P.Conv))
    rows.append(_Row("stem", "stem", f"conv {convs}" + (f"  (total stride {down})" if down > 1 else ""),
                     stem_shape, table["stem"].params if "stem" in table else count(stem_items)))
    previous = stem_shape
    for stage in plan.stages:
        groups: list[list] = []
        for block in stage.blocks:
            out = shapes[block.name]
            stride = _stride(previous, out)
            convs, excite, kind = _read_block(block)
            detail = "conv " + " \u2192 ".join(_conv_text(op) for op in convs) + (" + SE" if excite else "")
            signature = (detail, kind, block.in_channels, block.out_channels, tuple(out), stride,
                         count(_under(params, block.name)))
            # the same layers at other widths (DenseNet's layers each see more channels)
            shape_key = (kind, stride, tuple(out[2:]),
                         tuple((op.kernel_size, op.kernel_size) for op in convs))
            if groups and groups[-1][0] == signature:
                groups[-1][1].append(block.name)
            elif groups and groups[-1][2] == shape_key:
                groups[-1][1].append(block.name)
                groups[-1][3] = True  # widths vary: sum the parameters below
                groups[-1][4] += signature[-1]
            else:
                groups.append([signature, [block.name], shape_key, False, signature[-1]])
            previous = out
        for signature, members, _, varying, total in groups:
            detail, kind, _, _, out, stride, n = signature
            title = members[0] if len(members) == 1 else f"{members[0]} \u2026 {members[-1]}  \u00d7{len(members)}"
            if len(title) > 40 and all(m.startswith(stage.name + ".") for m in members):  # long module paths
                short = [m[len(stage.name) + 1:] for m in members]
                title = short[0] if len(short) == 1 else f"{short[0]} \u2026 {short[-1]}  \u00d7{len(short)}"
            if varying:
                detail += " \u2026 (widths grow)"
            if stride > 1:
                kind += f", stride {stride}"
            rows.append(_Row("block", title, detail, out, total if varying else n, shortcut=kind, stage=stage.name,
                             varying=varying))
    if head_items or "pre_logits" in shapes:
        fc = [i for n, i in head_items if n.endswith(".weight") and len(i.shape) == 2]
        parts = []
        if "pre_logits" in shapes:
            parts.append(f"global average pool \u2192 {shapes['pre_logits'][1]}")
        parts += [f"fc {i.shape[1]} \u2192 {i.shape[0]}" for i in fc]
        head_shape = shapes.get("logits", shapes.get("pre_logits"))
        rows.append(_Row("head", "head", " \u2192 ".join(parts) if parts else "", head_shape,
                         table["head"].params if "head" in table else count(head_items)))
    return plan, rows, table


def diagram_figure(spec, input_shape=None):
    """The matplotlib Figure of ``diagram``."""
    require_matplotlib()
    from matplotlib.patches import FancyBboxPatch

    from .zoo import resolve_spec

    spec = resolve_spec(spec)
    if input_shape is None:
        input_shape = (1, spec.in_channels, 224, 224)
    input_shape = tuple(int(v) for v in input_shape)
    plan, rows, table = _diagram_rows(spec, input_shape)
    stage_names = [stage.name for stage in plan.stages]
    if plan.out_indices is not None:
        outputs = {stage_names[i]: f"feature output {k} (out_indices[{k}] = {i})"
                   for k, i in enumerate(plan.out_indices)}
    elif "logits" in plan.tap_names:
        outputs = {}
    else:
        outputs = {stage_names[-1]: "output"}

    box_h, stage_head, gap, stage_gap = 0.56, 0.34, 0.16, 0.2
    # the boxes; the shortcut arcs sit left of them, the outputs right. A box is as wide as its
    # longest detail line (8 pt text: about 0.062 inch a character), 6 to 7 inches.
    longest = max(len(row.detail) + (len(row.shortcut) + 16 if row.kind == "block" else 0) for row in rows)
    left, right = 1.0, min(8.0, max(7.0, 1.3 + 0.062 * longest))
    width = right + (3.8 if plan.out_indices is not None else 3.0)  # room for the feature-output labels
    # vertical layout first, to size the figure
    y = 0.95
    layout = []
    current = None
    for row in rows:
        if row.stage != current and row.stage is not None:
            y += stage_gap + stage_head
        elif row.stage is None and current is not None:
            y += stage_gap
        current = row.stage
        layout.append((row, y))
        y += box_h + gap
    height = y + 0.3

    total = sum(math.prod(i.shape) for i in plan.params.values() if not i.is_buffer)
    macs = sum(r.macs for r in table.values())
    with _style():
        fig = _new_figure((width, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")
        ax.text(0.25, 0.3, f"{spec.name}", fontsize=12, weight="bold", va="center")
        ax.text(0.25, 0.62, f"input {'x'.join(map(str, input_shape))} (N\u00d7C\u00d7H\u00d7W); {_count(total)} "
                            f"parameters, {macs / 1e9:.2f} G multiply-accumulates; shapes below are C\u00d7H\u00d7W",
                fontsize=8.5, color="0.3", va="center")

        fills = {"input": "#f2f2f2", "stem": "#dbe9f6", "block": "#ffffff", "head": "#e3f1df"}
        # stage frames
        by_stage: dict[str, list[float]] = {}
        for row, top in layout:
            if row.stage is not None:
                by_stage.setdefault(row.stage, []).append(top)
        for name, tops in by_stage.items():
            top, bottom = min(tops) - stage_head, max(tops) + box_h
            ax.add_patch(FancyBboxPatch((0.3, top - 0.04), right + 0.25 - 0.3, bottom - top + 0.1,
                                        boxstyle="round,pad=0,rounding_size=0.08", fc="#f7f4ec", ec="#b8a77a",
                                        lw=1.0, zorder=0))
            summary_row = table.get(name)
            y_text = top + stage_head / 2 - 0.02
            ax.text(0.45, y_text, name, fontsize=9.5, weight="bold", color="#6b5a2a", va="center")
            if summary_row is not None:
                ax.text(right + 0.1, y_text, f"out {_chw(summary_row.output_shape)}   {_count(summary_row.params)} "
                        f"params   {summary_row.macs / 1e9:.2f} G MACs", fontsize=8.5, color="#6b5a2a",
                        va="center", ha="right")
            if name in outputs:
                y_mid = (top + bottom) / 2
                shape = summary_row.output_shape if summary_row is not None else None
                ax.annotate("", xy=(right + 0.85, y_mid), xytext=(right + 0.25, y_mid),
                            arrowprops=dict(arrowstyle="-|>", color="#2f6f3e", lw=1.6))
                ax.text(right + 0.92, y_mid, f"{outputs[name]}\n{_chw(shape) if shape else ''}", fontsize=8.5,
                        color="#2f6f3e", va="center", ha="left", gid="feature-output")

        previous_bottom = None
        x_flow = left + 1.6  # between a stage's name (left) and its figures (right)
        for row, top in layout:
            ax.add_patch(FancyBboxPatch((left, top), right - left, box_h, boxstyle="round,pad=0,rounding_size=0.06",
                                        fc=fills[row.kind], ec="0.45", lw=0.9, zorder=2))
            if previous_bottom is not None:
                ax.annotate("", xy=(x_flow, top), xytext=(x_flow, previous_bottom),
                            arrowprops=dict(arrowstyle="-|>", color="0.45", lw=0.9, shrinkA=0, shrinkB=0), zorder=1)
            previous_bottom = top + box_h
            shape = _chw(row.shape) if row.kind != "head" or len(row.shape) > 2 else str(row.shape[-1])
            ax.text(left + 0.12, top + 0.17, row.title, fontsize=9, weight="bold", va="center", zorder=3)
            each = " in all" if row.varying else " each" if "\u00d7" in row.title else ""
            ax.text(right - 0.12, top + 0.17, shape + (f"   {_count(row.params)} params{each}" if row.params else ""),
                    fontsize=8.5, ha="right", va="center", zorder=3)
            skip = f"shortcut {row.shortcut}".replace("shortcut none", "no shortcut")
            detail = row.detail if row.kind != "block" else f"{row.detail}   \u2502   {skip}"
            ax.text(left + 0.12, top + 0.4, detail, fontsize=8, color="0.25", va="center", zorder=3,
                    gid="shortcut" if row.kind == "block" else None)
            if row.kind == "block" and not row.shortcut.startswith("none"):  # the skip connection
                projection = row.shortcut.startswith("projection")
                color = "#c0392b" if projection else "0.55"
                x_arc = left - 0.28
                ax.plot([left, x_arc, x_arc, left], [top + 0.08, top + 0.08, top + box_h - 0.08, top + box_h - 0.08],
                        color=color, lw=1.4 if projection else 1.0, zorder=1)
                ax.annotate("", xy=(left, top + box_h - 0.08), xytext=(left - 0.12, top + box_h - 0.08),
                            arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0, shrinkA=0, shrinkB=0))
                if projection:
                    ax.add_patch(FancyBboxPatch((x_arc - 0.05, top + box_h / 2 - 0.05), 0.1, 0.1,
                                                boxstyle="square,pad=0", fc=color, ec=color, zorder=2))
            if row.kind == "head" and not outputs:
                y_mid = top + box_h / 2
                ax.annotate("", xy=(right + 0.85, y_mid), xytext=(right, y_mid),
                            arrowprops=dict(arrowstyle="-|>", color="#2f6f3e", lw=1.6))
                ax.text(right + 0.92, y_mid, f"logits\n{shape}", fontsize=8.5, color="#2f6f3e", va="center")
        legend_y = height - 0.18
        ax.plot([0.3, 0.6], [legend_y, legend_y], color="0.55", lw=1.0)
        dense = any(row.shortcut == "concatenation" for row in rows)
        ax.text(0.68, legend_y, "identity or concatenation" if dense else "identity shortcut", fontsize=7.5,
                va="center", color="0.3")
        ax.plot([2.6, 2.9], [legend_y, legend_y], color="#c0392b", lw=1.4)
        ax.add_patch(FancyBboxPatch((2.7, legend_y - 0.05), 0.1, 0.1, boxstyle="square,pad=0", fc="#c0392b",
                                    ec="#c0392b"))
        ax.text(2.98, legend_y, "projection shortcut (convolutions on the skip path)", fontsize=7.5,
                va="center", color="0.3")
    return fig


def diagram(spec, path: str | os.PathLike, *, input_shape=None) -> Path:
    """Draw the architecture of a spec: stem, stages and blocks with their output shapes and
    parameter counts, shortcut kinds, head and feature-pyramid outputs.

    Drawn from the plan alone (no framework imported). Consecutive blocks of a stage that are
    the same (same convolutions, shortcut, shapes and parameter count) are drawn as one box
    "layer3.1 ... layer3.35 x35", so resnet18 and resnet152 both fit on a page.

    Args:
        spec: a ResNetSpec, preset name or spec file.
        path: the file to write; .png, .svg or .pdf.
        input_shape: NCHW used for the shapes; default (1, in_channels, 224, 224).
    Returns:
        The path written.
    Example:
        >>> rm.diagram("resnet50", "resnet50.svg", input_shape=(1, 3, 224, 224))
        PosixPath('resnet50.svg')
    """
    figure_format(path)
    return _save(diagram_figure(spec, input_shape), path)
