"""Export for deployment: a model's inference fast path, written in its framework's serving format.

One function for every backend, ``export(model, path, input_shape)``; the format is the
backend's own, given by two hooks of its package, present when its ``FEATURES`` declare "export":

- ``EXPORT_SUFFIX``: the suffix of the main file (torch: ``.onnx``; paddle: ``.json``, the
  PIR program that ``paddle.jit.save`` writes beside ``.pdiparams``).
- ``export_model(model, prefix, input_shape) -> list[str]``: write the files for ``prefix``
  (a path without suffix) and return their paths.

torch writes ONNX (``torch.onnx.export``; run it with onnxruntime), paddle a static inference
model (``paddle.jit.save``; load it with ``paddle.jit.load`` or Paddle Inference). A backend
without the feature (flax) raises BackendError naming the backends that have it.

What is exported is always the eval-only fast path: a model that still has BatchNorms is first
passed through ``optimize_for_inference`` (the model given is not changed). Files are written
into a temporary directory beside ``path`` and moved into place only when the exporter has
finished, so a failed export leaves no partial files and existing files untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .inference import build_inference, is_folded
from .registry import BackendError, available_backends, backend_of, backends_with, has_feature


def _exporting_backends() -> list[str]:
    """The installed backends that declare the "export" feature."""
    return [name for name in backends_with("export") if name in available_backends()]


def export(model, path: str | os.PathLike, input_shape: tuple[int, int, int, int], *,
           force: bool = True) -> list[Path]:
    """Write ``model``'s inference fast path in its framework's deployment format.

    Args:
        model: a model built by ``rm.build`` (ordinary or ``inference=True``).
        path: the output file, or the path prefix: ``r50.onnx`` or ``r50`` for torch (writes
            ``r50.onnx``); ``r50`` for paddle (writes ``r50.json`` and ``r50.pdiparams``, what
            ``paddle.jit.load("r50")`` reads). A suffix other than the backend's is kept as part
            of the name.
        input_shape: (N, C, H, W) of the input the artifact is made for; C, H and W are fixed
            in the artifact, the batch size is dynamic (any N >= 1).
        force: overwrite existing files (default); False raises FileExistsError and leaves them as they are.
    Returns:
        The paths written, main file first.
    Raises:
        BackendError: the model's backend has no deployment export.
        ValueError: ``input_shape`` does not fit the model.
    Example:
        >>> rm.export(rm.build("resnet50", "torch", weights="r50.pth"), "r50.onnx", (1, 3, 224, 224))
    """
    backend = backend_of(model)
    if not has_feature(backend, "export"):
        raise BackendError(f"backend {backend.NAME!r} has no deployment export; backends that have one: "
                           f"{', '.join(_exporting_backends()) or 'none installed'}")
    plan = backend.plan_of(model)
    input_shape = tuple(int(s) for s in input_shape)
    plan.check_input_shape(input_shape, what="input_shape")
    if not is_folded(plan):
        model = build_inference(backend, plan, backend.export_weights(model))

    path = Path(path)
    suffix = backend.EXPORT_SUFFIX
    stem = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    directory = path.parent
    if not force and (directory / (stem + suffix)).exists():  # before the (slow) exporter runs
        raise FileExistsError(f"{directory / (stem + suffix)} exists; pass force=True to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".export", dir=directory))
    try:
        written = [Path(p) for p in backend.export_model(model, os.fspath(tmp_dir / stem), input_shape)]
        targets = [directory / p.name for p in written]
        if not force:
            existing = [os.fspath(t) for t in targets if t.exists()]
            if existing:
                raise FileExistsError(f"{', '.join(existing)} exist(s); pass force=True to overwrite")
        for source, target in zip(written, targets):
            os.replace(source, target)  # same directory, same file system: each file appears whole
        return targets
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
