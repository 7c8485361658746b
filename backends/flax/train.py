"""Training hooks of resnet_multi.training: the neutral optimizer description (training.SGD /
AdamW) as an nnx.Optimizer over an optax chain, and the standard nnx train step for check_training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from resnet_multi import layout as L
from resnet_multi.backends._contract import training_logits

from .layout import LAYOUT
from .model import Network, _path_key
from .ops import JAX_DTYPES, concat_channels, spatial_mean


def optax_transform(settings) -> optax.GradientTransformation:
    """The optax chain for the neutral optimizer ``settings`` (``training.SGD`` / ``training.AdamW``).

    SGD: optax has no weight-decay argument on ``sgd``; ``add_decayed_weights(wd)`` before
    ``sgd`` adds ``wd * p`` to the gradient before momentum, as torch and Paddle do.
    ``optax.sgd``'s trace is torch's momentum buffer (``v = g + m * v``, first ``v = g``) and its
    Nesterov form ``g + m * v`` is torch's. AdamW: ``optax.adamw`` with ``eps_root=0`` adds eps to
    the bias-corrected ``sqrt(v)`` and decays ``lr * wd * p``, decoupled, as torch. Without a mask
    optax decays every leaf it is given; ``nnx.Optimizer(..., wrt=nnx.Param)`` gives it every
    parameter (BatchNorm scales and biases included, as torch and Paddle) and no BatchStat.
    """
    if settings.name == "sgd":
        tx = optax.sgd(settings.lr, momentum=settings.momentum if settings.momentum > 0 else None,
                       nesterov=settings.nesterov)
        return optax.chain(optax.add_decayed_weights(settings.weight_decay), tx) if settings.weight_decay > 0 else tx
    if settings.name == "adamw":
        return optax.adamw(settings.lr, b1=settings.betas[0], b2=settings.betas[1], eps=settings.eps, eps_root=0.0,
                           weight_decay=settings.weight_decay)
    raise ValueError(f"flax backend: no optimizer for {settings!r}")


def make_optimizer(model: Network, settings) -> nnx.Optimizer:
    """``nnx.Optimizer(model, optax_transform(settings), wrt=nnx.Param)``: parameters only, never the
    BatchNorm statistics (``nnx.BatchStat``)."""
    return nnx.Optimizer(model, optax_transform(settings), wrt=nnx.Param)


@nnx.jit
def _train_step(model: Network, optimizer: nnx.Optimizer, x_nhwc: jax.Array, labels: jax.Array):
    """The standard nnx step: loss and gradients by ``nnx.value_and_grad`` (BatchNorm's batch
    statistics are updated in place by the train-mode forward, inside the jitted function),
    then ``optimizer.update``."""
    def loss_fn(model):
        logits = training_logits(model(x_nhwc), spatial_mean, concat_channels)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads


def train_step(model: Network, optimizer: nnx.Optimizer, x_nchw: np.ndarray, labels: np.ndarray):
    """One train-mode step (``model.train()``, then the jitted ``_train_step``).

    Returns:
        (loss as a float, {canonical name: gradient array in canonical layout}).
    """
    model.train()
    dtype = JAX_DTYPES[model.compute_dtype]
    x = jnp.asarray(np.transpose(np.asarray(x_nchw), (0, 2, 3, 1)), dtype=dtype)
    loss, grads = _train_step(model, optimizer, x, jnp.asarray(np.asarray(labels, dtype=np.int32)))
    canonical = L.canonical(LAYOUT, model.plan)
    out = {}
    for path, leaf in nnx.to_flat_state(grads):
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        name, array = canonical(_path_key(path), np.asarray(value))
        out[name] = array
    return float(loss), out
