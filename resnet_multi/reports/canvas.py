"""What every picture shares: the optional matplotlib, an Agg canvas, one style, atomic files, and
one colour per backend.

matplotlib is an optional extra (``pip install 'resnet_multi[plot]'``). It is imported inside the
functions that draw, never when ``resnet_multi`` is imported, and always through the Agg canvas:
figures are made with ``matplotlib.figure.Figure`` (not pyplot), so drawing never opens a window,
never needs a display and never changes matplotlib's global backend.

Files are PNG, SVG or PDF, chosen by the suffix of the path, and written through a temporary file
that is renamed when complete. SVGs keep their text as text (``svg.fonttype = none``): a reader
can search it, and tests read the annotations back from the file.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
from pathlib import Path

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""Suffix -> matplotlib format of the files the plotting functions write."""

PLOT = "plot"
"""The extra that installs matplotlib: ``pip install 'resnet_multi[plot]'``."""
PLOT_EXTRA = f"resnet_multi[{PLOT}]"

# The tab10 palette without its red: red means "fails" in every picture.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
MARKERS = ("o", "s", "D", "^", "v", "P", "*", "h")
FAIL = "#d62728"
"""The colour of failures (and only of failures) in every picture."""

ORACLE_COLOR = len(COLORS) - 1
"""The numpy oracle's index in COLORS and MARKERS (grey): the backends take the others in registry order."""

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


def require_extra(module: str, *, extra: str, purpose: str):
    """Import the optional ``module`` or raise an ImportError that names the extra installing it:
    ``{purpose} needs {module}, which is not installed: pip install 'resnet_multi[{extra}]' (or pip
    install {module})``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs {module}, which is not installed: "
                          f"pip install 'resnet_multi[{extra}]' (or pip install {module})") from exc


def require_matplotlib():
    """Import matplotlib (the ``plot`` extra) or raise an ImportError that says how to get it."""
    return require_extra("matplotlib", extra=PLOT, purpose="drawing plots and diagrams")


def figure_format(path: str | os.PathLike) -> str:
    """The file format ("png", "svg" or "pdf") named by ``path``'s suffix; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{os.fspath(path)!r}: cannot tell the picture format from the suffix "
                         f"{suffix or '(none)'!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def new_figure(figsize, **kwargs):
    """A Figure on an Agg canvas (no pyplot: no window, no display, no global state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


@contextlib.contextmanager
def style():
    """matplotlib's settings for every picture (text as text, fixed SVG ids, font sizes)."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def save(fig, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names, atomically; returns the path."""
    from ..io_util import atomic_path

    fmt = figure_format(path)
    with style(), atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_METADATA[fmt], facecolor="white")
    return Path(path)


def svg_text(fig) -> str:
    """The figure as an SVG document (text kept as text), for embedding in HTML."""
    buffer = io.StringIO()
    with style():
        fig.savefig(buffer, format="svg", metadata=_METADATA["svg"], facecolor="white")
    return buffer.getvalue()


def finite_positive(values) -> list[float]:
    """The values that can be drawn on a log axis."""
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]


def on_log_axis(value: float, floor: float, ceiling: float) -> float:
    """Where an error is drawn on a log axis: non-numbers (inf, nan) at the top edge, exact
    zeros at the bottom edge (each with its own marker where it matters)."""
    if not math.isfinite(value):
        return ceiling
    return floor if value <= 0 else value


def backend_styles(names) -> dict[str, tuple[str, str]]:
    """(colour, marker) per name, the same in every picture: the registered backends take the
    colours in registry order, the numpy oracle grey; other labels take the rest in order."""
    from ..registry import backend_names

    fixed = {"numpy": ORACLE_COLOR}
    free = [i for i in range(len(COLORS)) if i != ORACLE_COLOR]
    for name, i in zip(backend_names(), free):
        fixed.setdefault(name, i)
    free = [i for i in range(len(COLORS)) if i not in fixed.values()] or free  # more backends than colours
    styles, k = {}, 0
    for name in names:
        if name in fixed:
            i = fixed[name]
        else:
            i, k = free[k % len(free)], k + 1
        styles[name] = (COLORS[i], MARKERS[i])
    return styles
