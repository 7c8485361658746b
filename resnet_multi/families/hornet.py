"""The HorNet family: the official HorNet's ``hornet_{tiny,small,base}_{7x7,gf}`` (seed 002 carries it
as a YOLO backbone), whose block is a recursive gated convolution (``gnconv``).

Names are the official code's: ``downsample_layers.{i}.{0,1}`` (the stem is ``downsample_layers.0``),
``stages.{s}.{b}.{gamma1, gamma2, norm1, norm2, pwconv1, pwconv2}``,
``stages.{s}.{b}.gnconv.{proj_in, dwconv, pws.{k}, proj_out}`` (with the global filter,
``gnconv.dwconv.{complex_weight, dw, pre_norm, post_norm}``), ``norm``, ``head``.

A block: ``x = x + drop_path(gamma1 * gnconv(norm1(x)))``, then ``x = x + drop_path(gamma2 *
pwconv2(gelu(pwconv1(norm2(x)))))``; ``norm1`` and the filter's norms are HorNet's written-out
channels-first LayerNorm, ``norm2`` and ``norm`` are ``F.layer_norm`` (channels-last), which is why
the two LayerNorm forms exist (``ir.LAYER_NORM_FORMS``).
"""

from __future__ import annotations

from ..ir import INPUT, Act, Add, DropPath, GlobalAvgPool, GraphBuilder, Interleave, Mul, Part, Scale, Slice, Stage
from ..spec import BlockFamily, ResNetSpec, check, check_positive_int
from .layers import ParamBuilder, check_patchify_network

KINDS = ("hornet",)
"""hornet: HorNet blocks (gnconv with a depthwise 7x7 or a global filter, then an MLP; layer scale)."""
GNCONV_SCALE = 1.0 / 3.0
"""``s`` of every gnconv: the depthwise branch is multiplied by it (the official presets' 1/3)."""
TRUNC_NORMAL = ("trunc_normal", 0.02)

def validate(spec: ResNetSpec) -> None:
    """A HorNet's settings: a patchify stem, stages of ``depth`` blocks of ``channels`` with a gnconv
    of ``order`` (>= 1) and, optionally, a ``global_filter`` of (h, w). gnconv's ``dims`` are
    ``channels // 2**i`` for i < order, so ``channels`` must be divisible by ``2**(order - 1)``; the
    global filter splits their sum, ``channels * (2 - 2**(1 - order))``, into two equal halves, which
    needs ``channels`` divisible by ``2**order``."""
    check_patchify_network(spec, "hornet", ("depth", "channels", "order"))
    for i, stage in enumerate(spec.stages):
        p = f"stages[{i}]"
        check(stage.channels % 2 ** (stage.order - 1) == 0, f"{p}.channels",
              f"must be divisible by 2 ** (order - 1) = {2 ** (stage.order - 1)} (gnconv halves it per order)",
              stage.channels)
        if stage.global_filter is not None:
            total = sum(stage.channels // 2 ** k for k in range(stage.order))
            check(stage.channels % 2 ** stage.order == 0, f"{p}.channels",
                  f"must be divisible by 2 ** order = {2 ** stage.order} in a global-filter stage (the filter "
                  f"splits gnconv's {total} channels into two equal halves)", stage.channels)
            check(isinstance(stage.global_filter, tuple) and len(stage.global_filter) == 2, f"{p}.global_filter",
                  "must be [h, w], the size of the filter's weight", stage.global_filter)
            for k, size in enumerate(stage.global_filter):
                check_positive_int(size, f"{p}.global_filter[{k}]")


def _init(spec: ResNetSpec):
    return TRUNC_NORMAL if spec.init.conv == "trunc_normal" else None


def _gnconv(b: ParamBuilder, g: GraphBuilder, name: str, x: str, c: int, order: int, gf) -> str:
    """The official ``gnconv`` on value ``x`` (its parameters in the official registration order)."""
    spec, init = b.spec, _init(b.spec)
    dims = [c // 2 ** i for i in range(order)][::-1]
    total = sum(dims)
    proj_in = b.conv(f"{name}.proj_in", c, 2 * c, 1, bias=True, init=init)
    if gf is None:
        spatial = [b.conv(f"{name}.dwconv", total, total, 7, groups=total, bias=True, init=init)]
    else:  # GlobalLocalFilter: complex_weight, dw, pre_norm, post_norm (registration order)
        half = total // 2
        filt = b.global_filter(f"{name}.dwconv.complex_weight", half, *gf)
        dw = b.conv(f"{name}.dwconv.dw", half, half, 3, groups=half, bias=False, init=init)
        pre = b.layer_norm(f"{name}.dwconv.pre_norm", total, spec.norm.eps, form="explicit")
        post = b.layer_norm(f"{name}.dwconv.post_norm", total, spec.norm.eps, form="explicit")
    proj_out = b.conv(f"{name}.proj_out", c, c, 1, bias=True, init=init)
    pws = [b.conv(f"{name}.pws.{i}", dims[i], dims[i + 1], 1, bias=True, init=init) for i in range(order - 1)]

    fused = g.add(proj_in, x)
    pwa = g.add(Slice(0, dims[0]), fused)
    abc = g.add(Slice(dims[0], dims[0] + total), fused)
    if gf is None:
        dw_abc = g.chain(spatial, abc)
    else:
        normed = g.add(pre, abc)
        local = g.chain([Slice(0, half), dw], normed)
        global_ = g.chain([Slice(half, total), filt], normed)
        dw_abc = g.add(post, g.add(Interleave(), local, global_))
    dw_abc = g.add(Scale(GNCONV_SCALE), dw_abc)
    starts = [sum(dims[:i]) for i in range(order)]
    dw_list = [g.add(Slice(start, start + d), dw_abc) for start, d in zip(starts, dims)]
    out = g.add(Mul(), pwa, dw_list[0])
    for i in range(order - 1):
        out = g.add(Mul(), g.add(pws[i], out), dw_list[i + 1])
    return g.add(proj_out, out)


def _block(b: ParamBuilder, name: str, c: int, order: int, gf, drop_rate: float) -> Part:
    spec, init = b.spec, _init(b.spec)
    eps, scale = spec.norm.eps, spec.block.layer_scale
    g = GraphBuilder(name, name + ".", c)
    # the block's own parameters first, as in the official state_dict
    gammas = [[b.layer_scale(f"{name}.gamma{k}", (c,), scale)] if scale else [] for k in (1, 2)]
    norm1 = b.layer_norm(f"{name}.norm1", c, eps, form="explicit")
    mixed = _gnconv(b, g, f"{name}.gnconv", g.add(norm1, INPUT), c, order, gf)
    drop_path = DropPath(f"{name}.drop_path", drop_rate)  # one module, called after each branch
    x = g.add(Add(), INPUT, g.chain([*gammas[0], drop_path], mixed))
    mlp = g.chain([b.layer_norm(f"{name}.norm2", c, eps),
                   b.channel_linear(f"{name}.pwconv1", c, 4 * c, init or ("uniform", (1.0 / c) ** 0.5)),
                   Act("gelu", f"{name}.act"),
                   b.channel_linear(f"{name}.pwconv2", 4 * c, c, init or ("uniform", (1.0 / (4 * c)) ** 0.5)),
                   *gammas[1], drop_path], x)
    out = g.add(Add(), x, mlp)
    return g.part(out, c, ((out, name),))


def build(b: ParamBuilder):
    spec, init = b.spec, _init(b.spec)
    eps = spec.norm.eps
    width = spec.stem.widths[0]
    # every downsample layer's parameters come before the stages' in the official state_dict
    stem_ops = [b.conv("downsample_layers.0.0", spec.in_channels, width, spec.stem.kernel_size, spec.stem.stride,
                       bias=True, padding=0, init=init),
                b.layer_norm("downsample_layers.0.1", width, eps, form="explicit")]
    downsamples, c = {}, width
    for s, st in enumerate(spec.stages[1:], start=1):
        downsamples[s] = [b.layer_norm(f"downsample_layers.{s}.0", c, eps, form="explicit"),
                          b.conv(f"downsample_layers.{s}.1", c, st.channels, 2, 2, bias=True, padding=0, init=init)]
        c = st.channels

    g = GraphBuilder("stem", "", spec.in_channels)
    out = g.chain(stem_ops)
    stem = g.part(out, width, ((out, "stem"),))
    total = sum(st.depth for st in spec.stages)
    rates = [spec.block.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # linspace
    c, block_id, stages = width, 0, []
    for s, st in enumerate(spec.stages):
        parts = []
        if s > 0:
            name = f"downsample_layers.{s}"
            g = GraphBuilder(name, name + ".", c)
            out = g.chain(downsamples[s])
            parts.append(g.part(out, st.channels, ((out, name),)))
            c = st.channels
        for j in range(st.depth):
            parts.append(_block(b, f"stages.{s}.{j}", c, st.order, st.global_filter, rates[block_id]))
            block_id += 1
        stages.append(Stage(f"stages.{s}", tuple(parts)))

    head = None
    if spec.head is not None:
        g = GraphBuilder("head", "", c)
        pooled = g.chain([GlobalAvgPool(flatten=True), b.layer_norm("norm", c, eps)])
        logits = g.add(b.linear("head", c, spec.head.num_classes, init=init), pooled)
        head = g.part(logits, spec.head.num_classes, ((pooled, "pre_logits"), (logits, "logits")))
    return stem, tuple(stages), None, head


FAMILY = BlockFamily(
    name="hornet", kinds=KINDS, block_fields=("drop_path_rate", "layer_scale"),
    stage_fields=("depth", "channels", "stride", "order", "global_filter"), spec_fields=(),
    validate=validate, build=build)
