"""Pictures of reports and specs, at their old import path: the report plots are
``resnet_multi.reports.plots``, the architecture diagram ``resnet_multi.reports.diagram``, the
figure plumbing (matplotlib, formats, colours) ``resnet_multi.reports.canvas``.

matplotlib is an optional extra (``pip install 'resnet_multi[plot]'``), imported only to draw.
"""

from __future__ import annotations

from .reports.canvas import FORMATS, PLOT_EXTRA, figure_format, require_matplotlib, svg_text
from .reports.diagram import diagram, diagram_figure
from .reports.plots import PHASES, parity_figure, plot_parity, plot_training, thin_labels, training_figure

__all__ = [
    "FORMATS", "PHASES", "PLOT_EXTRA", "diagram", "diagram_figure", "figure_format", "parity_figure", "plot_parity",
    "plot_training", "require_matplotlib", "svg_text", "thin_labels", "training_figure",
]
