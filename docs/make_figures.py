"""Regenerate the README's figures: ``python docs/make_figures.py`` (needs ``.[all,plot]``).

- docs/parity.svg: a real parity check of resnet50 in every backend (torch, Paddle and Flax)
  against the float64 oracle, with one porting bug planted in the Paddle model (layer3.2.bn2's
  running variance replaced), so that the picture shows what a failure and its first divergence
  look like.
- docs/resnet50.svg: the architecture diagram of resnet50 at 224x224, drawn from the plan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import resnet_multi as rm
from resnet_multi.parity import check_models
from resnet_multi.weights import random_weights

DOCS = Path(__file__).resolve().parent


def parity_figure(path: Path) -> rm.ParityReport:
    spec = rm.get_spec("resnet50")
    weights = random_weights(rm.make_plan(spec), seed=0)
    models = {name: rm.build(spec, backend=name, weights=weights) for name in rm.backend_names()}
    # The planted bug: Paddle's model gets another BN running variance for one layer, as a
    # converter that mixes up two layers' statistics would give it.
    wrong = weights["layer3.2.bn2.running_var"] * np.float32(1.5)
    rm.import_weights(models["paddle"], {"layer3.2.bn2.running_var": wrong}, strict=False)
    x = np.random.default_rng(1).standard_normal((1, 3, 33, 47)).astype(np.float32)
    report = check_models(models, x, weights=weights)
    report.plot(path)
    return report


def main() -> None:
    report = parity_figure(DOCS / "parity.svg")
    print(report.format())
    rm.diagram("resnet50", DOCS / "resnet50.svg", input_shape=(1, 3, 224, 224))
    print(f"wrote {DOCS / 'parity.svg'} and {DOCS / 'resnet50.svg'}")


if __name__ == "__main__":
    main()
