"""The forward parity report: per (backend, tap) errors against one reference (``rm.check_parity``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from .base import NUMPY, Record, Report, json_number

"""The name of the float64 numpy oracle, as a reference or as one more row in the report."""


@dataclass(frozen=True)
class TapResult(Record):
    """One backend's error on one tap. ``max_abs`` = max|out - ref|; ``max_ref`` = max|ref|;
    ``rel`` = max_abs / max_ref; ``bound`` = atol + rtol * max_ref; ``ok`` = max_abs <= bound.
    ``note`` explains a failure that is not a number (a missing tap, a shape mismatch)."""

    backend: str
    tap: str
    shape: tuple[int, ...]
    max_abs: float
    max_ref: float
    rel: float
    bound: float
    ok: bool
    note: str = ""


class Divergence(NamedTuple):
    """Where outputs first disagree: ``(backend, tap, max_abs, rel)``."""

    backend: str
    tap: str
    max_abs: float
    rel: float


@dataclass(frozen=True)
class ParityReport(Report):
    """Per-(backend, tap) errors of a parity check against one reference.

    Attributes:
        spec_name, input_shape, reference (a backend name or "numpy"), backends (compared,
        in order), taps (every tap, in execution order), rtol, atol, results (TapResult per
        backend and tap, backend-major, taps in execution order), dtype (of the models compared).

    ``ok``, ``rows(backend)``, ``failures(backend)``, ``divergences`` (each failing backend's
    first failing tap) and ``first_divergence`` are those of every report
    (``resnet_multi.reports.base.Report``).

    ``first_divergence`` is None when all pass; otherwise the earliest failing tap in execution
    order over all backends (ties: the backend listed first), as ``(backend, tap, max_abs, rel)``.
    A bug's first tap is where to look: later taps inherit its error. Comparing by execution
    order (not by backend order) means that when one backend is wrong at ``layer2.0`` and another
    only at ``logits``, the report points at ``layer2.0``.
    """

    spec_name: str
    input_shape: tuple[int, ...]
    reference: str
    backends: tuple[str, ...]
    taps: tuple[str, ...]
    rtol: float
    atol: float
    results: tuple[TapResult, ...]
    dtype: str = "float32"

    def records_of_report(self) -> tuple[TapResult, ...]:
        return self.results

    def execution_order(self):
        order = {tap: i for i, tap in enumerate(self.taps)}
        return lambda r: order.get(r.tap, len(order))

    def divergence_of(self, record: TapResult) -> Divergence:
        return Divergence(record.backend, record.tap, record.max_abs, record.rel)

    def summary_of(self, backend: str, json_ready: bool = False) -> dict:
        """Taps compared and passed, and the worst relative error (nan counts as worst) of one backend."""
        rows = self.rows(backend)
        worst = self.worst(backend)
        worst_rel = None if worst is None else worst.rel
        if json_ready and worst_rel is not None:
            worst_rel = json_number(worst_rel)
        return {"taps": len(rows), "passed": sum(r.ok for r in rows), "worst_rel": worst_rel,
                "worst_tap": None if worst is None else worst.tap}

    def to_dict(self) -> dict:
        """A JSON-ready dict (inf/nan errors become null)."""
        first = self.first_divergence
        return {
            "spec": self.spec_name,
            "input_shape": list(self.input_shape),
            "reference": self.reference,
            "backends": list(self.backends),
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
            "ok": self.ok,
            "first_divergence": None if first is None else {
                "backend": first.backend, "tap": first.tap,
                "max_abs": json_number(first.max_abs), "rel": json_number(first.rel)},
            "summary": {b: self.summary_of(b, json_ready=True) for b in self.backends},
            "results": self.records_to_json(),
        }

    def format(self, *, all_taps: bool = False, max_failures: int = 5) -> str:
        """The report as a table: a summary line per backend, then the failing taps.

        Args:
            all_taps: list every tap of every backend (resnet152 has 57 taps per backend).
            max_failures: failing taps listed per backend when ``all_taps`` is False (the
                first ones matter: later taps inherit the error).
        """
        bw = max([len("backend"), *map(len, self.backends)])
        tw = max([len("tap"), len("at tap"), *map(len, self.taps)])
        lines = [f"parity of {self.spec_name}: input {tuple(self.input_shape)}, reference {self.reference}"
                 f"{' (float64)' if self.reference == NUMPY else ''}, {self.dtype} models; "
                 f"a tap passes when max|a-b| <= {self.atol:g} + {self.rtol:g} * max|ref|"
                 f"{' (the ' + self.dtype + ' bound)' if self.dtype != 'float32' else ''}",
                 "",
                 f"{'backend':<{bw}}  {'passed':>7}  {'worst rel':>9}  {'at tap':<{tw}}  result"]
        divergences = self.divergences
        for b in self.backends:
            s = self.summary_of(b)
            worst = "-" if s["worst_rel"] is None else f"{s['worst_rel']:.2e}"
            first = divergences.get(b)
            result = "ok" if first is None else f"FAIL from {first.tap}"
            passed = f"{s['passed']}/{s['taps']}"
            lines.append(f"{b:<{bw}}  {passed:>7}  {worst:>9}  {s['worst_tap'] or '-':<{tw}}  {result}")

        if all_taps:
            shown, title = list(self.results), "all taps"
        else:
            title = "failing taps (later taps inherit the first one's error)"
            shown = self.failing_shown(max_failures, lambda b, n: f"{b:<{bw}}  ... and {n} more failing taps")
        if shown:
            lines += ["", f"{title}:",
                      f"{'backend':<{bw}}  {'tap':<{tw}}  {'shape':<16}  {'max abs':>9}  {'max|ref|':>9}  "
                      f"{'rel':>9}  result"]
            for r in shown:
                if isinstance(r, str):
                    lines.append(r)
                    continue
                verdict = "ok" if r.ok else "FAIL" + (f" ({r.note})" if r.note else "")
                shape = "x".join(map(str, r.shape))
                lines.append(f"{r.backend:<{bw}}  {r.tap:<{tw}}  {shape:<16}  {r.max_abs:>9.2e}  {r.max_ref:>9.2e}  "
                             f"{r.rel:>9.2e}  {verdict}")
        first = self.first_divergence
        lines.append("")
        if first is None:
            lines.append(f"all {len(self.results)} comparisons pass")
        else:
            lines.append(f"first divergence: {first.backend} at {first.tap} "
                         f"(max abs {first.max_abs:.3g}, relative {first.rel:.3g})")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike):
        """Draw the report to ``path`` (.png, .svg or .pdf): the relative error of every tap per
        backend on a log scale against the bound, failing taps marked, the first divergence
        annotated. Needs matplotlib (``pip install 'resnet_multi[plot]'``).

        Args:
            path: the file to write; its suffix chooses the format.
        Returns:
            The path written (a ``pathlib.Path``).
        Example:
            >>> rm.check_parity("resnet18", backends=("torch", "paddle")).plot("parity.svg")
            PosixPath('parity.svg')
        """
        from .plots import plot_parity

        return plot_parity(self, path)
