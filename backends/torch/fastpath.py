"""PyTorch's inference fast path and deployment export (optional hooks of the backend contract,
used by resnet_multi.inference / resnet_multi.export). BatchNorm folding is done by the core;
these only add what is PyTorch's own."""

from __future__ import annotations

import torch

from .model import Network


def optimize(model: Network) -> Network:
    """Eval-only speed-ups for a (BatchNorm-folded) model: weights in channels_last (NHWC)
    memory format, oneDNN's preferred layout for CPU convolutions (faster than NCHW, benchmarks/RESULTS.md);
    activations follow the weights' format, so NCHW inputs still work, and no
    gradients (eval-only). The model stays a plain ``nn.Module``: ``torch.compile``,
    ``torch.jit.trace`` and ``torch.onnx.export`` take it as it is."""
    model = model.to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    return model.eval()


EXPORT_SUFFIX = ".onnx"


def export_model(model: Network, prefix: str, input_shape: tuple[int, ...]) -> list[str]:
    """Write ``model`` to ``<prefix>.onnx`` with ``torch.onnx.export`` (the dynamo exporter): one
    input ``x``, NCHW float32 of ``input_shape`` with a dynamic batch size; one output per
    ``plan.output_names()``. Returns the paths written."""
    path = prefix + EXPORT_SUFFIX
    # Traced at batch 2: torch.export specializes a size-1 dimension, which would fix the batch.
    x = torch.zeros((2, *input_shape[1:]), dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=list(model.plan.output_names()),
                          dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}}, dynamo=True,
                          external_data=False, verbose=False)
    return [path]
