"""Flax backend: a plan compiled into a ``flax.nnx.Module`` that works in NHWC, as JAX users expect.

The module tree mirrors the canonical (torchvision / timm) names, so moving weights is a rename
plus a transpose per tensor, never a lookup through the plan:

=====================================  =========================================================
canonical (PyTorch layout)             Flax nnx state path (Flax layout)
=====================================  =========================================================
``conv1.weight``  (O, I, H, W)          ``conv1.kernel``  (H, W, I, O)           nnx.Conv
``bn1.weight`` / ``bn1.bias``           ``bn1.scale`` / ``bn1.bias``             nnx.BatchNorm Param
``bn1.running_mean`` / ``running_var``  ``bn1.mean`` / ``bn1.var``               nnx.BatchNorm BatchStat
``conv1.0.weight`` (deep stem)          ``conv1.0.kernel``   ``conv1``: nnx.List [Conv, BN, None, Conv, BN, None, Conv]
``layer3.4.conv2.weight``               ``layer3.4.conv2.kernel``   ``layer3``: nnx.List of Blocks
``layer2.0.downsample.0.weight``        ``layer2.0.downsample.0.kernel``   ``downsample``: nnx.List [Conv, BN]
``layer2.0.downsample.1.weight`` (-D)   ``layer2.0.downsample.1.kernel``   nnx.List [None (the pool), Conv, BN]
``layer1.0.se.fc1.weight`` / ``.bias``  ``layer1.0.se.fc1.kernel`` / ``.bias``   1x1 nnx.Conv with bias
``fc.weight``  (out, in)                ``fc.kernel``  (in, out)                 nnx.Linear
=====================================  =========================================================

(The leaves and axis orders are data: ``layout.LAYOUT``.)

Numbered children live in nnx.List (None, which holds no state, where torch's Sequential has a
parameter-free op), so in ``nnx.state(model)`` every numbered key is an int
(``('layer2', 0, 'downsample', 1, 'kernel')``) and every other key a string. The native file
(``.msgpack``, see ``save_native``) holds the same nested structure as pure dicts of numpy
arrays with all keys as strings, which ``nnx.replace_by_pure_dict`` accepts (it converts
every digit key such as ``'4'`` back to ``4``).

Numerics (see docs/NUMERICS.md): explicit symmetric padding ``((p, p), (p, p))`` on every conv and
pool (Flax's 'SAME' pads (0, 1) at stride 2 on even sizes); max-pool pads with -inf; average
pooling implements PyTorch's ``ceil_mode`` and ``count_include_pad`` exactly; BatchNorm gets
``momentum = 1 - spec momentum`` (Flax weights the OLD value) and the spec's epsilon.

Modes, the Flax way: ``build`` returns the model in eval mode (BatchNorm uses its running
statistics, dropout off); ``model.train()`` / ``model.eval()`` switch. ``forward`` (and so
``rm.forward``) always runs in eval mode through a jit-compiled function, without changing the
model's mode. Called directly, ``model(x_nhwc)`` follows the model's mode; in train mode with
head dropout, pass ``rngs=nnx.Rngs(dropout=seed)``.

This package imports no framework: the contract's functions (``build``, ``forward``, ...)
are imported from their submodule on first use (``backends/_contract.py``).
"""

from resnet_multi.backends._contract import lazy_attributes

from .layout import LAYOUT

NAME = "flax"
DTYPES = ("float32", "float64", "bfloat16")
"""The dtype names ``build`` accepts (float64 needs JAX's 64-bit mode)."""
SUFFIXES = (".msgpack",)
FEATURES = frozenset({"optimize"})

__all__ = ["NAME", "DTYPES", "SUFFIXES", "FEATURES", "LAYOUT"]  # the rest is lazy (__getattr__)

__getattr__ = lazy_attributes(__name__, FEATURES, {
    "ResNet": "model", "Network": "model", "Block": "model", "optax_transform": "train",
})
