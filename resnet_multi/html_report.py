"""A parity or training report as one self-contained HTML file, at its old import path: the code is
``resnet_multi.reports.html``."""

from __future__ import annotations

from .reports.html import DISTRIBUTIONS, cpu_model, environment, parity_html, training_html, write_html

__all__ = ["DISTRIBUTIONS", "cpu_model", "environment", "parity_html", "training_html", "write_html"]
