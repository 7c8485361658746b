"""Train mode, one body for every backend: a train-mode call normalises with the batch statistics
and updates BatchNorm's running statistics exactly as torch does (the reference framework).

The call itself is each framework's own idiom (conftest's ``idioms``); everything else is written
once, so a new backend joins by its registry row and its idioms.
"""

from __future__ import annotations

import numpy as np
import pytest

import resnet_multi as rm
from conftest import BACKENDS, assert_close, idioms, odd_input, small
from resnet_multi.weights import random_weights

MOMENTUM = 0.3  # not the default, and 1 - m != m: a momentum passed untranslated fails
# resnet50d's deep stem and avg-pool shortcuts at 1/8 width, with conv biases and eps 1e-3 (not
# the default: an eps that does not reach the framework shows)
SPEC = small(rm.get_spec("resnet50d")).replace(conv_bias=True, norm=rm.NormSpec(eps=1e-3, momentum=MOMENTUM))


# float64 models (JAX's 64-bit mode for Flax on for this file only): train-mode float32 results of
# correct implementations differ by more than the float32 parity bound (BatchNorm over few values
# amplifies rounding); float64 leaves only real differences.
pytestmark = pytest.mark.usefixtures("x64_for_the_file")


def _batch_counts(torch_model) -> dict[str, int]:
    """Hooks that record, per BatchNorm, the values per channel in its batch (the n of n / (n - 1))."""
    import torch

    counts: dict[str, int] = {}
    for name, module in torch_model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(
                lambda mod, args, name=name: counts.__setitem__(name, args[0].numel() // args[0].shape[1]))
    return counts


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_train_mode_call_updates_running_stats_like_torch(backend):
    """Each framework's momentum convention differs (Paddle's and Flax's weigh the OLD value, so the
    backend passes 1 - m) and so does the stored variance (torch stores the unbiased one, Paddle's
    and Flax's own BatchNorm the biased one; the backend follows the spec, default unbiased): after
    one train-mode call every running statistic must hold torch's value."""
    plan = rm.make_plan(SPEC)
    weights = random_weights(plan, seed=4)
    x = odd_input(SPEC, batch=3).astype(np.float64)
    reference = rm.build(SPEC, BACKENDS[0], weights=weights, dtype="float64")
    model = rm.build(SPEC, backend, weights=weights, dtype="float64")
    counts = _batch_counts(reference)
    expected = idioms(BACKENDS[0]).train_call(reference, x, seed=0)
    actual = idioms(backend).train_call(model, x, seed=0)
    assert_close(actual, expected, "train-mode logits (batch statistics)")
    after_reference, after = rm.export_weights(reference), rm.export_weights(model)

    bns = [name[: -len(".running_var")] for name, info in plan.params.items() if info.role == "bn_var"]
    assert set(bns) == set(counts)
    for bn in bns:
        mean, var = f"{bn}.running_mean", f"{bn}.running_var"
        assert not np.allclose(after[mean], weights[mean]), f"{mean} was not updated"
        assert_close(after[mean], after_reference[mean], mean)
        assert_close(after[var], after_reference[var], f"{var} (n={counts[bn]})")
    # and the n / (n - 1) is not lost in noise: where n is smallest the biased estimator differs from
    # the stored one by ~m/n, far beyond the bound
    bn = min(counts, key=counts.get)
    n, var0 = counts[bn], weights[f"{bn}.running_var"]
    stored = after[f"{bn}.running_var"]
    biased = (stored - (1 - MOMENTUM) * var0) * (n - 1) / n + (1 - MOMENTUM) * var0
    with pytest.raises(AssertionError):
        assert_close(biased, after_reference[f"{bn}.running_var"], "unbiased != biased")
