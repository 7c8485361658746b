"""The training parity report: per step, phase and tensor, errors against a reference run
(``rm.check_training``)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from .base import Record, Report, json_number
from .tolerances import FLOOR

PHASES = ("running_stats", "loss", "gradient", "update")
"""The phases of one step in execution order: the forward pass updates BatchNorm's running
statistics and gives the loss, the backward pass the gradients, the optimizer the update."""

LOSS = "loss"
"""The tensor name of the loss in a record."""


@dataclass(frozen=True)
class TrainingRecord(Record):
    """One backend's error on one tensor at one step and phase.

    ``max_abs`` = max|out - ref| and ``max_ref`` = max|ref| (float64 report); in a float32 report
    ``max_abs`` = ||out - ref||_2 and ``max_ref`` = ||ref||_2 (norm-relative). ``rel`` = max_abs /
    scale, scale = max(max_ref, FLOOR x the phase's largest max_ref); ``bound`` is the relative
    bound ``rel`` is held to; ``ok`` = rel <= bound. ``note`` explains a failure that is not a
    number (a missing gradient, a shape mismatch).
    """

    step: int
    phase: str
    backend: str
    tensor: str
    shape: tuple[int, ...]
    max_abs: float
    max_ref: float
    rel: float
    bound: float
    ok: bool
    note: str = ""


class TrainingDivergence(NamedTuple):
    """Where training first disagrees: ``(step, phase, backend, tensor, rel)``."""

    step: int
    phase: str
    backend: str
    tensor: str
    rel: float


@dataclass(frozen=True)
class TrainingReport(Report):
    """Per-step, per-tensor errors of training runs against a reference run.

    Attributes:
        spec_name, input_shape, dtype ("float64" or "float32"), optimizer (the SGD/AdamW
        description), reference (the backend compared against), backends (the compared ones,
        in order), steps, rtol (the relative bound per tensor; inf for a float32 report: noise
        only), losses (backend -> loss per step, the reference's included), records (every
        TrainingRecord, in execution order: step, phase, backend, tensor).

    ``ok``, ``rows(backend)``, ``failures(backend)``, ``divergences`` (each failing backend's
    first failing record) and ``first_divergence`` are those of every report
    (``resnet_multi.reports.base.Report``). ``first_divergence`` is None when all pass; otherwise
    the earliest failing (step, phase, tensor) in execution order over all backends (ties: the
    backend listed first). Later steps, phases and tensors inherit the first error, so that is
    where to look.
    """

    spec_name: str
    input_shape: tuple[int, ...]
    dtype: str
    optimizer: Any  # the training.SGD / training.AdamW description the run used
    reference: str
    backends: tuple[str, ...]
    steps: int
    rtol: float
    losses: dict[str, tuple[float, ...]]
    records: tuple[TrainingRecord, ...]

    def records_of_report(self) -> tuple[TrainingRecord, ...]:
        return self.records

    def execution_order(self):
        order: dict[tuple[int, str, str], int] = {}
        for r in self.records:
            order.setdefault((r.step, r.phase, r.tensor), len(order))
        return lambda r: order[(r.step, r.phase, r.tensor)]

    def divergence_of(self, record: TrainingRecord) -> TrainingDivergence:
        return TrainingDivergence(record.step, record.phase, record.backend, record.tensor, record.rel)

    @property
    def noise_only(self) -> bool:
        """A float32 report: the errors are measured noise, not a pass/fail proof (see ``format``)."""
        return self.dtype != "float64"

    @property
    def reference_suspect(self) -> bool:
        """True when there are two or more compared backends and all diverge first at the same
        (step, phase, tensor): then the reference is the likelier culprit."""
        divergences = self.divergences
        firsts = {(d.step, d.phase, d.tensor) for d in divergences.values()}
        return len(self.backends) > 1 and len(divergences) == len(self.backends) and len(firsts) == 1

    @property
    def metric(self) -> str:
        """What ``rel`` measures: "max_abs_relative" (float64) or "norm_relative" (float32)."""
        return "max_abs_relative" if self.dtype == "float64" else "norm_relative"

    def summary_of(self, backend: str, json_ready: bool = False) -> dict:
        """Records compared and passed, and the worst relative error (nan counts as worst) of one backend."""
        rows = self.rows(backend)
        worst = self.worst(backend)
        worst_rel = None if worst is None else worst.rel
        if json_ready and worst_rel is not None:
            worst_rel = json_number(worst_rel)
        return {"compared": len(rows), "passed": sum(r.ok for r in rows), "worst_rel": worst_rel,
                "worst": None if worst is None else f"step {worst.step} {worst.phase} {worst.tensor}"}

    def to_dict(self) -> dict:
        """A JSON-ready dict (inf/nan become null)."""
        first = self.first_divergence
        return {
            "spec": self.spec_name,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "optimizer": {"name": self.optimizer.name, **{k: (list(v) if isinstance(v, tuple) else v)
                                                          for k, v in asdict(self.optimizer).items() if k != "name"}},
            "reference": self.reference,
            "backends": list(self.backends),
            "steps": self.steps,
            "rtol": json_number(self.rtol),
            "metric": self.metric,
            "ok": self.ok,
            "noise_only": self.noise_only,
            "reference_suspect": self.reference_suspect,
            "first_divergence": None if first is None else {
                "step": first.step, "phase": first.phase, "backend": first.backend, "tensor": first.tensor,
                "rel": json_number(first.rel)},
            "losses": {name: [json_number(v) for v in values] for name, values in self.losses.items()},
            "summary": {b: self.summary_of(b, json_ready=True) for b in self.backends},
            "records": self.records_to_json(),
        }

    def format(self, *, max_failures: int = 5) -> str:
        """The report as text: settings, losses per step, a line per backend, the failing tensors."""
        opt = ", ".join(f"{k}={v}" for k, v in asdict(self.optimizer).items() if k != "name")
        lines = [f"training parity of {self.spec_name}: input {tuple(self.input_shape)}, {self.dtype}, "
                 f"{self.steps} step(s) of {self.optimizer.name}({opt}), cross-entropy, reference {self.reference}"]
        if self.noise_only:
            lines.append("float32: errors are norm-relative (||a-b|| / ||ref||) and are measured NOISE, not a "
                         "verdict: train-mode float32 gradients of two correct implementations differ by up to "
                         "~0.1 (a pre-ReLU value within rounding of zero flips sign; BatchNorm over few values "
                         "amplifies it). Prove a training with dtype='float64'."
                         + ("" if math.isinf(self.rtol) else f" Bound asked for: {self.rtol:g}."))
        else:
            lines.append(f"a tensor passes when max|a-b| <= {self.rtol:g} x max(max|ref|, {FLOOR:g} x the largest "
                         f"max|ref| of its step and phase)")
        nw = max(len("backend"), *map(len, self.losses))
        lines += ["", f"{'loss':<{nw}}  " + "  ".join(f"{'step ' + str(s):>22}" for s in range(self.steps))]
        for name, values in self.losses.items():
            lines.append(f"{name:<{nw}}  " + "  ".join(f"{v:>22.16g}" for v in values))
        lines += ["", f"{'backend':<{nw}}  {'passed':>9}  {'worst rel':>9}  worst at / result"]
        divergences = self.divergences
        for b in self.backends:
            s = self.summary_of(b)
            worst = "-" if s["worst_rel"] is None else f"{s['worst_rel']:.2e}"
            first = divergences.get(b)
            result = f"ok (worst: {s['worst']})" if first is None else \
                f"FAIL from step {first.step} {first.phase} {first.tensor}"
            lines.append(f"{b:<{nw}}  {str(s['passed']) + '/' + str(s['compared']):>9}  {worst:>9}  {result}")
        shown = self.failing_shown(max_failures, lambda b, n: f"{b}  ... and {n} more failing tensors")
        if shown:
            tw = max(len("tensor"), *(len(r.tensor) for r in shown if not isinstance(r, str)))
            lines += ["", "failing tensors (later ones inherit the first one's error):",
                      f"{'step':>4}  {'phase':<13}  {'backend':<{nw}}  {'tensor':<{tw}}  {'max abs':>9}  "
                      f"{'max|ref|':>9}  {'rel':>9}  result"]
            for r in shown:
                if isinstance(r, str):
                    lines.append(r)
                    continue
                verdict = "FAIL" + (f" ({r.note})" if r.note else "")
                lines.append(f"{r.step:>4}  {r.phase:<13}  {r.backend:<{nw}}  {r.tensor:<{tw}}  {r.max_abs:>9.2e}  "
                             f"{r.max_ref:>9.2e}  {r.rel:>9.2e}  {verdict}")
        first = self.first_divergence
        lines.append("")
        if first is None and self.noise_only and math.isinf(self.rtol):
            lines.append(f"{len(self.records)} comparisons measured, all finite and of matching shape (noise only, "
                         "no bound)")
        elif first is None:
            lines.append(f"all {len(self.records)} comparisons pass")
        else:
            lines.append(f"first divergence: {first.backend} at step {first.step}, {first.phase}, {first.tensor} "
                         f"(relative {first.rel:.3g})")
            if self.reference_suspect:
                lines.append(f"every compared backend diverges there first: suspect the reference "
                             f"({self.reference}) itself")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike):
        """Draw the report to ``path`` (.png, .svg or .pdf): per backend, the loss per step and the
        worst gradient, update and running-statistic error per step against the bound, the first
        divergence annotated. Needs matplotlib (``pip install 'resnet_multi[plot]'``).

        Returns:
            The path written (a ``pathlib.Path``).
        Example:
            >>> rm.check_training("resnet18", backends=("torch", "paddle")).plot("training.svg")
        """
        from .plots import plot_training

        return plot_training(self, path)
