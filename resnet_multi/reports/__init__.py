"""Reports of the checks, and the pictures of reports and specs.

- ``base``: what every report shares (records, verdict, first divergence, JSON, text);
- ``parity``: ``ParityReport`` (``rm.check_parity``), ``TapResult``, ``Divergence``;
- ``training``: ``TrainingReport`` (``rm.check_training``), ``TrainingRecord``, ``TrainingDivergence``;
- ``tolerances``: the default bounds of both checks;
- ``canvas``: figure plumbing (matplotlib, the optional ``plot`` extra, is imported only to draw);
- ``plots``: the pictures of reports; ``diagram``: the architecture diagram of a spec;
- ``html``: a report as one self-contained HTML file.

The checks themselves (running models) are ``resnet_multi.parity`` and ``resnet_multi.training``.
Importing this package imports neither matplotlib nor any framework.
"""

from .base import Record, Report
from .parity import NUMPY, Divergence, ParityReport, TapResult
from .tolerances import BOUNDS, FLOOR, TRAINING_RTOL
from .training import LOSS, PHASES, TrainingDivergence, TrainingRecord, TrainingReport

__all__ = [
    "BOUNDS", "Divergence", "FLOOR", "LOSS", "NUMPY", "PHASES", "ParityReport", "Record", "Report", "TRAINING_RTOL",
    "TapResult", "TrainingDivergence", "TrainingRecord", "TrainingReport",
]
