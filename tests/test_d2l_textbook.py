"""The d2l presets against the textbook's own code (Dive into Deep Learning, chapters 8.6 ResNet and
8.7 DenseNet, PyTorch edition), written here as the book writes it and run in torch.

The oracle follows the same plan as the backends, so a plan-level mistake (a reversed concatenation,
a shortcut on the wrong side) would pass the parity tests; this reference shares nothing with the plan.
The book's modules are nn.Sequential with numeric names: its tensors are matched to canonical names in
the order the book registers them (conv, then BatchNorm, per layer), checked by shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # CI installs every backend: a missing framework must fail, not skip

import resnet_multi as rm
from _d2l import Residual, d2l_densenet, d2l_resnet18  # the textbook code, as printed
from resnet_multi.weights import random_weights

nn, F = torch.nn, torch.nn.functional


# --------------------------------------------------------------------------- the book's code (PyTorch edition)


# --------------------------------------------------------------------------- the comparison


def _layer_groups(names):
    """Canonical names grouped by module (conv: weight, bias; BN: weight, bias, running stats), in plan order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    return groups


def _book_modules(net):
    """The book's convs, BatchNorms and linears in the order they compute (conv3 after bn2 in a Residual)."""
    modules = []
    for module in net.modules():
        if isinstance(module, Residual):
            order = [module.conv1, module.bn1, module.conv2, module.bn2] + ([module.conv3] if module.conv3 else [])
            modules += order
        elif isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and not any(
                module in (r.conv1, r.conv2, r.conv3, r.bn1, r.bn2) for r in net.modules() if isinstance(r, Residual)):
            modules.append(module)
    return modules


def _load_canonical(net, weights) -> None:
    """Give the book's modules the canonical weights, module by module in computing order, shapes checked."""
    groups = list(_layer_groups(weights).items())
    modules = _book_modules(net)
    assert len(modules) == len(groups), (len(modules), len(groups))
    with torch.no_grad():
        for module, (prefix, names) in zip(modules, groups, strict=True):
            own = {"weight": module.weight, "bias": module.bias}
            if isinstance(module, nn.BatchNorm2d):
                own.update(running_mean=module.running_mean, running_var=module.running_var)
            assert sorted(own) == sorted(n.rsplit(".", 1)[1] for n in names), prefix
            for name in names:
                tensor = own[name.rsplit(".", 1)[1]]
                assert tuple(tensor.shape) == weights[name].shape, name
                tensor.copy_(torch.from_numpy(weights[name]))


@pytest.mark.parametrize("preset, book", [("d2l_resnet18", d2l_resnet18), ("d2l_densenet", d2l_densenet)])
def test_d2l_presets_compute_what_the_textbook_computes(preset, book):
    spec = rm.get_spec(preset)
    weights = random_weights(rm.make_plan(spec), seed=0)  # random BN statistics: every term matters
    net = book().eval()
    _load_canonical(net, weights)
    x = np.random.default_rng(1).standard_normal((2, 1, 96, 96)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    for backend in ("torch", "numpy"):
        got = rm.reference_forward(rm.make_plan(spec), weights, x) if backend == "numpy" else \
            rm.forward(rm.build(spec, "torch", weights=weights), x)
        got = got["logits"] if isinstance(got, dict) else got
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 1e-5 * scale, f"{backend}: {np.abs(got - expected).max() / scale:.2e}"
