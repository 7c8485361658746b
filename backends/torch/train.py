"""Training hooks of resnet_multi.training: the neutral optimizer description (training.SGD /
AdamW) as torch.optim's own optimizer, and one ordinary train step for check_training."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from resnet_multi import layout as L
from resnet_multi.backends._contract import training_logits

from .layout import LAYOUT
from .model import Network
from .ops import concat_channels, spatial_mean


def make_optimizer(model: Network, settings) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (dampening 0, decay added to the gradient before momentum) or
    ``torch.optim.AdamW`` over ``model.parameters()``, for the neutral optimizer ``settings``
    (``training.SGD`` / ``training.AdamW``): exactly the neutral conventions, since they are
    PyTorch's. Parameters with ``requires_grad=False`` get no gradient and are skipped by the
    optimizer, as always in torch."""
    if settings.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov, weight_decay=settings.weight_decay)
    if settings.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas, eps=settings.eps,
                                 weight_decay=settings.weight_decay)
    raise ValueError(f"torch backend: no optimizer for {settings!r}")


def train_step(model: Network, optimizer: torch.optim.Optimizer, x_nchw: np.ndarray, labels: np.ndarray):
    """One train-mode step: forward, mean cross-entropy, backward, ``optimizer.step()``.

    Returns:
        (loss as a float, {canonical name: gradient array}) for every parameter that got one.
    """
    model.train()
    dtype = next(model.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(x_nchw)).to(dtype)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(training_logits(model(x), spatial_mean, concat_channels), y)
    loss.backward()
    canonical = L.canonical(LAYOUT, model.plan)
    grads = dict(canonical(name, p.grad.detach().numpy()) for name, p in model.named_parameters()
                 if p.grad is not None)
    optimizer.step()
    return float(loss.detach()), grads
