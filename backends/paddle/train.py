"""Training hooks of resnet_multi.training: the neutral optimizer description (training.SGD /
AdamW) as paddle.optimizer's own optimizer, and one ordinary train step for check_training."""

from __future__ import annotations

import numpy as np
import paddle
from paddle.nn import functional as F

from resnet_multi import layout as L
from resnet_multi.backends._contract import training_logits
from resnet_multi.training import OptimizerError

from .layout import LAYOUT
from .model import Network
from .ops import concat_channels, spatial_mean


def _trainable(model: Network) -> list:
    """The parameters an optimizer may touch. BatchNorm's ``_mean``/``_variance`` are parameters
    in Paddle, with ``stop_gradient=True``: left out (they are running statistics, updated by the
    forward pass), and so is any parameter a user froze the same way."""
    return [p for p in model.parameters() if not p.stop_gradient]


def _exact_in_float32(model: Network, params: list, settings: dict[str, float]) -> None:
    """Paddle passes Momentum's ``momentum`` and the ``L2Decay``/AdamW decay coefficient to its
    kernels as float32 attributes, even for float64 parameters (measured: momentum 0.9 acts as
    0.89999997615814, trajectories 2e-8 apart from torch's). A float64 model asks for exact
    arithmetic, so such a value must be exact in float32; a float32 model rounds it like every
    framework does."""
    if not any(p.dtype == paddle.float64 for p in params):
        return
    for name, value in settings.items():
        rounded = float(np.float32(value))
        if rounded != value:
            raise OptimizerError(
                f"optimizer: {name}={value!r} is not exact in float32, and Paddle holds {name} as float32 even "
                f"for the float64 model {model.plan.spec.name!r} (it would act as {rounded!r}, silently). "
                f"Pass {name}={rounded!r}, the value Paddle computes with, so that every framework uses it "
                f"(or another value exact in float32, e.g. 0.875 or 2**-10)")


def make_optimizer(model: Network, settings):
    """``paddle.optimizer.Momentum`` (decay as ``L2Decay``, added to the gradient before momentum;
    momentum 0 is plain SGD: ``v = g``) or ``paddle.optimizer.AdamW`` (decoupled decay scaled by
    the learning rate, eps added to the bias-corrected ``sqrt(v)``: Paddle computes
    ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps * sqrt(1 - b2^t))``, the same
    number), over the trainable parameters, for the neutral optimizer ``settings``
    (``training.SGD`` / ``training.AdamW``). Nesterov: Paddle's ``p -= lr * (g + mu * v)`` is
    PyTorch's form."""
    params = _trainable(model)
    if settings.name == "sgd":
        _exact_in_float32(model, params, {"momentum": settings.momentum, "weight_decay": settings.weight_decay})
        decay = paddle.regularizer.L2Decay(settings.weight_decay) if settings.weight_decay > 0 else None
        return paddle.optimizer.Momentum(learning_rate=settings.lr, momentum=settings.momentum, parameters=params,
                                         use_nesterov=settings.nesterov, weight_decay=decay)
    if settings.name == "adamw":
        _exact_in_float32(model, params, {"weight_decay": settings.weight_decay})
        return paddle.optimizer.AdamW(learning_rate=settings.lr, beta1=settings.betas[0], beta2=settings.betas[1],
                                      epsilon=settings.eps, parameters=params, weight_decay=settings.weight_decay)
    raise ValueError(f"paddle backend: no optimizer for {settings!r}")


def train_step(model: Network, optimizer, x_nchw: np.ndarray, labels: np.ndarray):
    """One train-mode step: forward, mean cross-entropy, backward, ``optimizer.step()``.

    Returns:
        (loss as a float, {canonical name: gradient array in canonical layout}) for every
        trainable parameter that got one.
    """
    model.train()
    dtype = _trainable(model)[0].dtype if _trainable(model) else paddle.float32
    x = paddle.to_tensor(np.ascontiguousarray(x_nchw), dtype=dtype)
    y = paddle.to_tensor(np.asarray(labels, dtype=np.int64))
    loss = F.cross_entropy(training_logits(model(x), spatial_mean, concat_channels), y)
    loss.backward()
    canonical = L.canonical(LAYOUT, model.plan)  # native (PaddleClas) names and layout -> canonical
    grads = dict(canonical(name, p.grad.numpy()) for name, p in model.named_parameters()
                 if not p.stop_gradient and p.grad is not None)
    optimizer.step()
    optimizer.clear_grad()
    return float(loss), grads
