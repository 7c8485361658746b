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
from _d2l import Residual, resnet_block  # the textbook code, as printed
from resnet_multi.weights import random_weights

nn, F = torch.nn, torch.nn.functional


# --------------------------------------------------------------------------- the book's code (PyTorch edition)


def d2l_resnet18():
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10))


def conv_block(input_channels, num_channels):
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs, input_channels, num_channels):
        super().__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block(num_channels * i + input_channels, num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X):
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)  # the book's order: input first, then the new features
        return X


def transition_block(input_channels, num_channels):
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=1), nn.AvgPool2d(kernel_size=2, stride=2))


def d2l_densenet():
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(b1, *blks, nn.BatchNorm2d(num_channels), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)),
                         nn.Flatten(), nn.Linear(num_channels, 10))


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
