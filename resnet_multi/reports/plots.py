"""Pictures of reports: parity error against depth, and training errors per step.

- ``plot_parity(report, path)``: one line per backend, relative error of every tap in execution
  order on a log scale, the bound drawn in, failing taps ringed, the first divergence annotated.
- ``plot_training(report, path)``: loss per step; worst loss, gradient, update and running-stat
  error per step and backend, against the bound.

Needs matplotlib (``pip install 'resnet_multi[plot]'``); see ``resnet_multi.reports.canvas`` for
how figures are made and written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from . import canvas
from .base import NUMPY
from .base import worst as worst_record

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
    with canvas.style():
        fig = canvas.new_figure((width, 5.2), layout="constrained")
        ax = fig.add_subplot()
        ax.set_yscale("log")

        # The bound, in the units plotted: bound / max|ref| = rtol + atol / max|ref| (one reference,
        # so one value per tap whichever backend's row it is read from).
        max_ref: dict[str, float] = {}
        for r in report.results:
            max_ref.setdefault(r.tap, r.max_ref)
        rel_bound = [report.rtol + report.atol / max_ref[t] if max_ref.get(t, 0) > 0 else math.nan for t in taps]

        finite = canvas.finite_positive([r.rel for r in report.results] + rel_bound)
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
        ax.fill_between(xs, drawn_bound, [high] * len(xs), step="mid", color=canvas.FAIL, alpha=0.07, lw=0, zorder=0)

        styles = canvas.backend_styles(report.backends)
        zeros = nonnumbers = False
        fail_x, fail_y = [], []
        for backend in report.backends:
            rows = report.rows(backend)
            color, marker = styles[backend]
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
            ax.scatter(fail_x, fail_y, s=70, facecolors="none", edgecolors=canvas.FAIL, linewidths=1.4, zorder=6,
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
            y = canvas.on_log_axis(row.rel, floor, ceiling)
            detail = row.note or (f"rel {row.rel:.2e}, bound {rel_bound[x]:.1e}" if math.isfinite(row.rel)
                                  else f"rel {row.rel}")
            right = x < 0.6 * n
            ax.annotate(f"first divergence: {first.backend} at {first.tap}\n{detail}", xy=(x, y),
                        xytext=(18 if right else -18, -34), textcoords="offset points",
                        ha="left" if right else "right", va="top", color=canvas.FAIL, fontsize=8.5, zorder=7,
                        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=canvas.FAIL, lw=0.8, alpha=0.92),
                        arrowprops=dict(arrowstyle="-|>", color=canvas.FAIL, lw=1.0), gid="first-divergence")

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
                label.set_color(canvas.FAIL)

        ref = report.reference + (" (float64 oracle)" if report.reference == NUMPY else "")
        shape = "x".join(map(str, report.input_shape))
        failing = report.failures()
        if first is None:
            verdict = f"PASS: all {len(report.results)} comparisons within the bound"
        else:
            bad = sorted({r.backend for r in failing}, key=report.backends.index)
            verdict = (f"FAIL: {len(failing)} of {len(report.results)} comparisons out of bound "
                       f"({', '.join(bad)}); first divergence {first.backend} at {first.tap}")
        ax.set_title(f"parity of {report.spec_name}, input {shape}, against {ref}\n{verdict}", loc="left",
                     color="black" if first is None else canvas.FAIL)
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
    canvas.figure_format(path)
    return canvas.save(parity_figure(report), path)


# --------------------------------------------------------------------------- training

PHASES = ("loss", "gradient", "update", "running_stats")
"""The phases of a training plot's error panels, left to right (the loss first)."""
_PHASE_TITLES = {"loss": "loss error", "gradient": "worst gradient error", "update": "worst update error",
                 "running_stats": "worst running-stat error"}


def training_figure(report):
    """The matplotlib Figure of ``plot_training``."""
    backends = tuple(report.backends)
    steps = int(report.steps)
    names = tuple(report.losses)  # the reference and the backends
    styles = canvas.backend_styles(backends + tuple(n for n in names if n not in backends))
    rtol = getattr(report, "rtol", None)
    label = getattr(report, "bound_label", None)
    bound_label = label if isinstance(label, str) and label else (f"bound (rtol {rtol:g})" if rtol else "bound")
    first = getattr(report, "first_divergence", None)
    records = tuple(report.records)
    step_ticks = list(range(steps))

    with canvas.style():
        fig = canvas.new_figure((12.0, 6.6), layout="constrained")
        grid = fig.add_gridspec(2, len(PHASES), height_ratios=(1.0, 1.25))

        ax = fig.add_subplot(grid[0, :])
        for i, name in enumerate(names):
            values = list(report.losses[name])
            if name in backends:
                color, marker = styles[name]
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

        all_rel = canvas.finite_positive([r.rel for r in records] + [r.bound for r in records])
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
                color, marker = styles[backend]
                xs, ys, ok = [], [], []
                for step in range(steps):
                    worst = worst_record([r for r in mine if r.backend == backend and r.step == step])
                    if worst is None:
                        continue
                    y = canvas.on_log_axis(worst.rel, floor, ceiling)
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
                    ax.scatter(*zip(*bad), s=80, facecolors="none", edgecolors=canvas.FAIL, linewidths=1.4, zorder=6,
                               label="a tensor fails at this step", gid=f"failing-{phase}-{backend}")
            if first is not None and first.phase == phase:
                y = canvas.on_log_axis(first.rel, floor, ceiling)
                ax.annotate(f"first divergence\nstep {first.step}, {first.backend}\n{first.tensor}\n"
                            f"rel {first.rel:.2e}", xy=(first.step, y),
                            xytext=(0.5, 0.5), textcoords="axes fraction", ha="center", va="center",
                            color=canvas.FAIL, fontsize=7.5, zorder=7,
                            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=canvas.FAIL, lw=0.8, alpha=0.92),
                            arrowprops=dict(arrowstyle="-|>", color=canvas.FAIL, lw=1.0), gid="first-divergence")
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
                     x=0.01, ha="left", color="black" if not failing and first is None else canvas.FAIL, fontsize=10)
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
    canvas.figure_format(path)
    return canvas.save(training_figure(report), path)
