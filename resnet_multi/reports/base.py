"""What every check's report shares: records of one backend's error on one tensor, and a report of
such records against one reference, with its verdict, its first divergence, JSON and text.

A record (``TapResult``, ``TrainingRecord``) is a frozen dataclass with at least ``backend``,
``shape``, ``max_abs``, ``max_ref``, ``rel``, ``bound``, ``ok`` and ``note``; it mixes in ``Record``.
A report (``ParityReport``, ``TrainingReport``) is a frozen dataclass with ``backends`` (the
compared backends, in order) that mixes in ``Report`` and says where its records are
(``records_of_report``), where each one comes in execution order (``execution_order``) and what
its divergence looks like (``divergence_of``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

NUMPY = "numpy"
"""The name the float64 numpy oracle goes by in reports, beside the backends' names."""


def json_number(value: float):
    """JSON has no inf/nan: they become null (the record's ``note`` or ``ok`` says why)."""
    return value if math.isfinite(value) else None


def worst(records: Iterable) -> object | None:
    """The record with the largest relative error (nan counts as largest); None when empty."""
    return max(records, key=lambda r: math.inf if math.isnan(r.rel) else r.rel, default=None)


class Record:
    """One backend's error on one tensor (mixed into the records' frozen dataclasses)."""

    __slots__ = ()

    def to_dict(self) -> dict:
        """A JSON-ready dict: the fields in order, the shape as a list, inf/nan errors as null."""
        row = dataclasses.asdict(self)
        row["shape"] = list(self.shape)
        for key in ("max_abs", "max_ref", "rel", "bound"):
            row[key] = json_number(row[key])
        return row


class Report:
    """Errors of backends against one reference (mixed into the reports' frozen dataclasses)."""

    __slots__ = ()

    # ---- what each report says about itself

    def records_of_report(self) -> tuple:
        """Every record, in report order."""
        raise NotImplementedError

    def execution_order(self) -> Callable[[object], int]:
        """A key: where a record's tensor comes in execution order (earlier is smaller)."""
        raise NotImplementedError

    def divergence_of(self, record):
        """The divergence (a named tuple) that a failing ``record`` is."""
        raise NotImplementedError

    def format(self) -> str:
        raise NotImplementedError

    # ---- shared

    @property
    def ok(self) -> bool:
        """True when every record is within its bound."""
        return all(r.ok for r in self.records_of_report())

    def rows(self, backend: str) -> list:
        """The records of one backend, in report order."""
        return [r for r in self.records_of_report() if r.backend == backend]

    def failures(self, backend: str | None = None) -> list:
        """The failing records (of one backend, or of all), in report order."""
        return [r for r in self.records_of_report() if not r.ok and (backend is None or r.backend == backend)]

    def first_failures(self) -> dict:
        """Each failing backend's first failing record in execution order (ties: report order),
        in the order of ``backends``."""
        key = self.execution_order()
        first: dict = {}
        for r in sorted(self.failures(), key=key):
            first.setdefault(r.backend, r)
        return {b: first[b] for b in sorted(first, key=self._backend_rank)}

    @property
    def divergences(self) -> dict:
        """Each failing backend's first failing record in execution order, as a divergence."""
        return {b: self.divergence_of(r) for b, r in self.first_failures().items()}

    @property
    def first_divergence(self):
        """None when all pass; otherwise the earliest failure in execution order over all backends
        (ties: the backend listed first). Later tensors inherit the first error: look there."""
        key = self.execution_order()
        firsts = self.first_failures().values()
        if not firsts:
            return None
        return self.divergence_of(min(firsts, key=lambda r: (key(r), self.backends.index(r.backend))))

    def worst(self, backend: str):
        """The record of ``backend`` with the largest relative error, or None."""
        return worst(self.rows(backend))

    def failing_shown(self, max_failures: int, more: Callable[[str, int], str]) -> list:
        """Per backend its first ``max_failures`` failing records in execution order, then the
        line ``more(backend, n)`` when ``n`` more fail: what the text report lists."""
        key = self.execution_order()
        shown: list = []
        for b in self.backends:
            failing = sorted(self.failures(b), key=key)
            shown += failing[:max_failures]
            if len(failing) > max_failures:
                shown.append(more(b, len(failing) - max_failures))
        return shown

    def records_to_json(self) -> list[dict]:
        """Every record as a JSON-ready dict, in report order."""
        return [r.to_dict() for r in self.records_of_report()]

    def _backend_rank(self, backend: str) -> int:
        return self.backends.index(backend) if backend in self.backends else len(self.backends)

    def __str__(self) -> str:
        return self.format()
