"""PyTorch's native files (``.pt`` / ``.pth``): state_dicts written by ``torch.save``."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch

# numpy's bfloat16 (ml_dtypes, a dependency of the core) is imported by the functions that need it.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")


def load_native(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical-named arrays from a ``torch.save``d state_dict (or a dict holding one under a usual
    key such as ``state_dict``/``model``). Loaded with ``weights_only=True``: no arbitrary unpickling.
    A ``module.`` prefix (DataParallel) is removed. Dtypes are kept (bfloat16 tensors become
    ``ml_dtypes.bfloat16`` arrays, see ``tensor_to_numpy``)."""
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: not a PyTorch state_dict (a dict of tensors, or one under "
                         f"{'/'.join(_STATE_DICT_KEYS)})")
    out = {}
    for name, tensor in obj.items():
        if name.startswith("module."):
            name = name[len("module."):]
        out[name] = tensor_to_numpy(tensor)
    return out


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as a numpy array of the same dtype, bfloat16 included (as an
    ``ml_dtypes.bfloat16`` array: ``Tensor.numpy()`` refuses bfloat16, so its bits are viewed
    as int16 and reinterpreted; no value passes through float32). Shares memory when it can."""
    import ml_dtypes

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    """The inverse of ``tensor_to_numpy``: a tensor of the array's dtype (``ml_dtypes.bfloat16``
    becomes ``torch.bfloat16``, bit for bit). Shares memory with a C-contiguous array."""
    import ml_dtypes

    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def save_native(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """``torch.save`` a state_dict of canonical weights (``num_batches_tracked`` added for BNs,
    as torchvision's own checkpoints have it). Dtypes are kept: bfloat16 arrays become
    ``torch.bfloat16`` tensors."""
    state = {}
    for name, array in weights.items():
        state[name] = numpy_to_tensor(array)
        if name.endswith(".running_var"):
            state[name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    torch.save(state, os.fspath(path))
