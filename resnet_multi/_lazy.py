"""numpy for the core, imported on first use.

numpy's own import (~85 ms here) is most of what ``import resnet_multi`` would cost, and specs,
plans, presets and summaries never touch an array. Every core module takes ``np`` from here, so
numpy is loaded by the first call that needs it (weights, conversion, parity, forward), and
``import resnet_multi`` stays under 0.1 s (issue 6; ``benchmarks/build_bench.py`` measures it).
"""

import lazy_loader

np = lazy_loader.load("numpy")
