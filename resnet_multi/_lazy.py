"""numpy for the core, imported on first use.

numpy's own import (~85 ms here) is most of what ``import resnet_multi`` would cost, and specs,
plans, presets and summaries never touch an array. Every core module takes ``np`` from here, so
numpy is loaded by the first call that needs it (weights, conversion, parity, forward), and
``import resnet_multi`` stays under 0.1 s (issue 6; ``benchmarks/build_bench.py`` measures it).

Not ``importlib.util.LazyLoader`` (nor lazy_loader, built on it): on Python < 3.12 a module it
loads can be seen half-initialised by a second thread (CPython gh-114763; threads touching
``np.zeros`` first raised AttributeError here). A plain ``import numpy`` on attribute access is
serialised by the import system's module lock, so every thread sees numpy whole.
"""

from __future__ import annotations


class _Numpy:
    """Stands for the ``numpy`` module; each attribute is looked up on the real one, imported on first use."""

    def __getattr__(self, name: str):
        import numpy  # after the first call, a sys.modules lookup

        return getattr(numpy, name)

    def __repr__(self) -> str:
        return "<numpy, imported on first use by resnet_multi>"


np = _Numpy()
