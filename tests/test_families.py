"""DenseNet and GhostNet: the presets are torchvision's, paddle.vision's and timm's networks.

What is checked here is what only these families have; the registry-driven tests (parity
matrix, conversion chains, infer_spec, summary, fast path, export) run every preset, these
included.

- parameter counts are the reference libraries' (measured in torchvision 0.29 / timm 1.0);
- the torch model's state_dict IS the reference model's: it loads into torchvision's / timm's
  model with strict=True both ways, and both compute the same logits at an odd input size;
- torchvision's legacy DenseNet keys (``norm.1``/``conv.2``) load, as torchvision's own loader
  accepts them;
- paddle.vision's densenet121 ``.pdparams`` (PaddleClas names) is read as it is;
- the d2l textbook DenseNet has the textbook's shapes;
- a Ghost module's concat + slice to an odd width is timm's (timm rounds widths to multiples of
  4, so its own presets never slice; the reference here is timm's GhostNet with rounding off);
- a dense block's ``drop_rate`` is torchvision's dropout: the same features dropped for one
  seed, each framework's inverted dropout in train mode, nothing in eval mode;
- the DenseNet presets start their classifier bias at zero, as torchvision does;
- invalid family specs raise SpecErrors naming the field.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import BACKENDS, assert_close, assert_weights_equal, idioms, odd_input

import resnet_multi as rm
from resnet_multi import plan as P
from resnet_multi.cli import main
from resnet_multi.inference import fold_batchnorm, kept_batchnorms
from resnet_multi.weights import random_weights

PARAMS = {  # trainable values (BN running statistics excluded), as torch's sum(p.numel())
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "d2l_densenet": 758_226,  # the d2l chapter's model, rebuilt in torch and counted
    "ghostnet_050": 2_587_292,
    "ghostnet_100": 5_182_508,
    "ghostnet_130": 7_358_820,
}
REFERENCE_LIBRARY = {name: ("timm" if name.startswith("ghostnet") else "torchvision")
                     for name in PARAMS if name != "d2l_densenet"}


def reference_model(name: str):
    """The reference library's own model, randomly initialised (no download), eval mode."""
    if REFERENCE_LIBRARY[name] == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision

    return torchvision.models.get_model(name, weights=None).eval()


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_count(name):
    assert rm.summary(name).total_params == PARAMS[name]


@pytest.mark.slow  # full size: the reference library's own model
@pytest.mark.parametrize("name", REFERENCE_LIBRARY)
def test_torch_model_is_the_reference_model(name):
    """Same names and shapes both ways (strict loads), same logits for the same weights."""
    import torch

    spec = rm.get_spec(name)
    weights = random_weights(rm.make_plan(spec), seed=0)  # random BN statistics
    ours = rm.build(spec, backend="torch", weights=weights)
    reference = reference_model(name)
    reference.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = odd_input(spec)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(rm.forward(ours, x), expected, name)


def _legacy_keys(state_dict) -> dict:
    """torchvision's pre-0.4 DenseNet key form (``denselayer1.norm.1.weight``), which its
    checkpoint files still use; those files have no num_batches_tracked."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(.*)$")
    return {pattern.sub(r"\1.\2.\3", k): v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.slow  # full size: torchvision's densenet121 file, its spec inferred from it
def test_legacy_densenet_keys_load_everywhere(tmp_path):
    import torch

    spec = rm.get_spec("densenet121")
    weights = random_weights(rm.make_plan(spec), seed=1)
    legacy = _legacy_keys(rm.build(spec, backend="torch", weights=weights).state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    fresh = rm.build(spec, backend="torch")
    fresh.load_state_dict(legacy, strict=True)  # as torchvision's loader accepts them
    assert_weights_equal(rm.export_weights(fresh), weights)
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    for backend in BACKENDS:
        assert_weights_equal(rm.export_weights(rm.build("densenet121", backend=backend, weights=path)), weights)
    rm.convert(path, tmp_path / "w.safetensors")  # no spec: inferred from the legacy names
    converted, stored = rm.load_weights(tmp_path / "w.safetensors")
    assert stored.name == "densenet121"
    assert_weights_equal(converted, weights)


@pytest.mark.slow  # full size: paddle.vision's own densenet121
def test_paddle_vision_densenet121_file_is_read_as_it_is(tmp_path, capsys):
    import paddle
    from paddle.vision.models import densenet121

    spec = rm.get_spec("densenet121")
    weights = random_weights(rm.make_plan(spec), seed=2)
    ours = rm.build(spec, backend="paddle", weights=weights)
    peer = densenet121()
    peer.eval()
    assert sorted(ours.state_dict()) == sorted(peer.state_dict())  # PaddleClas names, nothing else
    missing, unexpected = peer.set_state_dict(ours.state_dict())
    assert not missing and not unexpected
    path = tmp_path / "DenseNet121_pretrained.pdparams"
    paddle.save(peer.state_dict(), str(path))
    x = odd_input(spec)
    expected = peer(paddle.to_tensor(x)).numpy()
    for backend in BACKENDS:
        assert_close(rm.forward(rm.build("densenet121", backend=backend, weights=path), x), expected, backend)
    assert main(["inspect", str(path)]) == 0
    assert re.search(r"preset\s+densenet121\b", capsys.readouterr().out)
    # to torchvision's file and back: each framework's own model loads what convert writes
    import torch
    import torchvision

    rm.convert(path, tmp_path / "w.pth")  # spec inferred from the PaddleClas names
    torchvision.models.densenet121(weights=None).load_state_dict(torch.load(tmp_path / "w.pth"), strict=True)
    rm.convert(tmp_path / "w.pth", tmp_path / "back.pdparams")
    fresh = densenet121()
    missing, unexpected = fresh.set_state_dict(paddle.load(str(tmp_path / "back.pdparams")))
    assert not missing and not unexpected
    assert_weights_equal({k: v.numpy() for k, v in fresh.state_dict().items()},
                         {k: v.numpy() for k, v in peer.state_dict().items()})


@pytest.mark.parametrize("backend", BACKENDS)
def test_d2l_densenet_shapes(backend):
    """The chapter's figures at 1x1x96x96: 192x24x24 after block 0, 248x3x3 after block 3."""
    spec = rm.get_spec("d2l_densenet").replace(head=None, out_indices=(0, 3))
    x = np.random.default_rng(0).standard_normal((1, 1, 96, 96)).astype(np.float32)
    first, last = rm.forward(rm.build(spec, backend=backend), x)
    assert first.shape == (1, 192, 24, 24) and last.shape == (1, 248, 3, 3)
    assert rm.summary("d2l_densenet", (1, 1, 96, 96)).rows[-1].output_shape == (1, 10)


# GhostNet cfgs with odd widths (k, mid, out, se, stride): ghost modules whose concat is sliced
ODD_GHOST_CFGS = [[[3, 7, 5, 0.25, 2]], [[5, 9, 5, 0, 1], [3, 13, 11, 0.25, 1]]]


def odd_ghost_spec() -> rm.ResNetSpec:
    stages = tuple(rm.StageSpec(blocks=tuple(rm.BlockSettings(channels=c, mid_channels=e, kernel_size=k, stride=s,
                                                               se_ratio=float(se)) for k, e, c, se, s in cfg))
                   for cfg in ODD_GHOST_CFGS)
    return rm.ResNetSpec(name="odd_ghost", stages=stages, block=rm.BlockSpec(kind="ghost"),
                         stem=rm.StemSpec(widths=(16,), kernel_size=3, stride=2, pool=False),
                         head=rm.HeadSpec(num_classes=3, dropout=0.2, hidden_channels=1280),
                         init=rm.InitSpec(conv="torch_default"))


def test_ghost_slice_to_odd_width_is_timms(monkeypatch):
    import torch
    from timm.models import ghostnet

    # timm rounds every width to a multiple of 4; with rounding off, its GhostNet slices.
    monkeypatch.setattr(ghostnet, "make_divisible", lambda v, divisor=8, **kwargs: int(v))
    reference = ghostnet.GhostNet(ODD_GHOST_CFGS, num_classes=3).eval()
    spec = odd_ghost_spec()
    weights = random_weights(rm.make_plan(spec), seed=3)
    ours = rm.build(spec, backend="torch", weights=weights)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = odd_input(spec)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(rm.forward(ours, x), expected, "odd ghost")
    report = rm.check_parity(spec, backends=BACKENDS, weights=weights, inputs=x)
    assert report.ok, "\n" + str(report)


def _exact_hard_sigmoid():
    """relu6(x + 3) / 6 as a torch module (torch is imported inside the tests)."""
    import torch

    class ExactHardSigmoid(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu6(x + 3.0) / 6.0

    return ExactHardSigmoid()


def test_ghost_in_place_add_on_a_slice_trains_like_timm(monkeypatch):
    """The residual add writes into the sliced concat in place (as timm's `x += shortcut`): the
    float64 train-mode gradients and BN statistics must still be timm's."""
    import torch
    from timm.models import ghostnet

    monkeypatch.setattr(ghostnet, "make_divisible", lambda v, divisor=8, **kwargs: int(v))
    spec = odd_ghost_spec()
    plan = rm.make_plan(spec)
    adds = [n for stage in plan.stages for block in stage.blocks for n in block.nodes if n.op == P.Add()]
    assert adds and all(n.inplace for n in adds)
    assert any(isinstance(n.op, P.Slice) for stage in plan.stages for block in stage.blocks for n in block.nodes)
    weights = random_weights(plan, seed=4)
    ours = rm.build(spec, backend="torch", weights=weights, dtype="float64").train()
    # timm's head dropout is functional (drop_rate); ours is an nn.Dropout, put in eval below
    reference = ghostnet.GhostNet(ODD_GHOST_CFGS, num_classes=3, drop_rate=0.0).double().train()
    # timm's SE gate is nn.Hardsigmoid, whose backward multiplies by a float32 1/6 even in
    # float64; ours computes relu6(x + 3) / 6 (docs/NUMERICS.md): give timm the exact gate
    for module in reference.modules():
        if hasattr(module, "gate") and isinstance(module.gate, torch.nn.Hardsigmoid):
            module.gate = _exact_hard_sigmoid()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.from_numpy(odd_input(spec).astype(np.float64))
    for model in (ours, reference):
        model.apply(lambda m: m.eval() if isinstance(m, torch.nn.Dropout) else None)
        (model(x) ** 2).sum().backward()
    # float64, the same torch ops in the same order: measured bit-equal. 1e-12 leaves room only
    # for a summation-order change inside torch, far below any real difference (>= 1e-8)
    theirs = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad.numpy(), theirs[name].grad.numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    their_state = reference.state_dict()
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value.numpy(), their_state[name].numpy(), rtol=1e-12, err_msg=name)


# --------------------------------------------------------------------------- custom specs


def _changed(preset: str, changes: dict) -> dict:
    """The preset's spec as a dict with each dotted path (``stages.0.depth``) set to a new value."""
    data = rm.get_spec(preset).to_dict()
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return data


def _dense(**changes) -> dict:
    return _changed("d2l_densenet", changes)


def _ghost(**changes) -> dict:
    return _changed("ghostnet_100", changes)


BAD_FAMILY_SPECS = [
    (_dense(**{"block.growth_rate": None}), "block.growth_rate: is required for a 'dense' block, got None"),
    (_dense(**{"block.growth_rate": 0}), "block.growth_rate: must be >= 1, got 0"),
    (_dense(**{"block.bn_size": -1}), "block.bn_size: must be >= 0, got -1"),
    (_dense(**{"block.compression": 0}), "block.compression: must be a number in (0, 1], got 0"),
    (_dense(**{"block.compression": 0.001}), "block.compression: leaves no channels in the transition to stages[1]"),
    (_dense(**{"block.se_ratio": 0.25}), "block.se_ratio: must be 0 for a 'dense' block"),
    (_dense(**{"block.expansion": 2}), "block.expansion: is not used by a 'dense' block"),
    (_dense(**{"stages.1.channels": 64}), "stages[1].channels: is not used by 'dense' blocks"),
    (_dense(**{"stages.0.stride": 2}), "stages[0].stride: must be 1 for the first 'dense' stage"),
    (_dense(**{"stages.2.dilate": True}), "stages[2].dilate: must be false for 'dense' blocks"),
    (_dense(**{"stages.0.depth": None}), "stages[0].depth: is required for 'dense' blocks, got None"),
    (_dense(**{"shortcut.kind": "conv"}), "shortcut: is fixed by a 'dense' block"),
    (_dense(**{"stem.widths": [32, 64]}), "stem.widths: must be one width for a 'dense' network"),
    (_dense(**{"init.zero_init_last_bn": True}), "init.zero_init_last_bn: must be false for a 'dense' network"),
    (_dense(**{"head.hidden_channels": 0}), "head.hidden_channels: must be >= 1, got 0"),
    (_ghost(**{"stages.0.depth": 1}), "stages[0].depth: is not used by 'ghost' blocks"),
    (_ghost(**{"stages.0.blocks": None}), "stages[0].blocks: must be a non-empty list of per-block settings"),
    (_ghost(**{"stages.3.stride": 2}), "stages[3].stride: must be 1 for 'ghost' blocks: set it per block"),
    (_ghost(**{"stages.3.blocks.0.kernel_size": 4}), "stages[3].blocks[0].kernel_size: must be odd"),
    (_ghost(**{"stages.3.blocks.0.se_ratio": 1.5}), "stages[3].blocks[0].se_ratio: must be a number in [0, 1], got 1.5"),
    (_ghost(**{"stages.6.blocks.4.mid_channels": 0}), "stages[6].blocks[4].mid_channels: must be >= 1, got 0"),
    (_ghost(**{"stages.0.blocks.0": {"channels": 16}}), "stages[0].blocks[0]: missing required key(s) 'mid_channels'"),
    (_ghost(**{"stages.0.blocks.0.exp": 3}), "stages[0].blocks[0]: unknown key(s) 'exp'"),
    (_ghost(**{"block.se_ratio": 0.25}), "block.se_ratio: must be 0 for 'ghost' blocks: set it per block"),
    (_ghost(**{"block.growth_rate": 32}), "block.growth_rate: is only for 'dense' blocks, not 'ghost'"),
    (_ghost(**{"init.zero_init_last_bn": True}), "init.zero_init_last_bn: must be false for a 'ghost' network"),
    (_dense(**{"block.drop_rate": 1.0}), "block.drop_rate: must be a number in [0, 1), got 1.0"),
    (_dense(**{"block.drop_rate": "0.2"}), "block.drop_rate: must be a number in [0, 1), got '0.2'"),
    (_ghost(**{"block.drop_rate": 0.2}), "block.drop_rate: is only for 'dense' blocks, not 'ghost'"),
    (_dense(**{"init.linear_bias": "ones"}), "init.linear_bias: must be one of"),
    ({**rm.get_spec("resnet18").to_dict(), "stages": [{"depth": 1, "channels": 8, "blocks": []}]},
     "stages[0].blocks: is only for 'ghost' blocks, not 'basic'"),
]


@pytest.mark.parametrize("data, message", BAD_FAMILY_SPECS, ids=[m.split(":")[0] for _, m in BAD_FAMILY_SPECS])
def test_invalid_family_spec_names_the_field(data, message):
    with pytest.raises(rm.SpecError) as info:
        rm.ResNetSpec.from_dict(data)
    assert message in str(info.value)


@pytest.mark.parametrize("name", list(PARAMS))
def test_family_presets_round_trip_through_yaml(name, tmp_path):
    spec = rm.get_spec(name)
    rm.save_spec(spec, tmp_path / "net.yaml")
    assert rm.load_spec(tmp_path / "net.yaml") == spec


@pytest.mark.parametrize("name, folded, kept", [
    ("densenet121", 1 + 58, 58 + 3 + 1),  # norm0 and every norm2 follow a conv; norm1, transitions, norm5 do not
    ("d2l_densenet", 1, 16 + 3 + 1),      # no bottleneck: only norm0 follows a conv
    ("ghostnet_100", 80, 0),              # every BN follows its conv (timm has 80 BatchNorm2d)
])
def test_fast_path_folds_what_follows_a_conv_and_says_what_it_keeps(name, folded, kept):
    plan = rm.make_plan(rm.get_spec(name))
    bns = [op.name for part in plan.parts for op in part.ops if isinstance(op, rm.plan.BatchNorm)]
    names = kept_batchnorms(plan)
    assert len(bns) == folded + len(names) and len(names) == kept
    folded_plan, _ = fold_batchnorm(plan, random_weights(plan, seed=4))
    assert [op.name for part in folded_plan.parts for op in part.ops if isinstance(op, rm.plan.BatchNorm)] == list(names)
    assert kept_batchnorms(folded_plan) == names


# --------------------------------------------------------------------------- DenseNet dropout and init

def _with_drop_rate(spec: rm.ResNetSpec, rate: float) -> rm.ResNetSpec:
    return spec.replace(block=dataclasses.replace(spec.block, drop_rate=rate))


DROPPING = _with_drop_rate(rm.ResNetSpec.from_dict(_changed("densenet121", {
    "name": "tiny_dense", "stages": [{"depth": 2}, {"depth": 2, "stride": 2}], "block.growth_rate": 8,
    "stem.widths": [16], "head.num_classes": 5})), 0.5)


def _dropout_layers(backend: str, model) -> dict:
    """The model's dropout layers by name, as the framework lists its modules."""
    return {name: m for name, m in idioms(backend).named_layers(model).items() if type(m).__name__ == "Dropout"}


DROPOUT_NAMES = {  # where torchvision / paddle.vision keep a dense layer's dropout
    "torch": "features.denseblock1.denselayer1.dropout",
    "paddle": "db_conv_2.conv2_1.dropout_func",
    "flax": "features.denseblock1.denselayer1.dropout",
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_drop_rate_drops_in_train_mode_only(backend):
    weights = random_weights(rm.make_plan(DROPPING), seed=0)
    dropping = rm.build(DROPPING, backend=backend, weights=weights)
    plain = rm.build(_with_drop_rate(DROPPING, 0.0), backend=backend, weights=weights)
    x = odd_input(DROPPING, batch=2)
    # eval mode: no dropout at all (not paddle.vision's downscale_in_infer, which scales by 1 - p)
    np.testing.assert_array_equal(rm.forward(dropping, x), rm.forward(plain, x))
    assert_close(rm.forward(rm.optimize_for_inference(dropping), x), rm.forward(plain, x), "fast path")

    layers = _dropout_layers(backend, dropping)
    assert len(layers) == 4 and DROPOUT_NAMES[backend] in layers
    assert not _dropout_layers(backend, plain)
    # each layer is inverted dropout: an element is dropped with probability 0.5, kept ones are doubled
    dropped = idioms(backend).dropout_call(layers[DROPOUT_NAMES[backend]], np.ones((8, 8, 16, 16), np.float32))
    assert set(np.unique(dropped).tolist()) == {0.0, 2.0}
    assert 0.45 < (dropped == 0).mean() < 0.55  # 16,384 draws: 8 standard deviations of slack

    # "differs" below means beyond 1e-3 absolute: far past float noise, as dropping half the features does
    first = idioms(backend).train_call(dropping, x, seed=0)
    np.testing.assert_array_equal(idioms(backend).train_call(dropping, x, seed=0), first)  # seeded: repeatable
    assert not np.allclose(idioms(backend).train_call(dropping, x, seed=1), first, atol=1e-3)
    assert not np.allclose(idioms(backend).train_call(plain, x, seed=0), first, atol=1e-3)


@pytest.mark.slow  # full size: torchvision's own densenet121
def test_dense_drop_rate_drops_what_torchvision_drops():
    """Same weights, same seed, train mode: densenet121 with drop_rate 0.2 gives torchvision's logits."""
    import torch
    import torchvision

    spec = _with_drop_rate(rm.get_spec("densenet121"), 0.2)
    ours = rm.build(spec, backend="torch", weights=random_weights(rm.make_plan(spec), seed=0))
    reference = torchvision.models.densenet121(weights=None, drop_rate=0.2)
    reference.load_state_dict(ours.state_dict(), strict=True)  # a dropout holds no tensors
    x = odd_input(spec, batch=2)
    expected = idioms("torch").train_call(reference, x, seed=3)  # another seed must differ beyond float noise
    np.testing.assert_array_equal(idioms("torch").train_call(ours, x, seed=3), expected)
    assert not np.allclose(idioms("torch").train_call(ours, x, seed=4), expected, atol=1e-3)


@pytest.mark.parametrize("name", ["densenet121", "d2l_densenet", "ghostnet_050"])
def test_classifier_bias_starts_as_in_the_reference_library(name):
    """A model built without weights: torchvision's DenseNet zeroes its Linear bias; d2l and timm
    keep nn.Linear's uniform init in +-1/sqrt(fan_in)."""
    model = rm.build(name, backend="torch")
    bias = rm.export_weights(model)["classifier.bias"]
    if name.startswith("densenet"):
        np.testing.assert_array_equal(bias, 0)
    else:
        fan_in = model.classifier.in_features
        assert np.abs(bias).max() <= 1 / np.sqrt(fan_in) and np.count_nonzero(bias) == bias.size
