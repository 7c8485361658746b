"""PyTorch backend: a plan compiled into a ``torch.nn.Module`` whose state_dict names are the
canonical names (torchvision's and timm's), so their checkpoints load with ``strict=True``.

Layout is PyTorch's own (NCHW, OIHW), so canonical weights map one to one; the only extra is
BatchNorm's ``num_batches_tracked`` buffer, which is dropped on export and kept on import.

This package imports no framework: the contract's functions (``build``, ``forward``, ...)
are imported from their submodule on first use (``backends/_contract.py``).
"""

from resnet_multi.backends._contract import lazy_attributes

from .layout import LAYOUT

NAME = "torch"
DTYPES = ("float32", "float64", "bfloat16")
"""The dtype names ``build`` accepts."""
SUFFIXES = (".pt", ".pth")
FEATURES = frozenset({"optimize", "export"})

__all__ = ["NAME", "DTYPES", "SUFFIXES", "FEATURES", "LAYOUT"]  # the rest is lazy (__getattr__)

__getattr__ = lazy_attributes(__name__, FEATURES, {
    "ResNet": "model", "Network": "model", "Block": "model",
    "tensor_to_numpy": "io", "numpy_to_tensor": "io",
})
