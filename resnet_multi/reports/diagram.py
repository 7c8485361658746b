"""The architecture diagram of a spec: stem, stages, blocks (repeated blocks collapsed), their
output shapes, parameter counts, shortcut kinds, head and feature-pyramid outputs.

Everything drawn is read from the plan: the convolutions and linears are its op objects (their
fields give kernel, width, groups), a block's shortcut is found in its part graph, the parameter
counts are its parts' parameters, the shapes are traced. Module names are only printed, never
parsed. Needs matplotlib (``pip install 'resnet_multi[plot]'``); no framework is imported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .. import plan as P
from . import canvas

def _count(n: int) -> str:
    """A parameter count as a reader takes it in: 9,408 / 215.8 k / 25.56 M."""
    if n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} k"
    return f"{n / 1e6:.2f} M"


def _chw(shape) -> str:
    return "\u00d7".join(str(v) for v in tuple(shape)[1:])


def _depthwise(conv: P.Conv) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _conv_text(conv: P.Conv) -> str:
    """'k x k, out' of a conv, with its groups; 'k x k dw' for a depthwise conv."""
    k = f"{conv.kernel_size}\u00d7{conv.kernel_size}"
    if _depthwise(conv):
        return f"{k} dw"
    return f"{k}, {conv.out_channels}" + (f", {conv.groups} groups" if conv.groups > 1 else "")


def _op_text(op) -> str:
    if isinstance(op, P.Conv):
        return f"{'dw' if _depthwise(op) else 'conv'} {op.kernel_size}\u00d7{op.kernel_size}"
    if isinstance(op, P.BatchNorm):
        return "BN"
    if isinstance(op, (P.AvgPool, P.MaxPool)):
        return "pool"
    return type(op).__name__.lower()


def _read_block(block: P.Part) -> tuple[list, bool, str, int]:
    """(main-path convs, has squeeze-excite, shortcut, residual adds) of a block, read from its
    graph alone.

    The merge is the node the output comes from (past a final activation). An Add is residual:
    its input with the shortest path from the block's input is the shortcut, ``identity`` when
    that is the input itself, else ``projection: <ops>``. When that input is itself a residual
    Add (HorNet's block: ``x + gnconv(...)``, then ``+ mlp(...)``), the block has residuals in
    series, read the same way down to the input: ``identity ×2``. A Concat of the input
    is DenseNet's ``concatenation``; anything else (a DenseNet transition) has no shortcut,
    ``none``.
    Squeeze-excite is the gate a Mul takes as its second input, back to its global pool (a Mul
    of two maps, HorNet's gnconv, is not one).
    """
    made_by = {node.output: node for node in block.nodes}

    def first_path(value: str) -> list:
        ops = []
        while value != P.INPUT:
            node = made_by[value]
            ops.append(node.op)
            value = node.inputs[0]
        return ops[::-1]

    excite = []
    for node in block.nodes:
        if isinstance(node.op, P.Mul):
            value, gate_path = node.inputs[1], []
            while value in made_by:
                gate = made_by[value]
                gate_path.append(gate.op)
                if isinstance(gate.op, P.GlobalAvgPool):  # a gate from pooled features: squeeze-excite
                    excite += gate_path
                    break
                value = gate.inputs[0]
    merge = made_by.get(block.output)
    while merge is not None and isinstance(merge.op, P.Act):
        merge = made_by.get(merge.inputs[0])
    skip: list = []
    residuals = 0
    while merge is not None and isinstance(merge.op, P.Add):
        residuals += 1
        inner = [made_by[v] for v in merge.inputs if v in made_by and isinstance(made_by[v].op, P.Add)]
        if P.INPUT not in merge.inputs and inner:  # the trunk runs through an earlier residual
            merge = inner[0]
            continue
        skip = min((first_path(v) for v in merge.inputs), key=len)
        break
    if residuals:
        shortcut = "projection: " + " + ".join(_op_text(op) for op in skip) if skip else "identity"
        if residuals > 1:
            shortcut += f" \u00d7{residuals}"
    elif merge is not None and isinstance(merge.op, P.Concat) and P.INPUT in merge.inputs:
        shortcut = "concatenation"
    else:
        shortcut = "none"
    aside = {id(op) for op in skip + excite}
    convs = [op for op in block.ops if isinstance(op, P.Conv) and id(op) not in aside]
    return convs, bool(excite), shortcut, residuals


def _stride(before, after) -> int:
    if len(before) < 4 or len(after) < 4 or after[2] < 1:
        return 1
    return max(1, round(before[2] / after[2]))



class _Row:
    """One box of the diagram: a title, a detail line, an output shape, a parameter count."""

    def __init__(self, kind, title, detail, shape, params, shortcut=None, stage=None, varying=False, residuals=0):
        self.kind, self.title, self.detail, self.shape = kind, title, detail, shape
        self.params, self.shortcut, self.stage = params, shortcut, stage
        self.residuals = residuals  # residual adds in series in each block (HorNet: 2), one arc each
        self.varying = varying  # a collapsed run whose blocks differ in width: params are the run's total


def _diagram_rows(spec, input_shape):
    """The boxes of the diagram, from the plan's parts, their ops and parameters, and the summary."""
    from ..plan import make_plan
    from ..summary import summary, trainable_count

    plan = make_plan(spec)
    table = {row.name: row for row in summary(spec, input_shape=input_shape).rows}  # checks input_shape
    shapes = plan.shapes(input_shape)

    rows = [_Row("input", "input", f"{input_shape[1]} channel{'s' * (input_shape[1] != 1)}", tuple(input_shape), 0)]
    stem_shape = shapes["stem"]
    down = _stride(input_shape, stem_shape)
    convs = " \u2192 ".join(_conv_text(op) for op in plan.stem.ops if isinstance(op, P.Conv))
    rows.append(_Row("stem", "stem", f"conv {convs}" + (f"  (total stride {down})" if down > 1 else ""),
                     stem_shape, table["stem"].params))
    previous = stem_shape
    for stage in plan.stages:
        groups: list[list] = []
        for block in stage.blocks:
            out = shapes[block.name]
            stride = _stride(previous, out)
            convs, excite, kind, residuals = _read_block(block)
            detail = "conv " + " \u2192 ".join(_conv_text(op) for op in convs) + (" + SE" if excite else "")
            if any(isinstance(op, P.GlobalFilter) for op in block.ops):
                detail += " + global filter"  # HorNet's FFT filter beside its 3x3 dw half
            signature = (detail, kind, block.in_channels, block.out_channels, tuple(out), stride,
                         trainable_count(plan, block))
            # the same layers at other input widths (DenseNet's layers each see more channels): the same
            # convolutions (kernels, widths, groups), squeeze-excite and shortcut; only in_channels differ
            shape_key = (detail, kind, stride, tuple(out[2:]))
            if groups and groups[-1][0] == signature:
                groups[-1][1].append(block.name)
            elif groups and groups[-1][2] == shape_key:
                groups[-1][1].append(block.name)
                groups[-1][3] = True  # widths vary: sum the parameters below
                groups[-1][4] += signature[-1]
            else:
                # residuals: the same for every block of a group, since kind (in both keys) spells their count
                groups.append([signature, [block.name], shape_key, False, signature[-1], residuals])
            previous = out
        for signature, members, _, varying, total, residuals in groups:
            detail, kind, _, _, out, stride, n = signature
            title = members[0] if len(members) == 1 else f"{members[0]} \u2026 {members[-1]}  \u00d7{len(members)}"
            if len(title) > 40 and all(m.startswith(stage.name + ".") for m in members):  # long module paths
                short = [m[len(stage.name) + 1:] for m in members]
                title = short[0] if len(short) == 1 else f"{short[0]} \u2026 {short[-1]}  \u00d7{len(short)}"
            if varying:
                detail += " \u2026 (widths grow)"
            if stride > 1:
                kind += f", stride {stride}"
            rows.append(_Row("block", title, detail, out, total if varying else n, shortcut=kind, stage=stage.name,
                             varying=varying, residuals=residuals))
    if plan.neck is not None:  # after the stages, before any head (DenseNet's norm5, GhostNet's last conv)
        detail = " \u2192 ".join(f"conv {_conv_text(op)}" if isinstance(op, P.Conv) else _op_text(op)
                                  for op in plan.neck.modules)
        neck_shape = _neck_shape(plan, input_shape, shapes)
        rows.append(_Row("neck", "neck", detail, neck_shape, table["neck"].params))
    if plan.head is not None:
        parts = []
        head_convs = any(isinstance(op, P.Conv) for op in plan.head.ops)
        for op in plan.head.ops:  # in order: the pool, any conv (GhostNet's conv_head), the linears
            if isinstance(op, P.GlobalAvgPool):  # with its width, unless a conv follows to say it
                width = shapes["pre_logits"][1] if "pre_logits" in shapes and not head_convs else None
                parts.append("global average pool" + (f" \u2192 {width}" if width else ""))
            elif isinstance(op, P.Conv):
                parts.append(f"conv {op.kernel_size}\u00d7{op.kernel_size} {op.in_channels} \u2192 {op.out_channels}")
            elif isinstance(op, P.Linear):
                parts.append(f"fc {op.in_features} \u2192 {op.out_features}")
        head_shape = shapes.get("logits", shapes.get("pre_logits"))
        rows.append(_Row("head", "head", " \u2192 ".join(parts) if parts else "", head_shape, table["head"].params))
    return plan, rows, table


def _neck_shape(plan, input_shape, shapes):
    """The neck's output shape: the model's output without a head; with one, the last stage's
    shape at the neck's last conv width (a neck keeps the spatial size)."""
    if plan.head is None:
        return shapes[plan.output_names()[0]]
    last = shapes[plan.stages[-1].name] if plan.stages else shapes["stem"]
    convs = [op for op in plan.neck.modules if isinstance(op, P.Conv)]
    return (last[0], convs[-1].out_channels if convs else last[1], *last[2:])


def drawn_parameters(rows) -> int:
    """The parameters the diagram shows in all: each box's count, times its blocks for a collapsed run of
    identical blocks (a run whose widths vary shows its total)."""
    total = 0
    for row in rows:
        repeat = 1
        if row.kind == "block" and not row.varying and "\u00d7" in row.title:
            repeat = int(row.title.rsplit("\u00d7", 1)[1])
        total += row.params * repeat
    return total


def diagram_figure(spec, input_shape=None):
    """The matplotlib Figure of ``diagram``."""
    canvas.require_matplotlib()
    from matplotlib.patches import FancyBboxPatch

    from ..zoo import resolve_spec

    spec = resolve_spec(spec)
    if input_shape is None:
        input_shape = (1, spec.in_channels, 224, 224)
    input_shape = tuple(int(v) for v in input_shape)
    plan, rows, table = _diagram_rows(spec, input_shape)
    stage_names = [stage.name for stage in plan.stages]
    if plan.out_indices is not None:
        outputs = {stage_names[i]: f"feature output {k} (out_indices[{k}] = {i})"
                   for k, i in enumerate(plan.out_indices)}
    elif plan.head is not None or plan.neck is not None:  # drawn at the head's or the neck's box
        outputs = {}
    else:
        outputs = {stage_names[-1]: "output"}

    box_h, stage_head, gap, stage_gap = 0.56, 0.34, 0.16, 0.2
    # the boxes; the shortcut arcs sit left of them, the outputs right. A box is as wide as its
    # longest detail line (8 pt text: about 0.062 inch a character), 6 to 7 inches.
    longest = max(len(row.detail) + (len(row.shortcut) + 16 if row.kind == "block" else 0) for row in rows)
    left, right = 1.0, max(7.0, 1.3 + 0.062 * longest)  # as wide as its text (GhostNet: 8.8)
    width = right + (3.8 if plan.out_indices is not None else 3.0)  # room for the feature-output labels
    # vertical layout first, to size the figure
    y = 0.95
    layout = []
    current = None
    for row in rows:
        if row.stage != current and row.stage is not None:
            y += stage_gap + stage_head
        elif row.stage is None and current is not None:
            y += stage_gap
        current = row.stage
        layout.append((row, y))
        y += box_h + gap
    height = y + 0.3

    total = sum(math.prod(i.shape) for i in plan.params.values() if not i.is_buffer)
    macs = sum(r.macs for r in table.values())
    with canvas.style():
        fig = canvas.new_figure((width, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")
        ax.text(0.25, 0.3, f"{spec.name}", fontsize=12, weight="bold", va="center")
        ax.text(0.25, 0.62, f"input {'x'.join(map(str, input_shape))} (N\u00d7C\u00d7H\u00d7W); {_count(total)} "
                            f"parameters, {macs / 1e9:.2f} G multiply-accumulates; shapes below are C\u00d7H\u00d7W",
                fontsize=8.5, color="0.3", va="center")

        fills = {"input": "#f2f2f2", "stem": "#dbe9f6", "block": "#ffffff", "head": "#e3f1df",
                 "neck": "#dbe9f6"}
        # stage frames
        by_stage: dict[str, list[float]] = {}
        for row, top in layout:
            if row.stage is not None:
                by_stage.setdefault(row.stage, []).append(top)
        for name, tops in by_stage.items():
            top, bottom = min(tops) - stage_head, max(tops) + box_h
            ax.add_patch(FancyBboxPatch((0.3, top - 0.04), right + 0.25 - 0.3, bottom - top + 0.1,
                                        boxstyle="round,pad=0,rounding_size=0.08", fc="#f7f4ec", ec="#b8a77a",
                                        lw=1.0, zorder=0))
            summary_row = table.get(name)
            y_text = top + stage_head / 2 - 0.02
            ax.text(0.45, y_text, name, fontsize=9.5, weight="bold", color="#6b5a2a", va="center")
            if summary_row is not None:
                ax.text(right + 0.1, y_text, f"out {_chw(summary_row.output_shape)}   {_count(summary_row.params)} "
                        f"params   {summary_row.macs / 1e9:.2f} G MACs", fontsize=8.5, color="#6b5a2a",
                        va="center", ha="right")
            if name in outputs:
                y_mid = (top + bottom) / 2
                shape = summary_row.output_shape if summary_row is not None else None
                ax.annotate("", xy=(right + 0.85, y_mid), xytext=(right + 0.25, y_mid),
                            arrowprops=dict(arrowstyle="-|>", color="#2f6f3e", lw=1.6))
                ax.text(right + 0.92, y_mid, f"{outputs[name]}\n{_chw(shape) if shape else ''}", fontsize=8.5,
                        color="#2f6f3e", va="center", ha="left", gid="feature-output")

        previous_bottom = None
        x_flow = left + 1.6  # between a stage's name (left) and its figures (right)
        for row, top in layout:
            ax.add_patch(FancyBboxPatch((left, top), right - left, box_h, boxstyle="round,pad=0,rounding_size=0.06",
                                        fc=fills[row.kind], ec="0.45", lw=0.9, zorder=2))
            if previous_bottom is not None:
                ax.annotate("", xy=(x_flow, top), xytext=(x_flow, previous_bottom),
                            arrowprops=dict(arrowstyle="-|>", color="0.45", lw=0.9, shrinkA=0, shrinkB=0), zorder=1)
            previous_bottom = top + box_h
            shape = _chw(row.shape) if row.kind != "head" or len(row.shape) > 2 else str(row.shape[-1])
            ax.text(left + 0.12, top + 0.17, row.title, fontsize=9, weight="bold", va="center", zorder=3)
            each = " in all" if row.varying else " each" if "\u00d7" in row.title else ""
            ax.text(right - 0.12, top + 0.17, shape + (f"   {_count(row.params)} params{each}" if row.params else ""),
                    fontsize=8.5, ha="right", va="center", zorder=3)
            skip = f"shortcut {row.shortcut}".replace("shortcut none", "no shortcut")
            detail = row.detail if row.kind != "block" else f"{row.detail}   \u2502   {skip}"
            ax.text(left + 0.12, top + 0.4, detail, fontsize=8, color="0.25", va="center", zorder=3,
                    gid="shortcut" if row.kind == "block" else None)
            if row.kind == "block" and not row.shortcut.startswith("none"):  # the skip connections
                projection = row.shortcut.startswith("projection")
                color = "#c0392b" if projection else "0.55"
                x_arc = left - 0.28
                count = max(row.residuals, 1)  # HorNet: one arc per residual, stacked
                span = (box_h - 0.16) / count
                for k in range(count):
                    start, end = top + 0.08 + k * span, top + 0.08 + (k + 1) * span
                    ax.plot([left, x_arc, x_arc, left], [start, start, end, end],
                            color=color, lw=1.4 if projection else 1.0, zorder=1, gid="residual")
                    ax.annotate("", xy=(left, end), xytext=(left - 0.12, end),
                                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0, shrinkA=0, shrinkB=0))
                if projection:
                    ax.add_patch(FancyBboxPatch((x_arc - 0.05, top + box_h / 2 - 0.05), 0.1, 0.1,
                                                boxstyle="square,pad=0", fc=color, ec=color, zorder=2))
            if (row.kind == "head" or (row.kind == "neck" and plan.head is None)) and not outputs:  # what it returns
                y_mid = top + box_h / 2
                ax.annotate("", xy=(right + 0.85, y_mid), xytext=(right, y_mid),
                            arrowprops=dict(arrowstyle="-|>", color="#2f6f3e", lw=1.6))
                ax.text(right + 0.92, y_mid, f"{'logits' if row.kind == 'head' else 'output'}\n{shape}", fontsize=8.5,
                        color="#2f6f3e", va="center")
        legend_y = height - 0.18
        ax.plot([0.3, 0.6], [legend_y, legend_y], color="0.55", lw=1.0)
        dense = any(row.shortcut == "concatenation" for row in rows)
        ax.text(0.68, legend_y, "identity or concatenation" if dense else "identity shortcut", fontsize=7.5,
                va="center", color="0.3")
        ax.plot([2.6, 2.9], [legend_y, legend_y], color="#c0392b", lw=1.4)
        ax.add_patch(FancyBboxPatch((2.7, legend_y - 0.05), 0.1, 0.1, boxstyle="square,pad=0", fc="#c0392b",
                                    ec="#c0392b"))
        ax.text(2.98, legend_y, "projection shortcut (convolutions on the skip path)", fontsize=7.5,
                va="center", color="0.3")
    return fig


def diagram(spec, path: str | os.PathLike, *, input_shape=None) -> Path:
    """Draw the architecture of a spec: stem, stages and blocks with their output shapes and
    parameter counts, shortcut kinds, head and feature-pyramid outputs.

    Drawn from the plan alone (no framework imported). Consecutive blocks of a stage that are
    the same (same convolutions, shortcut, shapes and parameter count) are drawn as one box
    "layer3.1 ... layer3.35 x35", so resnet18 and resnet152 both fit on a page.

    Args:
        spec: a ResNetSpec, preset name or spec file.
        path: the file to write; .png, .svg or .pdf.
        input_shape: NCHW used for the shapes; default (1, in_channels, 224, 224).
    Returns:
        The path written.
    Example:
        >>> rm.diagram("resnet50", "resnet50.svg", input_shape=(1, 3, 224, 224))
        PosixPath('resnet50.svg')
    """
    canvas.figure_format(path)
    return canvas.save(diagram_figure(spec, input_shape), path)
