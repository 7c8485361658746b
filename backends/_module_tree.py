"""The module tree that the torch and Paddle backends share, written once.

A model is a tree of the framework's modules at the plan's module paths (torchvision's
``layer3.4.conv2``, or a naming scheme of ``plan.aliases``): numbered children sit in the
framework's Sequential (``model.layer1[0]`` works), others in a plain container; a stage's
blocks sit in its Sequential (``model.layer4``), which the forward pass calls. Modules are
looked up by path at call time, never through references kept at build time, so module surgery
(``model.layer1[0].bn1 = nn.Identity()``) takes effect.

What differs per framework is a tiny ``Adapter``; the module factories and primitives come
from the backend's ``ops.OPS`` table. No framework is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from resnet_multi import plan as P
from resnet_multi.walk import stage_container


@dataclass(frozen=True)
class Adapter:
    """How one framework holds child modules: ``children(module)`` (its dict of children by
    name), ``add_child(module, name, child)``, the ``sequential`` and plain ``container``
    classes (called with no arguments), and how a module holds a parameter of its own
    (``ir.PARAMETER_OPS``: torchvision's ``layer_scale``, HorNet's ``gamma1``)."""

    children: Callable[[Any], Mapping[str, Any]]
    add_child: Callable[[Any, str, Any], None]
    sequential: Callable[[], Any]
    container: Callable[[], Any]
    add_parameter: Callable[[Any, str, tuple], None]
    """``add_parameter(module, name, shape)``: a new parameter of the framework on ``module``."""
    parameter: Callable[[Any, str], Any]
    """``parameter(module, name)``: that parameter, looked up now."""


def attach(adapter: Adapter, root, dotted: str, module) -> None:
    """Register ``module`` at ``dotted`` below ``root`` (e.g. "conv1.0", "downsample.1",
    "layer1.0"), making containers: Sequential where children are numbered, plain otherwise."""
    *parents, leaf = dotted.split(".")
    for i, part in enumerate(parents):
        if part not in adapter.children(root):
            numbered = (parents + [leaf])[i + 1].isdigit()
            adapter.add_child(root, part, adapter.sequential() if numbered else adapter.container())
        root = adapter.children(root)[part]
    adapter.add_child(root, leaf, module)


def call(adapter: Adapter, root, path: tuple, x):
    """Call the module at ``path`` below ``root``, looked up now (so surgery takes effect)."""
    module = root
    for part in path:
        module = adapter.children(module)[part]
    return module(x)


def module_key(op) -> str:
    """The plan's module path of an op that is a module or a named parameterless op, or the
    parameter name of a parameter op, else ""."""
    return op.name if isinstance(op, P.MODULE_OPS + P.PARAMETER_OPS) else P.module_name(op)


def _module_at(adapter: Adapter, root, path: tuple):
    module = root
    for part in path:
        module = adapter.children(module)[part]
    return module


def add_parameter(adapter: Adapter, root, dotted: str, shape: tuple) -> None:
    """A parameter of ``shape`` at ``dotted`` below ``root``, on the module that holds it (made as
    a plain container when the path has none yet)."""
    *parents, leaf = dotted.split(".")
    module = root
    for part in parents:
        if part not in adapter.children(module):
            adapter.add_child(module, part, adapter.container())
        module = adapter.children(module)[part]
    adapter.add_parameter(module, leaf, tuple(shape))


def register_part(adapter: Adapter, runner, part: P.Part, ops: Mapping, names: Mapping[str, str]) -> dict:
    """Register ``part``'s modules, and its named parameterless ops' modules, on ``runner`` in
    execution order (so a container such as ResNet-D's ``downsample`` runs them in order when
    called), each made by ``ops[type(op)].module(op, callers)``.

    ``names``: a naming scheme (``plan.aliases[scheme]``, canonical paths otherwise). A named
    parameterless op whose name there is "" gets no module (it runs as a function).

    Returns:
        ``{plan module path: path tuple below runner}``: a module called again (a block's relu)
        is registered once.
    """
    prefix = (names[part.name] + "." if part.name in names else part.prefix) if part.prefix else ""
    callers = part.named_functions
    paths: dict[str, tuple] = {}
    for node in part.nodes:
        op = node.op
        name = module_key(op)
        native = names.get(name, name)
        if not native or name in paths:  # a function, or a module called again
            continue
        if not native.startswith(prefix):
            raise ValueError(f"plan aliases: {native!r} is not inside {prefix!r}")
        local = native[len(prefix):]
        if isinstance(op, P.PARAMETER_OPS):
            add_parameter(adapter, runner, local, _parameter_shape(op))
        else:
            attach(adapter, runner, local, ops[type(op)].module(op, callers.get(name, (node,))))
        paths[name] = tuple(local.split("."))
    return paths


def run_node(adapter: Adapter, runner, paths: Mapping[str, tuple], ops: Mapping, node: P.Node, *inputs):
    """Run one node: call its registered module if it has one, else the op's primitive. The
    ``ops`` table is the only dispatch."""
    op = node.op
    entry = ops.get(type(op))
    if entry is None:
        raise TypeError(f"no primitive for plan op {op!r}")
    name = module_key(op)
    path = paths.get(name) if name else None
    if path is not None and isinstance(op, P.PARAMETER_OPS):  # the parameter, looked up now
        return entry.apply(node, *inputs, adapter.parameter(_module_at(adapter, runner, path[:-1]), path[-1]))
    if path is not None:
        return call(adapter, runner, path, inputs[0])
    return entry.apply(node, *inputs)


def _parameter_shape(op) -> tuple:
    """The shape of a parameter op's parameter (canonical: the reference's own)."""
    if isinstance(op, P.LayerScale):
        return op.shape
    return (op.channels, op.height, op.width, 2)  # GlobalFilter: a complex weight as (..., 2) reals


def build_tree(adapter: Adapter, model, plan: P.Plan, ops: Mapping, names: Mapping[str, str],
               make_block: Callable[[P.Part], Any]) -> tuple[dict, dict, dict]:
    """Register the whole plan on ``model``: the stem's, neck's and head's modules on the model
    itself, every block (``make_block(block)``) at its path, a stage's blocks in its Sequential
    (torchvision's ``layer1``, PaddleClas' ``db_conv_2``), which the forward pass calls so hooks
    on it fire and ``model.layer4(x)`` works.

    Returns:
        ``(paths, stages, blocks)``: the model's own module paths (``register_part``); per stage
        with a container ``(blocks before it, container path)``; every block's path tuple.
    """
    paths = register_part(adapter, model, plan.stem, ops, names)
    stages = {}
    for stage in plan.stages:
        split = stage_container(stage, lambda name: names.get(name, name))
        for i, block in enumerate(stage.blocks):
            if block.is_flat:  # its modules sit on the model itself (a VGG stage's features.N)
                paths.update(register_part(adapter, model, block, ops, names))
                continue
            if split is not None and i == split[0]:
                attach(adapter, model, split[1], adapter.sequential())
            attach(adapter, model, names.get(block.name, block.name), make_block(block))
        if split is not None:
            stages[stage.name] = (stage.blocks[:split[0]], tuple(split[1].split(".")))
    for part in plan.flat_parts[1:]:  # neck, head
        paths.update(register_part(adapter, model, part, ops, names))
    blocks = {block.name: tuple(names.get(block.name, block.name).split("."))
              for stage in plan.stages for block in stage.blocks if not block.is_flat}
    return paths, stages, blocks
