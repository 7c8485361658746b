"""rm.adopt: hand-written models, written as their authors write them, adopted by structure and proven.

Each model is adopted live (execution order, data flow, the proof run against ours) and from its
file (registration order, shapes alone); the two must give the same weights, and the weights must
compute their model's function in the other two frameworks (``Adoption.check``). Weights are random,
BN statistics included, so a swapped or mis-paired tensor cannot hide.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch  # CI installs every backend: a missing framework must fail, not skip

import resnet_multi as rm
from _d2l import d2l_densenet, d2l_resnet18  # the textbook code, as printed
from resnet_multi.adopt import AdoptedName, AdoptError

nn, F = torch.nn, torch.nn.functional

X1 = np.random.default_rng(0).standard_normal((2, 1, 33, 47)).astype(np.float32)
X3 = np.random.default_rng(1).standard_normal((2, 3, 33, 47)).astype(np.float32)


def randomize(model, seed=0):
    """Random weights and BN statistics (variances in [0.5, 1.5]), as parity checks use."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.2)
    return model


# --------------------------------------------------------------------------- d2l.ai 8.6, as printed


# --------------------------------------------------------------------------- a 1-channel ResNet-18, 512-d head


class TwoConv(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.left(x) + self.skip(x))


class ResNet18_2D(nn.Module):
    def __init__(self, embedding=512):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(3, 2, 1))
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            setattr(self, f"stage{i + 1}", nn.Sequential(TwoConv(cin, w, 1 if i == 0 else 2), TwoConv(w, w, 1)))
            cin = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(512, embedding)

    def forward(self, x):
        x = self.pre(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.embed(torch.flatten(self.pool(x), 1))


RESNET18_2D = dataclasses.replace(rm.get_spec("resnet18"), name="resnet18_2d", in_channels=1,
                                  head=dataclasses.replace(rm.get_spec("resnet18").head, num_classes=512))

# --------------------------------------------------------------------------- ResNet-50 style, shortcut called first

SMALL = dict(stem={"widths": [16], "kernel_size": 7, "stride": 2, "pool": True},
             stages=[{"depth": 2, "channels": 16}, {"depth": 2, "channels": 32, "stride": 2}],
             head={"num_classes": 10})
BOTTLENECK = rm.ResNetSpec.from_dict({"name": "small_r50", "block": {"kind": "bottleneck"}, **SMALL})
RESNEXT = rm.ResNetSpec.from_dict({"name": "small_x", "block": {"kind": "bottleneck", "groups": 4,
                                                                "width_per_group": 8}, **SMALL})


class Bottleneck(nn.Module):  # registered as torchvision does, but the shortcut runs first
    def __init__(self, cin, mid, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, 4 * mid, 1, bias=False), nn.BatchNorm2d(4 * mid)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != 4 * mid:
            self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * mid, 1, stride, bias=False), nn.BatchNorm2d(4 * mid))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class XBlock(nn.Module):  # ResNeXt: projection registered first, each BN declared before its conv
    def __init__(self, cin, width, cout, stride, groups=4):
        super().__init__()
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.bn_a, self.conv_a = nn.BatchNorm2d(width), nn.Conv2d(cin, width, 1, bias=False)
        self.bn_b, self.conv_b = nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn_c, self.conv_c = nn.BatchNorm2d(cout), nn.Conv2d(width, cout, 1, bias=False)

    def forward(self, x):
        y = F.relu(self.bn_a(self.conv_a(x)))
        y = F.relu(self.bn_b(self.conv_b(y)))
        y = self.bn_c(self.conv_c(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


def small_net(block):
    stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    if block == "bottleneck":
        blocks = [Bottleneck(16, 16, 1), Bottleneck(64, 16, 1), Bottleneck(64, 32, 2), Bottleneck(128, 32, 1)]
    else:
        blocks = [XBlock(16, 8, 64, 1), XBlock(64, 8, 64, 1), XBlock(64, 16, 128, 2), XBlock(128, 16, 128, 1)]
    return nn.Sequential(stem, nn.Sequential(*blocks[:2]), nn.Sequential(*blocks[2:]), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 10))


# --------------------------------------------------------------------------- seed 002: ResidualLayer


class ResidualLayer(nn.Module):  # the relu module declared between the layers, and called twice
    def __init__(self, in_channels, out_channels, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class LayerNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.in_channels = 16
        self.conv = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu, self.pool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = self.make_layer(16, 1)
        self.layer2 = self.make_layer(32, 2)
        self.fc = nn.Linear(32, num_classes)

    def make_layer(self, out_channels, stride):
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(nn.Conv2d(self.in_channels, out_channels, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        layers = [ResidualLayer(self.in_channels, out_channels, stride, downsample),
                  ResidualLayer(out_channels, out_channels)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


BASIC_SMALL = rm.ResNetSpec.from_dict({"name": "small_r18", "block": {"kind": "basic"}, **SMALL})

# --------------------------------------------------------------------------- d2l.ai 8.7 DenseNet, as printed


def small_d2l_densenet():
    """The book's DenseNet at 16 stem channels, growth 8, two blocks of two layers."""
    return d2l_densenet(16, 8, (2, 2))


DENSENET = dataclasses.replace(
    rm.get_spec("d2l_densenet"), name="small_d2l_densenet",
    stem=dataclasses.replace(rm.get_spec("d2l_densenet").stem, widths=(16,)),
    block=dataclasses.replace(rm.get_spec("d2l_densenet").block, growth_rate=8),
    stages=(rm.StageSpec(depth=2, stride=1), rm.StageSpec(depth=2, stride=2)))

CASES = {  # name: (their model, spec, input)
    "d2l_resnet18": (d2l_resnet18, "d2l_resnet18", X1),
    "resnet18_2d": (ResNet18_2D, RESNET18_2D, X1),
    "bottleneck_shortcut_first": (lambda: small_net("bottleneck"), BOTTLENECK, X3),
    "resnext_bn_first": (lambda: small_net("resnext"), RESNEXT, X3),
    "d2l_densenet": (small_d2l_densenet, DENSENET, X1),
    "residual_layer": (LayerNet, BASIC_SMALL, X3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adopted_live_and_from_file_proven_in_every_framework(case, tmp_path):
    make, spec, x = CASES[case]
    theirs = randomize(make())
    adoption = rm.adopt(theirs, spec, example_input=x)
    assert adoption.report.ok, str(adoption.report)
    assert len(adoption.report.taps) >= 3 and "logits" in adoption.report.taps
    assert theirs.training  # their model's mode is left as it was
    torch.save(theirs.state_dict(), tmp_path / "theirs.pth")
    from_file = rm.adopt(tmp_path / "theirs.pth", spec)
    assert from_file.report.ok is None and "proves nothing" in str(from_file.report)
    assert list(from_file.weights) == list(adoption.weights)
    for name, value in adoption.weights.items():
        assert np.array_equal(from_file.weights[name], value), name
    other = adoption.check(("paddle", "flax"))  # their function, in the other two frameworks
    assert other.ok and other.backends == ("paddle", "flax"), str(other)


def test_the_order_decides_only_where_shapes_cannot():
    # conv3 and the projection of layer1.0 have one shape: the live run's data flow tells them apart (the
    # shortcut runs first); the file's registration order is read as the plan's, and the report says so
    theirs = randomize(small_net("bottleneck"))
    live = rm.adopt(theirs, BOTTLENECK, example_input=X3)
    assert live.names["1.0.downsample.0.weight"].canonical == "layer1.0.downsample.0.weight"
    assert live.names["1.0.conv3.weight"].canonical == "layer1.0.conv3.weight"
    from_dict = rm.adopt(theirs.state_dict(), BOTTLENECK)
    assert any(a.startswith("layer1.0:") for a in from_dict.report.assumptions)


def test_the_module_tree_decides_where_shapes_and_order_would_not():
    block = Bottleneck(16, 16, 1)  # conv3 and the projection: both (64, 16, 1, 1)
    conv3, bn3 = block.conv3, block.bn3
    del block.conv3, block.bn3
    block.conv3, block.bn3 = conv3, bn3  # now registered after the projection
    net = randomize(nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1), block, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(64, 10)))
    assert [name for name, _ in block.named_children()][-3:] == ["downsample", "conv3", "bn3"]
    spec = dataclasses.replace(BOTTLENECK, stages=(dataclasses.replace(BOTTLENECK.stages[0], depth=1),))
    from_file = rm.adopt(net.state_dict(), spec)
    assert from_file.names["4.downsample.0.weight"].canonical == "layer1.0.downsample.0.weight"
    assert from_file.names["4.conv3.weight"].canonical == "layer1.0.conv3.weight"
    assert any("module tree decided" in a for a in from_file.report.assumptions), from_file.report.assumptions
    live = rm.adopt(net, spec, example_input=X3)
    assert live.report.ok and live.weights.keys() == from_file.weights.keys()


def test_a_wrapped_checkpoint_saved_in_any_format_reads_back_without_a_map(tmp_path):
    theirs = randomize(ResNet18_2D())
    wrapped = {"model": {"backbone." + name: t for name, t in theirs.state_dict().items()}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    adoption = rm.adopt(tmp_path / "wrapped.pth", RESNET18_2D)
    assert adoption.names["backbone.embed.weight"] == rm.adopt(wrapped, RESNET18_2D).names["backbone.embed.weight"]
    assert adoption.names["backbone.embed.weight"].canonical == "fc.weight"
    assert "backbone.pre.1.num_batches_tracked" not in adoption.names
    for suffix in (".safetensors", ".pdparams"):
        path = adoption.save(tmp_path / f"net{suffix}")
        model = rm.build(RESNET18_2D, backend="torch", weights=path)
        expected = theirs.eval()(torch.from_numpy(X1)).detach().numpy()
        # the float32 parity bound of docs/NUMERICS.md (same torch kernels on both sides)
        np.testing.assert_allclose(rm.forward(model, X1), expected, rtol=1e-5, atol=1e-6)
    assert rm.load_weights(tmp_path / "net.safetensors")[1] == RESNET18_2D  # the spec is inside


def test_paddle_d2l_resnet18_live_and_from_its_file(tmp_path):
    import paddle
    pnn, PF = paddle.nn, paddle.nn.functional

    class PResidual(pnn.Layer):  # d2l.ai's Paddle code
        def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            self.conv1 = pnn.Conv2D(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
            self.conv2 = pnn.Conv2D(num_channels, num_channels, kernel_size=3, padding=1)
            self.conv3 = pnn.Conv2D(input_channels, num_channels, 1, stride=strides) if use_1x1conv else None
            self.bn1 = pnn.BatchNorm2D(num_channels, momentum=0.8, epsilon=1e-5)
            self.bn2 = pnn.BatchNorm2D(num_channels, momentum=0.8, epsilon=1e-5)

        def forward(self, X):
            Y = PF.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            return PF.relu(Y + X)

    def block(cin, cout, n, first=False):
        return [PResidual(cin, cout, True, 2) if i == 0 and not first else PResidual(cout, cout) for i in range(n)]

    net = pnn.Sequential(
        pnn.Sequential(pnn.Conv2D(1, 64, 7, stride=2, padding=3), pnn.BatchNorm2D(64), pnn.ReLU(),
                       pnn.MaxPool2D(3, 2, 1)),
        pnn.Sequential(*block(64, 64, 2, True)), pnn.Sequential(*block(64, 128, 2)),
        pnn.Sequential(*block(128, 256, 2)), pnn.Sequential(*block(256, 512, 2)),
        pnn.AdaptiveAvgPool2D((1, 1)), pnn.Flatten(), pnn.Linear(512, 10))
    rng = np.random.default_rng(2)
    for name, p in net.state_dict().items():
        values = rng.random(p.shape) + 0.5 if name.endswith("_variance") else rng.standard_normal(p.shape) * 0.2
        p.set_value(values.astype("float32"))
    adoption = rm.adopt(net, "d2l_resnet18", example_input=X1)
    assert adoption.report.ok and adoption.report.backends == ("paddle",), adoption.report
    assert adoption.names["7.weight"] == AdoptedName("fc.weight", "linear_weight", "(in, out) -> (out, in)")
    paddle.save(net.state_dict(), str(tmp_path / "net.pdparams"))
    from_file = rm.adopt(tmp_path / "net.pdparams", "d2l_resnet18")
    assert from_file.names["1.0.bn1._variance"].canonical == "layer1.0.bn1.running_var"  # the file's own names
    assert from_file.names["7.weight"] == adoption.names["7.weight"]
    for name, value in adoption.weights.items():
        assert np.array_equal(from_file.weights[name], value), name
    assert adoption.check(("torch", "flax")).ok


def test_a_flax_nnx_model_live():
    import jax
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, cin, cout, stride, rngs):
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs)
            self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, use_bias=False, rngs=rngs)
            self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
            self.down = nnx.data(None)
            if stride != 1 or cin != cout:
                self.down = nnx.Sequential(nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs),
                                           nnx.BatchNorm(cout, rngs=rngs))

        def __call__(self, x):
            y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
            return nnx.relu(y + (x if self.down is None else self.down(x)))

    class Net(nnx.Module):  # NHWC, as Flax models are
        def __init__(self, rngs):
            self.fc = nnx.Linear(32, 10, rngs=rngs)  # declared first: the execution order decides
            self.stem = nnx.Conv(3, 16, (7, 7), strides=2, padding=3, use_bias=False, rngs=rngs)
            self.stem_bn = nnx.BatchNorm(16, rngs=rngs)
            self.blocks = nnx.List([Block(16, 16, 1, rngs), Block(16, 32, 2, rngs)])

        def __call__(self, x):
            x = nnx.relu(self.stem_bn(self.stem(x)))
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            for block in self.blocks:
                x = block(x)
            return self.fc(x.mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    rng = np.random.default_rng(3)

    def random(path, v):
        is_var = any(str(getattr(k, "key", k)) == "var" for k in path)
        return (rng.random(v.shape) + 0.5 if is_var else rng.standard_normal(v.shape) * 0.2).astype(np.float32)

    nnx.update(net, jax.tree_util.tree_map_with_path(random, nnx.state(net)))
    spec = dataclasses.replace(BASIC_SMALL, stages=tuple(dataclasses.replace(s, depth=1) for s in BASIC_SMALL.stages))
    adoption = rm.adopt(net, spec, example_input=X3)
    assert adoption.report.ok and "layer2.0" in adoption.report.taps, str(adoption.report)
    assert adoption.names["stem.kernel"] == AdoptedName("conv1.weight", "conv_weight", "HWIO -> OIHW")
    assert not net.stem_bn.use_running_average  # their model's mode is left as it was
    assert adoption.check(("torch", "paddle")).ok


# --------------------------------------------------------------------------- caught, and named


def test_a_changed_stride_is_found_by_the_proof():
    theirs = randomize(d2l_resnet18(stem_stride=1))
    report = rm.adopt(theirs, "d2l_resnet18", example_input=X1).report
    assert not report.ok and report.first_divergence.tap == "stem"


def test_a_missing_relu_is_found_by_the_proof():
    theirs = randomize(d2l_resnet18())
    theirs[3][1].forward = lambda X, blk=theirs[3][1]: blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(X))))) + X
    report = rm.adopt(theirs, "d2l_resnet18", example_input=X1).report
    assert not report.ok and report.first_divergence.tap == "layer3.1", report


def test_a_swapped_mean_and_variance_is_refused_naming_the_tensor():
    state = randomize(d2l_resnet18()).state_dict()
    mean, var = "2.0.bn1.running_mean", "2.0.bn1.running_var"
    state[mean], state[var] = state[var], state[mean]  # a porting bug: the means have negative values
    with pytest.raises(AdoptError, match=r"2\.0\.bn1\.running_var .*layer2\.0\.bn1\.running_var.*swapped"):
        rm.adopt(state, "d2l_resnet18")


def test_where_the_structures_part_ways_is_shown_with_both_names_and_shapes():
    state = randomize(d2l_resnet18()).state_dict()
    no_bias = dataclasses.replace(rm.get_spec("d2l_resnet18"), conv_bias=False)
    stem = (r"part ways in stem: their #0 0\.0\.weight \(conv; conv_weight \(64, 1, 7, 7\), conv_bias \(64,\)\) "
            r"where the plan has #0 conv1 \(conv; conv_weight \(64, 1, 7, 7\)\)")
    with pytest.raises(AdoptError, match=stem):
        rm.adopt(state, no_bias)
    state.pop("4.1.conv2.bias")
    no_bias_here = (r"layer4\.1: their #\d+ 4\.1\.conv2\.weight .*where the plan has #\d+ layer4\.1\.conv2 "
                    r"\(conv; conv_weight \(512, 512, 3, 3\), conv_bias \(512,\)\)")
    with pytest.raises(AdoptError, match=no_bias_here):
        rm.adopt(state, "d2l_resnet18")
    spec = dataclasses.replace(rm.get_spec("d2l_resnet18"), stages=rm.get_spec("d2l_resnet18").stages[:3])
    extra_stage = (r"part ways in head: their #28 4\.0\.conv1\.weight .*\(512, 256, 3, 3\).* "
                   r"where the plan has #28 fc \(linear; linear_weight \(10, 256\)")
    with pytest.raises(AdoptError, match=extra_stage):
        rm.adopt(randomize(d2l_resnet18()).state_dict(), spec)


def test_files_without_registration_order_and_inputs_without_a_model_are_refused(tmp_path):
    rm.save_weights(tmp_path / "w.safetensors", rm.export_weights(rm.build("d2l_resnet18")), spec="d2l_resnet18")
    with pytest.raises(AdoptError, match=r"w\.safetensors: .*sorted.*adopt the live model"):
        rm.adopt(tmp_path / "w.safetensors", "d2l_resnet18")
    with pytest.raises(ValueError, match="example_input needs a live model"):
        rm.adopt(randomize(d2l_resnet18()).state_dict(), "d2l_resnet18", example_input=X1)


def test_cli_adopt_writes_the_weights_and_the_map(tmp_path, capsys):
    from resnet_multi.cli import main

    theirs = randomize(d2l_resnet18())
    torch.save(theirs.state_dict(), tmp_path / "their.pth")
    out, mapping = tmp_path / "net.safetensors", tmp_path / "map.json"
    assert main(["adopt", str(tmp_path / "their.pth"), "--spec", "d2l_resnet18", "-o", str(out),
                 "--map", str(mapping), "--show"]) == 0
    assert "1.0.conv1.weight" in capsys.readouterr().out
    assert json.loads(mapping.read_text())["7.weight"]["canonical"] == "fc.weight"
    weights, spec = rm.load_weights(out)
    assert spec.name == "d2l_resnet18" and len(weights) == len(rm.make_plan(spec).params)
    assert main(["adopt", str(tmp_path / "their.pth"), "--spec", "resnet18", "-o", str(tmp_path / "x.pth")]) == 1
    assert "part ways in stem" in capsys.readouterr().err and not (tmp_path / "x.pth").exists()
    with pytest.raises(SystemExit) as exit_code:
        main(["adopt", "--help"])
    assert exit_code.value.code == 0 and "--map" in capsys.readouterr().out
