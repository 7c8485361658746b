"""Block families: one module each, holding the spec settings it reads (with their validation)
and its plan builder, registered by block kind (``spec.register_block_family``):

- ``residual``: basic, bottleneck, basic_1x1 (torchvision, timm, PaddleOCR, d2l ResNets);
- ``dense``: DenseNet (torchvision, paddle.vision, d2l);
- ``ghost``: GhostNet (timm);
- ``vgg``: VGG (torchvision, paddle.vision; P2PNet's backbone);
- ``convnext``: ConvNeXt (torchvision);
- ``hornet``: HorNet (the official code).

``layers`` holds what they share (the parameter-table builder, stem, squeeze-excite, head).
Nothing here is framework code, and no consumer of the plan (backends, oracle, folding, taps,
summary) knows which family it walks.
"""

from __future__ import annotations

from ..ir import Plan
from ..limits import check_plan_size, check_spec_size
from ..spec import ResNetSpec, block_family, register_block_family
from . import convnext, dense, ghost, hornet, residual, vgg
from .layers import ParamBuilder

FAMILIES = tuple(register_block_family(module.FAMILY) for module in (residual, dense, ghost, vgg, convnext, hornet))
"""Every block family, registered in this order (the order ``block.kind`` errors list the kinds in)."""


def make_plan(spec: ResNetSpec) -> Plan:
    """Expand ``spec`` into an explicit Plan (parts of ops + canonical parameter table), with the
    builder of its block kind's family.

    Args:
        spec: a validated ResNetSpec.
    Returns:
        The Plan; ``plan.params`` lists every canonical parameter and buffer in module order.
    Raises:
        LimitError: the spec is above ``resnet_multi.limits`` (blocks, then parameters).
    Example:
        >>> p = make_plan(rm.get_spec("resnet50")); p.params["fc.weight"].shape
        (1000, 2048)
    """
    check_spec_size(spec)
    builder = ParamBuilder(spec)
    stem, stages, neck, head = block_family(spec.block.kind).build(builder)
    plan = Plan(spec, stem, stages, head, spec.out_indices, builder.params, neck, builder.aliases,
                builder.param_aliases, builder.alias_shapes)
    check_plan_size(plan)
    return plan
