"""The one walk over a plan, shared by every consumer: the backends' models, the numpy oracle,
shape and MAC tracing, and the test doubles.

A consumer supplies ``apply(node, *inputs) -> output`` (its primitives: a framework's ops and
modules, numpy functions, or shape arithmetic); the walk feeds each part's nodes their named
inputs in execution order and publishes taps. No framework is imported here.

``node.inplace`` says the op may overwrite its first input: that value is used by no later node,
is not the part's input or a tap, and was made by an op whose backward pass does not need its
own output (Conv, BatchNorm, Add, Mul). Backends that can save memory with it (torch, as
torchvision's blocks do with ``out += identity; relu_(out)``) may; others ignore it.

The plan is read through its attributes only (``stem``, ``stages``, ``neck``, ``head``,
``out_indices``), so this module needs nothing from ``ir.plan``.
"""

from __future__ import annotations

from typing import Any, Callable, MutableMapping

from .graph import INPUT, Part, Stage


def run_part(part: Part, x: Any, apply: Callable, taps: MutableMapping | None = None) -> Any:
    """Run one part (stem, block or head) on ``x``; with ``taps``, publish its taps into it."""
    # One loop, no early return: Paddle's AST to_static (paddle.jit.save) converts this function
    values = {INPUT: x}
    tap_of = dict(part.taps) if taps is not None else {}
    for node, dead in zip(part.nodes, part.dead_after):
        out = apply(node, *[values[name] for name in node.inputs])
        values[node.output] = out
        if node.output in tap_of:  # published as soon as made: taps come in execution order
            taps[tap_of[node.output]] = out
        for name in dead:  # freed when dead, as eager code frees them (Part.dead_after)
            values.pop(name)
    return values[part.output]


def run_plan(plan, x: Any, apply: Callable, *, taps: MutableMapping | None = None,
             run_block: Callable | None = None, run_stage: Callable | None = None):
    """Run the whole plan: stem, every block, neck, head.

    Args:
        plan: the plan (``resnet_multi.ir.Plan``).
        x: the input, in the consumer's representation.
        apply: ``apply(node, *inputs)``, the consumer's primitive for one node.
        taps: a dict to fill with every ``plan.tap_names`` entry, or None.
        run_block: ``run_block(block, x) -> y`` to run a block another way (a backend calls its
            registered block module, so hooks and module surgery take effect); default: ``run_part``.
        run_stage: ``run_stage(stage, x) -> y`` to run a whole stage another way when no taps are
            asked for (a backend calls its stage container, ``model.layer4``, so hooks on it fire).
    Returns:
        The model's output: the logits, the last feature map, or a list of the ``out_indices``
        stage outputs.
    """
    x = run_part(plan.stem, x, apply, taps)
    features = []
    for stage in plan.stages:
        flat = any(block.is_flat for block in stage.blocks)
        if run_stage is not None and taps is None and not flat:
            x = run_stage(stage, x)
            features.append(x)
            continue
        for block in stage.blocks:
            if run_block is None or block.is_flat:  # a flat block's modules sit on the model itself
                x = run_part(block, x, apply, taps)
            else:
                x = run_block(block, x)
                if taps is not None:
                    for value, tap in block.taps:  # run as a unit, a block can publish only its output
                        if value != block.output:
                            raise ValueError(f"plan error: block {block.name} taps the inner value {value!r}")
                        taps[tap] = x
        if taps is not None:
            taps[stage.name] = x
        features.append(x)
    if plan.neck is not None:
        x = run_part(plan.neck, x, apply, taps)
    if plan.head is not None:
        return run_part(plan.head, x, apply, taps)
    if plan.out_indices is not None:
        return [features[i] for i in plan.out_indices]
    return x


def stage_container(stage: Stage, name_of: Callable[[str], str] = str) -> tuple[int, str] | None:
    """``(i, container)``: the stage's blocks from ``i`` on are the direct children of module path
    ``container`` (the stage's name, as ``name_of`` spells module paths), in order, so calling a
    sequential container there runs them; the blocks before ``i`` run before it (DenseNet: the
    transition, ``features.transition1``, then ``features.denseblock2``'s layers). None when the
    stage's last block is not such a child."""
    container = name_of(stage.name)
    i = len(stage.blocks)
    while i > 0 and name_of(stage.blocks[i - 1].name).rpartition(".")[0] == container:
        i -= 1
    return (i, container) if i < len(stage.blocks) else None


def run_stage_via_container(stage: Stage, x: Any, split: tuple[tuple[Part, ...], Any] | None,
                            run_block: Callable, call: Callable) -> Any:
    """Run one stage the way its reference model does: ``split`` is ``(blocks before the
    container, container path)`` (from ``stage_container``), each block before it by
    ``run_block(block, x)``, then the container by ``call(path, x)``; with no split, every block."""
    before, path = split if split is not None else (stage.blocks, None)
    for block in before:
        x = run_block(block, x)
    return x if path is None else call(path, x)
