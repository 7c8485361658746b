"""Shared test helpers: the preset and backend matrices come from the zoo and the registry."""

from __future__ import annotations

import numpy as np
import pytest

import resnet_multi as rm

PRESETS = rm.list_specs()
BACKENDS = rm.backend_names()  # CI installs every backend: an uninstalled one must fail, not skip

ODD_HW = (33, 47)  # odd and non-square: padding and ceil_mode errors show only at such sizes


def odd_input(spec: rm.ResNetSpec, batch: int = 1, hw=ODD_HW, seed: int = 0) -> np.ndarray:
    """A random NCHW float32 input for ``spec`` at an odd, non-square size."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, spec.in_channels, *hw)).astype(np.float32)


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-5, atol: float = 1e-6):
    """fp32 parity bound of docs/NUMERICS.md: max|a - b| <= atol + rtol * max|expected|."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    bound = atol + rtol * float(np.max(np.abs(expected)))
    assert err <= bound, f"{what}: max abs error {err:.3g} > bound {bound:.3g}"


def assert_weights_equal(actual, expected) -> None:
    """``actual`` holds exactly the tensors of ``expected`` (no more, no fewer; torch's
    ``num_batches_tracked`` counters aside), bit for bit (the failure names the tensor)."""
    extra = sorted(n for n in actual if n not in expected and not n.endswith(".num_batches_tracked"))
    missing = sorted(n for n in expected if n not in actual)
    assert not extra and not missing, f"extra tensors {extra[:5]}, missing {missing[:5]}"
    for name, array in expected.items():
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


@pytest.fixture(params=PRESETS)
def preset(request) -> rm.ResNetSpec:
    return rm.get_spec(request.param)
