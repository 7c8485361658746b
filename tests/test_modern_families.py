"""VGG, ConvNeXt and HorNet (issue 18): the reference models' names, order, parameter counts and
logits, and parity of every backend with the oracle.

torchvision's VGG and ConvNeXt are the references for those; HorNet has no installable package, so
its official model is written below as its code writes it (``_HorNet``: gnconv, the global filter,
the two LayerNorm forms, layer scales), from the structure issue 18 records.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import resnet_multi as rm
from conftest import BACKENDS
from test_families import _changed

PARAMETERS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "hornet_tiny_7x7": 22_409_512, "hornet_tiny_gf": 22_991_848, "hornet_small_7x7": 49_528_264,
    "hornet_small_gf": 50_401_768, "hornet_base_7x7": 87_256_680, "hornet_base_gf": 88_421_352,
}


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_presets_have_the_reference_parameter_counts(name):
    plan = rm.make_plan(rm.get_spec(name))
    assert sum(math.prod(info.shape) for info in plan.params.values() if not info.is_buffer) == PARAMETERS[name]


BAD_SPECS = [
    # gnconv splits its channels by 2 per order; the global filter then halves their sum
    (_changed("hornet_tiny_gf", {"stages.2.channels": 264}),
     "stages[2].channels: must be divisible by 2 ** order = 16 in a global-filter stage (the filter splits "
     "gnconv's 495 channels into two equal halves), got 264"),
    (_changed("hornet_tiny_gf", {"stages.3.channels": 528}),
     "stages[3].channels: must be divisible by 2 ** order = 32 in a global-filter stage"),
    (_changed("hornet_tiny_7x7", {"stages.2.channels": 260}),
     "stages[2].channels: must be divisible by 2 ** (order - 1) = 8 (gnconv halves it per order), got 260"),
    # settings these networks do not read are refused, not ignored
    (_changed("convnext_tiny", {"conv_bias": True}), "conv_bias: is fixed by a 'convnext' network"),
    (_changed("hornet_tiny_7x7", {"conv_bias": True}), "conv_bias: is fixed by a 'hornet' network"),
    (_changed("convnext_tiny", {"head.hidden_channels": 256}),
     "head.hidden_channels: is not used by a 'convnext' network (its head is a LayerNorm and one Linear)"),
    (_changed("hornet_tiny_gf", {"head.hidden_channels": 256}), "head.hidden_channels: is not used by a 'hornet' network"),
    (_changed("convnext_tiny", {"head.dropout": 0.5}),
     "head.dropout: must be 0 for a 'convnext' network (its head has no dropout), got 0.5"),
    (_changed("hornet_tiny_7x7", {"head.dropout": 0.2}), "head.dropout: must be 0 for a 'hornet' network"),
]


@pytest.mark.parametrize("data, message", BAD_SPECS, ids=[m.split(",")[0] for _, m in BAD_SPECS])
def test_invalid_spec_is_one_line_naming_the_field(data, message):
    with pytest.raises(rm.SpecError) as info:
        rm.ResNetSpec.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_width_only_the_filter_refuses_is_fine_in_a_7x7_stage():
    """264 splits into gnconv's dims (33, 66, 132, 264) but not into the filter's two halves of 495."""
    spec = rm.ResNetSpec.from_dict(_changed("hornet_tiny_7x7", {"stages.2.channels": 264}))
    assert rm.make_plan(spec).params["stages.2.0.gnconv.dwconv.weight"].shape == (495, 1, 7, 7)
    gf = rm.ResNetSpec.from_dict(_changed("hornet_tiny_gf", {"stages.2.channels": 272}))
    assert rm.make_plan(gf).params["stages.2.0.gnconv.dwconv.complex_weight"].shape == (255, 14, 8, 2)


# --------------------------------------------------------------------------- HorNet, as its official code is


class _LayerNorm(nn.Module):
    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps, self.data_format, self.normalized_shape = eps, data_format, (normalized_shape,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _GlobalLocalFilter(nn.Module):
    def __init__(self, dim, h=14, w=8):
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, kernel_size=3, padding=1, bias=False, groups=dim // 2)
        self.complex_weight = nn.Parameter(torch.randn(dim // 2, h, w, 2, dtype=torch.float32) * 0.02)
        self.pre_norm = _LayerNorm(dim, eps=1e-6, data_format="channels_first")
        self.post_norm = _LayerNorm(dim, eps=1e-6, data_format="channels_first")

    def forward(self, x):
        x = self.pre_norm(x)
        x1, x2 = torch.chunk(x, 2, dim=1)
        x1 = self.dw(x1)
        x2 = x2.to(torch.float32)
        b, c, a, bb = x2.shape
        x2 = torch.fft.rfft2(x2, dim=(2, 3), norm="ortho")
        weight = self.complex_weight
        if not weight.shape[1:3] == x2.shape[2:4]:
            weight = F.interpolate(weight.permute(3, 0, 1, 2), size=x2.shape[2:4], mode="bilinear",
                                   align_corners=True).permute(1, 2, 3, 0)
        weight = torch.view_as_complex(weight.contiguous())
        x2 = torch.fft.irfft2(x2 * weight, s=(a, bb), dim=(2, 3), norm="ortho")
        x = torch.cat([x1.unsqueeze(2), x2.unsqueeze(2)], dim=2).reshape(b, 2 * c, a, bb)
        return self.post_norm(x)


class _GnConv(nn.Module):
    def __init__(self, dim, order=5, gflayer=None, h=14, w=8, s=1.0):
        super().__init__()
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)]
        self.dims.reverse()
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        if gflayer is None:
            self.dwconv = nn.Conv2d(sum(self.dims), sum(self.dims), 7, padding=3, bias=True, groups=sum(self.dims))
        else:
            self.dwconv = gflayer(sum(self.dims), h=h, w=w)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList([nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])
        self.scale = s

    def forward(self, x):
        fused_x = self.proj_in(x)
        pwa, abc = torch.split(fused_x, (self.dims[0], sum(self.dims)), dim=1)
        dw_abc = self.dwconv(abc) * self.scale
        dw_list = torch.split(dw_abc, self.dims, dim=1)
        x = pwa * dw_list[0]
        for i in range(self.order - 1):
            x = self.pws[i](x) * dw_list[i + 1]
        return self.proj_out(x)


class _Block(nn.Module):
    def __init__(self, dim, gnconv, layer_scale_init_value=1e-6):
        super().__init__()
        self.norm1 = _LayerNorm(dim, eps=1e-6, data_format="channels_first")
        self.gnconv = gnconv(dim)
        self.norm2 = _LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = nn.Identity()

    def forward(self, x):
        b, c, h, w = x.shape
        x = x + self.drop_path(self.gamma1.view(c, 1, 1) * self.gnconv(self.norm1(x)))
        inp = x
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm2(x))))
        x = self.gamma2 * x
        x = x.permute(0, 3, 1, 2)
        return inp + self.drop_path(x)


class _HorNet(nn.Module):
    def __init__(self, depths, base_dim, gnconvs, num_classes=1000):
        super().__init__()
        dims = [base_dim, base_dim * 2, base_dim * 4, base_dim * 8]
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
                                                    _LayerNorm(dims[0], eps=1e-6, data_format="channels_first")))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(_LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                                                        nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList([nn.Sequential(*[_Block(dims[i], gnconvs[i]) for _ in range(depths[i])])
                                     for i in range(4)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x.mean([-2, -1])))


def _official_hornet(width: int, depths, gf: bool) -> _HorNet:
    def gnconv(order, h=None, w=None):
        if h is None:
            return lambda dim: _GnConv(dim, order=order, s=1 / 3)
        return lambda dim: _GnConv(dim, order=order, s=1 / 3, h=h, w=w, gflayer=_GlobalLocalFilter)

    gnconvs = [gnconv(2), gnconv(3), gnconv(4, 14, 8) if gf else gnconv(4), gnconv(5, 7, 4) if gf else gnconv(5)]
    return _HorNet(depths, width, gnconvs)


def _randomized(model: nn.Module) -> nn.Module:
    """Layer scales of O(1) and LayerNorm affines away from 1 and 0, so every branch counts."""
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma1", "gamma2", "layer_scale")) or (p.ndim == 1 and "norm" in name):
                p.uniform_(0.5, 1.5) if not name.endswith("bias") else p.uniform_(-0.5, 0.5)
            elif name.endswith("complex_weight"):
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("gf", [False, True], ids=["7x7", "gf"])
def test_hornet_is_the_official_model_by_names_order_and_logits(gf):
    """hornet_tiny's names and registration order are the official state_dict's, which loads
    strict; the logits are bit-identical at sizes where the filter's weight is resized and not."""
    spec = rm.get_spec(f"hornet_tiny_{'gf' if gf else '7x7'}")
    plan = rm.make_plan(spec)
    official = _randomized(_official_hornet(64, (2, 3, 18, 2), gf))
    state = official.state_dict()
    assert list(plan.params) == list(state)
    assert all(tuple(plan.params[k].shape) == tuple(v.shape) for k, v in state.items())
    ours = rm.build(spec, backend="torch")
    ours.load_state_dict(state, strict=True)
    for hw in ((224, 224), (97, 131)):  # at 224 stage 3's spectrum is (14, 8): no resize; at 97x131 it is
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(official(x), ours(x)), f"logits differ at {hw}"


@pytest.mark.parametrize("name", ["convnext_tiny", "vgg11_bn", "vgg13"])
def test_torchvision_state_dicts_load_strict_and_logits_are_identical(name):
    torch.manual_seed(3)
    reference = getattr(torchvision.models, name)()
    _randomized(reference)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ours = rm.build(name, backend="torch")
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(rm.make_plan(rm.get_spec(name)).params) == [k for k in reference.state_dict()
                                                            if not k.endswith("num_batches_tracked")]
    x = torch.randn(2, 3, 67, 93, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(reference(x), ours(x))


def test_vgg_out_indices_are_p2pnets_four_maps():
    """P2PNet's backbone: vgg16_bn's features[:13], [13:23], [23:33], [33:43], at strides 2..16."""
    torch.manual_seed(4)
    reference = _randomized(torchvision.models.vgg16_bn())
    spec = rm.get_spec("vgg16_bn").replace(head=None, out_indices=(0, 1, 2, 3))
    ours = rm.build(spec, backend="torch")
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    bodies = [reference.features[:13], reference.features[13:23], reference.features[23:33], reference.features[33:43]]
    with torch.no_grad():
        maps, expected = ours(x), []
        for body in bodies:
            x = body(x)
            expected.append(x)
    assert [tuple(m.shape) for m in maps] == [(1, 128, 48, 64), (1, 256, 24, 32), (1, 512, 12, 16), (1, 512, 6, 8)]
    for got, want in zip(maps, expected, strict=True):
        assert torch.equal(got, want)


# --------------------------------------------------------------------------- every backend against the oracle


def _small(name: str) -> rm.ResNetSpec:
    """The preset's structure at small widths and depths (the parity proves the ops and wiring;
    size proves nothing here)."""
    spec = rm.get_spec(name)
    data = spec.to_dict()
    if spec.block.kind == "vgg":
        data["stem"]["widths"] = [8] * len(spec.stem.widths)
        data["head"]["hidden_channels"] = 16
        for stage, width in zip(data["stages"], (8, 16, 16, 16)):
            stage["channels"] = width
    else:  # convnext, hornet: width 16 (gnconv order 5 needs a multiple of 16), one block a stage
        width = 16
        data["stem"]["widths"] = [width]
        for i, stage in enumerate(data["stages"]):
            stage["channels"], stage["depth"] = width * 2 ** i, 1
    data["head"]["num_classes"] = 10
    data["name"] = f"{name}_small"
    return rm.ResNetSpec.from_dict(data)


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg13", "convnext_tiny", "hornet_tiny_7x7", "hornet_tiny_gf"])
def test_every_backend_matches_the_oracle(name, x64):
    """At an odd size (the filter's weight resized in both filter stages), float32 and float64."""
    spec = _small(name)
    for dtype in ("float32", "float64"):
        report = rm.check_parity(spec, backends=BACKENDS, input_shape=(2, 3, 97, 75), dtype=dtype)
        assert report.ok, report.format()


# 97x75 leaves ConvNeXt a 3x2 last map: Paddle's pooling kernels once scaled its float64 gradient by
# 1/6 rounded to float32 (3e-8 relative; the backend averages float64 maps with paddle.mean now)
@pytest.mark.parametrize("name, hw", [("vgg11_bn", (97, 75)), ("convnext_tiny", (67, 45)), ("hornet_tiny_gf", (67, 45)),
                                      ("convnext_tiny", (97, 75))])
def test_training_parity_in_float64_with_drop_path_0(name, hw, x64):
    """Three SGD steps agree in every backend (float64; the layer scales and the filter are trained
    too); a positive drop-path is refused as dropout is (different masks per framework)."""
    import dataclasses

    small = _small(name)
    head = dataclasses.replace(small.head, dropout=0.0)
    spec = small.replace(head=head, block=dataclasses.replace(small.block, drop_path_rate=0.0))
    # VGG at 97x75: every BatchNorm of the small VGG sees >= 8 values per channel (check_training's floor)
    report = rm.check_training(spec, backends=BACKENDS, steps=3, dtype="float64", input_shape=(2, 3, *hw))
    assert report.ok, report.format()
    if small.block.kind != "vgg":
        with pytest.raises(ValueError, match="drop-path"):
            rm.check_training(small.replace(head=head, block=dataclasses.replace(small.block, drop_path_rate=0.2)),
                              backends=BACKENDS, steps=1, dtype="float64")


def test_paddle_vision_vgg_loads_as_it_is():
    """paddle.vision's vgg11(batch_norm=True) state_dict (Paddle's names: _mean, _variance, (in, out)
    Linears) loads into the Paddle model with set_state_dict, and the logits equal paddle.vision's."""
    import paddle
    from paddle.vision.models import vgg11

    paddle.seed(3)
    reference = vgg11(batch_norm=True)
    state = reference.state_dict()
    for key, value in state.items():  # random BN statistics and affines, so a swap shows
        if key.endswith(("_mean", "_variance")) or ".1." in key and value.ndim == 1:
            value.set_value(paddle.uniform(value.shape, min=0.5, max=1.5))
    reference.eval()
    ours = rm.build("vgg11_bn", backend="paddle")
    missing, unexpected = ours.set_state_dict(state)
    assert not missing and not unexpected
    x = paddle.randn([1, 3, 67, 93])
    with paddle.no_grad():
        np.testing.assert_array_equal(ours(x).numpy(), reference(x).numpy())
