"""Former home of the IR and the residual plan builder, kept so that ``resnet_multi.plan`` imports
keep working. The IR is ``resnet_multi.ir`` (ops, graph, plan, walk, shapes); plan builders are
the block families, ``resnet_multi.families`` (``make_plan``)."""

from .families import make_plan
from .families.layers import ParamBuilder as _Builder  # noqa: F401 (the old private name, for old tests)
from .ir import *  # noqa: F401,F403
from .ir import GraphBuilder as _Graph  # noqa: F401
from .ir import __all__ as _ir_names

__all__ = [*_ir_names, "make_plan"]
