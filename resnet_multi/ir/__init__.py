"""The intermediate representation every consumer walks: ops (``ir.ops``, each with its shape
rule), parts and their graphs (``ir.graph``), the plan (``ir.plan``), the one walk (``ir.walk``)
and shape/MAC tracing (``ir.shapes``). It holds no block family's code and imports no framework;
layers: ops < graph < walk < shapes < plan (docs/DESIGN.md)."""

from .graph import BUFFER_ROLES, INPUT, ROLES, GraphBuilder, Node, ParamInfo, Part, Stage, mark_inplace
from .ops import (ACTIVATIONS, BROADCASTING_OPS, LAYER_NORM_FORMS, MODULE_OPS, NAMEABLE_OPS, OPS, PARAMETER_OPS, Act,
                  AdaptiveAvgPool, Add, AvgPool, BatchNorm, ChannelLinear, Concat, Conv, DropPath, Dropout, Flatten,
                  GlobalAvgPool, GlobalFilter, Interleave, LayerNorm, LayerScale, Linear, MaxPool, Mul, Op, ReLU, Scale,
                  Slice, adaptive_windows, align_corners_matrix, align_corners_weights, module_name, op_macs, op_output)
from .plan import SHAPE_RULES, Alias, Plan
from .shapes import trace
from .walk import run_part, run_plan, run_stage_via_container, stage_container

__all__ = [
    "ACTIVATIONS", "BROADCASTING_OPS", "BUFFER_ROLES", "INPUT", "LAYER_NORM_FORMS", "MODULE_OPS", "NAMEABLE_OPS",
    "OPS", "PARAMETER_OPS", "ROLES", "SHAPE_RULES", "Act", "AdaptiveAvgPool", "Add", "Alias", "AvgPool", "BatchNorm", "ChannelLinear",
    "Concat", "Conv", "DropPath", "Dropout", "Flatten", "GlobalAvgPool", "GlobalFilter", "GraphBuilder", "Interleave",
    "LayerNorm", "LayerScale", "Linear", "MaxPool", "Mul", "Node", "Op", "ParamInfo", "Part", "Plan", "ReLU", "Scale",
    "Slice", "Stage", "adaptive_windows", "align_corners_matrix", "align_corners_weights", "mark_inplace",
    "module_name", "op_macs", "op_output", "run_part", "run_plan", "run_stage_via_container", "stage_container",
    "trace",
]
