"""resnet_multi: one ResNet spec, native PyTorch / PaddlePaddle / Flax models, shared weights.

Importing this package imports no deep learning framework; a backend's framework is imported
the first time that backend is used.
"""

from . import families  # noqa: F401  (registers every block kind before any spec is made)
from .adopt import Adoption, adopt
from .api import build, export_weights, forward, import_weights, optimize_for_inference, plan_of
from .convert import CheckpointError, InspectReport, convert, infer_spec, inspect_file, load_weights
from .export import export
from .limits import LimitError, limits
from .parity import ParityReport, check_parity
from .plan import Plan, make_plan
from .reference import reference_forward
from .registry import BackendError, available_backends, backend_names
from .spec import (BlockSettings, BlockSpec, HeadSpec, InitSpec, NormSpec, ResNetSpec, ShortcutSpec, SpecError,
                   StageSpec, StemSpec, load_spec, save_spec)
from .summary import summary
from .training import TrainingReport, check_training, optimizer
from .weights import WeightsError, save_weights
from .zoo import get_spec, list_specs

__version__ = "0.1.0"

__all__ = [
    "Adoption", "BackendError", "BlockSettings", "BlockSpec", "CheckpointError", "HeadSpec", "InitSpec",
    "InspectReport", "LimitError", "NormSpec", "ParityReport", "Plan", "ResNetSpec", "ShortcutSpec", "SpecError",
    "StageSpec", "StemSpec", "TrainingReport", "WeightsError", "adopt", "available_backends", "backend_names",
    "build", "check_parity", "check_training", "convert", "diagram", "export", "export_weights", "forward",
    "get_spec", "import_weights", "infer_spec", "inspect_file", "limits", "list_specs", "load_spec", "load_weights",
    "make_plan", "optimize_for_inference", "optimizer", "plan_of", "reference_forward", "save_spec", "save_weights",
    "summary",
]


def __getattr__(name: str):
    """``rm.diagram`` is loaded on first use: the drawing module is not needed to import the package."""
    if name == "diagram":
        from .plot import diagram

        return diagram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
