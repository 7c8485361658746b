"""PaddlePaddle backend: a plan compiled into a ``paddle.nn.Layer`` whose state_dict names are the
canonical names, except where Paddle itself differs (``layout``). Numerics translated from
PyTorch's conventions are listed in ``ops``.

This package imports no framework: the contract's functions (``build``, ``forward``, ...)
are imported from their submodule on first use (``backends/_contract.py``).
"""

from resnet_multi.backends._contract import lazy_attributes

from .layout import LAYOUT

NAME = "paddle"
DTYPES = ("float32", "float64")
"""The dtype names ``build`` accepts: Paddle's CPU kernels have no bfloat16 convolution."""
SUFFIXES = (".pdparams",)
FEATURES = frozenset({"optimize", "export"})

__all__ = ["NAME", "DTYPES", "SUFFIXES", "FEATURES", "LAYOUT"]  # the rest is lazy (__getattr__)

__getattr__ = lazy_attributes(__name__, FEATURES, {
    "ResNet": "model", "Network": "model", "Block": "model", "InferenceResNet": "fastpath",
    "InferenceNetwork": "fastpath",
})
