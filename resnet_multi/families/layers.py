"""What block families share: the parameter-table builder (every conv, BN and linear a family
creates is named and initialised here, so names exist in one place), and the layer recipes more
than one family uses (a one-conv stem, squeeze-excite, the classifier head). timm's layer
factories play this part for its byobnet."""

from __future__ import annotations

import math

from ..ir import (
    SHAPE_RULES,
    Act,
    BatchNorm,
    ChannelLinear,
    Conv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalFilter,
    GraphBuilder,
    LayerNorm,
    LayerScale,
    Linear,
    MaxPool,
    Mul,
    ParamInfo,
    Part,
)
from ..spec import ResNetSpec, check, check_positive_int, is_number, make_divisible


def conv_init(spec: ResNetSpec, shape: tuple[int, ...]) -> tuple[str, float]:
    """The init of a conv weight of ``shape`` (OIHW) under ``spec.init.conv``."""
    out_c, in_c_per_group, kh, kw = shape
    receptive = kh * kw
    scheme = spec.init.conv
    if scheme == "kaiming_normal_fan_out":  # torchvision / timm
        return ("normal", math.sqrt(2.0 / (out_c * receptive)))
    if scheme == "kaiming_normal_fan_in":  # Paddle's KaimingNormal (PaddleOCR ResNet45)
        return ("normal", math.sqrt(2.0 / (in_c_per_group * receptive)))
    # torch's default reset_parameters: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +)
    return ("uniform", 1.0 / math.sqrt(in_c_per_group * receptive))


class ParamBuilder:
    """Makes the ops that own parameters and collects the canonical parameter table as it goes,
    with the spec's numerics (BN eps and momentum, conv bias, init)."""

    def __init__(self, spec: ResNetSpec):
        self.spec = spec
        self.params: dict[str, ParamInfo] = {}
        self.aliases: dict[str, dict[str, str]] = {}
        self.param_aliases: dict[str, dict[str, str]] = {}
        self.alias_shapes: dict[str, dict[str, str]] = {}

    def alias(self, scheme: str, canonical: str, other: str) -> None:
        """Module ``canonical`` is called ``other`` in naming ``scheme`` (see ``Plan.aliases``)."""
        self.aliases.setdefault(scheme, {})[canonical] = other

    def param_alias(self, scheme: str, canonical: str, other: str) -> None:
        """Parameter ``canonical`` (its whole name) is called ``other`` in naming ``scheme``, where
        renaming its module is not enough (see ``Plan.param_aliases``)."""
        assert canonical in self.params, canonical
        self.param_aliases.setdefault(scheme, {})[canonical] = other

    def alias_shape(self, scheme: str, role: str, rule: str) -> None:
        """Naming ``scheme`` stores the parameters of ``role`` as ``rule`` says (``ir.SHAPE_RULES``;
        see ``Plan.alias_shapes``)."""
        assert rule in SHAPE_RULES, rule
        self.alias_shapes.setdefault(scheme, {})[role] = rule

    def _add(self, name, shape, role, init):
        assert name not in self.params, name
        self.params[name] = ParamInfo(name, tuple(shape), role, init)

    def conv(self, name, in_c, out_c, k, stride=1, dilation=1, groups=1, bias=None, padding=None,
             init=None) -> Conv:
        """A conv and its parameters; ``padding`` None is 'same'-style for odd kernels; ``init``
        None is the spec's conv init."""
        bias = self.spec.conv_bias if bias is None else bias
        shape = (out_c, in_c // groups, k, k)
        self._add(f"{name}.weight", shape, "conv_weight", conv_init(self.spec, shape) if init is None else init)
        if bias:
            fan_in = (in_c // groups) * k * k
            init = ("uniform", 1.0 / math.sqrt(fan_in)) if self.spec.init.conv == "torch_default" else ("zeros", 0.0)
            self._add(f"{name}.bias", (out_c,), "conv_bias", init)
        if padding is None:  # 'same'-style symmetric padding for odd kernels, scaled by dilation
            padding = dilation * (k - 1) // 2
        return Conv(name, in_c, out_c, k, stride, padding, dilation, groups, bias)

    def bn(self, name, channels, zero_init=False) -> BatchNorm:
        self._add(f"{name}.weight", (channels,), "bn_weight", ("zeros" if zero_init else "ones", 0.0))
        self._add(f"{name}.bias", (channels,), "bn_bias", ("zeros", 0.0))
        self._add(f"{name}.running_mean", (channels,), "bn_mean", ("zeros", 0.0))
        self._add(f"{name}.running_var", (channels,), "bn_var", ("ones", 0.0))
        norm = self.spec.norm
        return BatchNorm(name, channels, float(norm.eps), float(norm.momentum), norm.running_var)

    def linear(self, name, in_f, out_f, init=None) -> Linear:
        """A linear layer; ``init`` None is torch's nn.Linear default (and ``init.linear_bias``),
        otherwise the weight's init, with a zero bias."""
        bound = 1.0 / math.sqrt(in_f)  # torch's nn.Linear default
        self._add(f"{name}.weight", (out_f, in_f), "linear_weight", ("uniform", bound) if init is None else init)
        bias_init = ("zeros", 0.0) if self.spec.init.linear_bias == "zeros" or init else ("uniform", bound)
        self._add(f"{name}.bias", (out_f,), "linear_bias", bias_init)
        return Linear(name, in_f, out_f)

    def layer_norm(self, name, channels, eps, form="fused") -> LayerNorm:
        self._add(f"{name}.weight", (channels,), "ln_weight", ("ones", 0.0))
        self._add(f"{name}.bias", (channels,), "ln_bias", ("zeros", 0.0))
        return LayerNorm(name, channels, float(eps), form)

    def channel_linear(self, name, in_f, out_f, init) -> ChannelLinear:
        self._add(f"{name}.weight", (out_f, in_f), "linear_weight", init)
        self._add(f"{name}.bias", (out_f,), "linear_bias", ("zeros", 0.0))
        return ChannelLinear(name, in_f, out_f)

    def layer_scale(self, name, shape, value) -> LayerScale:
        """A per-channel scale parameter called ``name`` (its whole name), initialised to ``value``."""
        self._add(name, shape, "layer_scale", ("constant", float(value)))
        return LayerScale(name, tuple(shape))

    def global_filter(self, name, channels, h, w, init=("trunc_normal", 0.02)) -> GlobalFilter:
        """HorNet's global filter and its complex weight, a parameter called ``name``."""
        self._add(name, (channels, h, w, 2), "complex_weight", init)
        return GlobalFilter(name, channels, h, w)

    def squeeze_excite(self, g: GraphBuilder, name: str, x: str, channels: int, gate: str = "sigmoid",
                       names: tuple[str, str] = ("fc1", "fc2"), reduced: int | None = None) -> str:
        """timm's SE on value ``x``: global mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) ->
        gate -> scale ``x``. Reduced channels: ``reduced``, by default timm's
        make_divisible(channels * se_ratio)."""
        if reduced is None:
            reduced = make_divisible(channels * self.spec.block.se_ratio)
        s = g.chain([GlobalAvgPool(flatten=False), self.conv(f"{name}.{names[0]}", channels, reduced, 1, bias=True),
                     Act("relu"), self.conv(f"{name}.{names[1]}", reduced, channels, 1, bias=True), Act(gate)], x)
        return g.add(Mul(), x, s)


def single_conv_stem(b: ParamBuilder, conv: str, bn: str, relu: str, pool: str = "") -> Part:
    """One conv (the spec's stem kernel and stride) + BN + ReLU [+ 3x3/2 max-pool], modules named
    ``conv``/``bn``/``relu``/``pool``."""
    spec = b.spec
    width = spec.stem.widths[0]
    g = GraphBuilder("stem", "", spec.in_channels)
    ops = [b.conv(conv, spec.in_channels, width, spec.stem.kernel_size, spec.stem.stride), b.bn(bn, width),
           Act("relu", relu)]
    if spec.stem.pool:
        ops.append(MaxPool(kernel_size=3, stride=2, padding=1, name=pool))
    out = g.chain(ops)
    return g.part(out, width, ((out, "stem"),))


def classifier_head(b: ParamBuilder, in_c: int, classifier: str = "fc", pool: str = "avgpool", act: str = "") -> Part:
    """Global average pool (module ``pool``; "": functional), [``conv_head`` 1x1 conv with bias +
    ReLU (module ``act``) to ``head.hidden_channels`` (timm's GhostNet/MobileNetV3 head)],
    flatten, optional dropout, then the ``classifier``."""
    head = b.spec.head
    g = GraphBuilder("head", "", in_c)
    if head.hidden_channels is None:
        ops = [GlobalAvgPool(flatten=False, name=pool), Flatten()] if pool else [GlobalAvgPool(flatten=True)]
        pooled = g.chain(ops)
    else:
        pooled = g.chain([GlobalAvgPool(flatten=False, name=pool),
                          b.conv("conv_head", in_c, head.hidden_channels, 1, bias=True), Act("relu", act), Flatten()])
        in_c = head.hidden_channels
    x = g.add(Dropout("dropout", float(head.dropout)), pooled) if head.dropout > 0 else pooled
    logits = g.add(b.linear(classifier, in_c, head.num_classes), x)
    return g.part(logits, head.num_classes, ((pooled, "pre_logits"), (logits, "logits")))


def check_patchify_network(spec: ResNetSpec, kind: str, stage_fields: tuple[str, ...] = ("depth", "channels")) -> None:
    """What ConvNeXt and HorNet ask of a spec alike: stochastic depth and layer scale settings, a
    patchify stem (kernel = stride, no pool) as wide as the first stage, ``stage_fields`` set on
    every stage, stride 1 for the first stage and 2 (a 2x2/2 downsample) for the others; and the
    settings they do not read left at their defaults (``conv_bias``; the head's ``hidden_channels``
    and ``dropout``)."""
    block = spec.block
    check(is_number(block.drop_path_rate) and 0.0 <= block.drop_path_rate < 1.0, "block.drop_path_rate",
          "must be a number in [0, 1)", block.drop_path_rate)
    check(is_number(block.layer_scale) and block.layer_scale >= 0, "block.layer_scale",
          "must be a number >= 0 (0: no layer scale)", block.layer_scale)
    check(spec.stem.kernel_size == spec.stem.stride, "stem.kernel_size",
          f"must equal stem.stride ({spec.stem.stride}) for {kind!r} blocks (a patchify stem)", spec.stem.kernel_size)
    check(spec.stem.pool is False, "stem.pool", f"must be false for {kind!r} blocks", spec.stem.pool)
    for i, stage in enumerate(spec.stages):
        p = f"stages[{i}]"
        for name in stage_fields:
            check(getattr(stage, name) is not None, f"{p}.{name}", f"is required for {kind!r} blocks",
                  getattr(stage, name))
            check_positive_int(getattr(stage, name), f"{p}.{name}")
        check(stage.stride == (1 if i == 0 else 2), f"{p}.stride",
              f"must be 1 for the first {kind!r} stage and 2 for the others (a 2x2/2 downsample)", stage.stride)
    check(spec.stages[0].channels == spec.stem.widths[0], "stages[0].channels",
          f"must equal stem.widths[0] ({spec.stem.widths[0]}) for {kind!r} blocks (no downsample before it)",
          spec.stages[0].channels)
    # settings these networks do not read: refused, not ignored
    check(spec.conv_bias is False, "conv_bias",
          f"is fixed by a {kind!r} network (which convs have a bias is the reference's); leave it out", spec.conv_bias)
    if spec.head is not None:
        check(spec.head.hidden_channels is None, "head.hidden_channels",
              f"is not used by a {kind!r} network (its head is a LayerNorm and one Linear); leave it out",
              spec.head.hidden_channels)
        check(spec.head.dropout == 0, "head.dropout", f"must be 0 for a {kind!r} network (its head has no dropout)",
              spec.head.dropout)
