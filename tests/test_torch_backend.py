"""PyTorch backend against the real peers: torchvision and timm models load strict and agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import resnet_multi as rm
from conftest import BUILT_PRESETS, odd_input

TORCHVISION_PRESETS = [n for n in BUILT_PRESETS if hasattr(torchvision.models, n)]


def _randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters, so a swapped mean/var cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)


def _compare_with_peer(peer: torch.nn.Module, spec: rm.ResNetSpec):
    _randomize_bn(peer)
    peer.eval()
    model = rm.build(spec, backend="torch")
    model.load_state_dict(peer.state_dict(), strict=True)  # canonical names == the peer's names
    x = odd_input(spec, batch=2)
    with torch.no_grad():
        expected = peer(torch.from_numpy(x)).numpy()
    # same modules, same kernels: identical, not merely close
    np.testing.assert_array_equal(rm.forward(model, x), expected)
    np.testing.assert_array_equal(rm.forward(rm.build(spec, "torch", weights=peer.state_dict()), x), expected)


@pytest.mark.parametrize("name", TORCHVISION_PRESETS)
def test_torchvision_state_dict_loads_strict_and_matches(name):
    assert len(TORCHVISION_PRESETS) == 12  # 7 ResNets, densenet121/161/169/201, convnext_tiny
    _compare_with_peer(getattr(torchvision.models, name)(), rm.get_spec(name))


def test_torchvision_dilation_matches():
    spec = rm.get_spec("resnet50")
    stages = tuple(rm.StageSpec(s.depth, s.channels, s.stride, dilate=i >= 2) for i, s in enumerate(spec.stages))
    peer = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    _compare_with_peer(peer, spec.replace(stages=stages))


def test_timm_resnet50d_matches():
    import timm  # the test extra installs it: the deep-stem and avg-pool shortcut names are timm's

    _compare_with_peer(timm.create_model("resnet50d", pretrained=False), rm.get_spec("resnet50d"))


def test_torchvision_style_single_channel_and_head_width():
    spec = rm.get_spec("resnet18").replace(in_channels=1, head=rm.HeadSpec(num_classes=512))
    peer = torchvision.models.resnet18(num_classes=512)
    peer.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    _compare_with_peer(peer, spec)


def test_module_names_are_canonical_and_no_extra_state():
    spec = rm.get_spec("resnet50d")
    model = rm.build(spec, "torch")
    names = [n for n in model.state_dict() if not n.endswith("num_batches_tracked")]
    assert names == list(rm.make_plan(spec).params)


def test_momentum_and_eps_reach_torch():
    spec = rm.get_spec("resnet18").replace(norm=rm.NormSpec(eps=1.001e-5, momentum=0.01))
    bn = rm.build(spec, "torch").bn1
    assert (bn.eps, bn.momentum) == (1.001e-5, 0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_sigmoid_is_timms_forward_with_an_exact_gradient(dtype):
    """F.hardsigmoid's backward multiplies by the float32 constant 1.0f/6.0f even for float64
    tensors (2.98e-8 relative off): the backend's hard sigmoid keeps its forward, bit for bit, and
    has the exact gradient."""
    from resnet_multi import plan as P
    from resnet_multi.backends.torch.ops import OPS

    x = torch.tensor([-4.0, -3.0, -2.5, -0.1, 0.0, 0.7, 2.99, 3.0, 5.0], dtype=dtype, requires_grad=True)
    node = P.Node(P.Act("hard_sigmoid"), (P.INPUT,), "out")
    out = OPS[P.Act].apply(node, x)
    assert torch.equal(out, torch.nn.functional.hardsigmoid(x))
    out.sum().backward()
    sixth = torch.tensor(1.0, dtype=dtype) / 6
    inside = (x > -3) & (x < 3)
    assert torch.equal(x.grad, torch.where(inside, sixth, torch.zeros_like(sixth)))


def test_traceable():
    spec = rm.get_spec("resnet18")
    model = rm.build(spec, "torch")
    x = torch.from_numpy(odd_input(spec))
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        np.testing.assert_allclose(traced(x).numpy(), model(x).numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("name, peer", [("resnet50", lambda: torchvision.models.resnet50()),
                                        ("resnet50d", lambda: __import__("timm").create_model("resnet50d"))])
def test_training_step_gradients_match_the_peer(name, peer):
    """Train mode, one backward pass: every parameter's gradient and every updated running
    statistic equal the peer's. The blocks add the shortcut and apply ReLU in place (as
    torchvision does); autograd must accept that, and the result must not change."""
    spec = rm.get_spec(name)
    reference = peer()
    _randomize_bn(reference)
    model = rm.build(spec, "torch", weights=reference.state_dict())
    x = torch.from_numpy(odd_input(spec, batch=2))
    upstream = torch.randn(2, spec.head.num_classes, generator=torch.Generator().manual_seed(1))
    for m in (model, reference):
        m.train()
        (m(x) * upstream).sum().backward()
    expected = dict(reference.named_parameters())
    for param_name, param in model.named_parameters():
        np.testing.assert_array_equal(param.grad.numpy(), expected[param_name].grad.numpy(), err_msg=param_name)
    expected_buffers = dict(reference.named_buffers())
    for buffer_name, buffer in model.named_buffers():
        np.testing.assert_array_equal(buffer.numpy(), expected_buffers[buffer_name].numpy(), err_msg=buffer_name)


def test_se_and_conv_shortcut_blocks_train():
    """The in-place shortcut add must also be legal after a squeeze-excite product and with a
    conv-only (d2l) shortcut: one backward pass gives a finite gradient for every parameter."""
    for spec in (rm.get_spec("resnet50").replace(name="se50", block=rm.BlockSpec(kind="bottleneck", se_ratio=0.25)),
                 rm.get_spec("d2l_resnet18")):
        model = rm.build(spec, "torch")
        model.train()
        x = torch.from_numpy(odd_input(spec, batch=2))
        model(x).square().mean().backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), f"{spec.name} {param_name}"
