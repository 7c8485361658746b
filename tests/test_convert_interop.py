"""Interop with real peers: checkpoints written by torchvision and paddle.vision themselves,
converted with rm.convert (spec inferred), load into the other framework's own ResNet-50 with no
missing keys and compute the same outputs; a Flax msgpack converted from either runs in the
Flax backend with the same outputs.

Every BatchNorm gets random running statistics, scales and biases first (with the defaults a
swapped mean/var or a skipped transpose would pass unnoticed); the input is odd and non-square.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
import torchvision

import resnet_multi as rm
from conftest import assert_close, odd_input

SPEC = rm.get_spec("resnet50")
pytestmark = pytest.mark.slow  # full size: the peers' own ResNet-50 files


def _random_bn(rng, channels):
    return (rng.uniform(0.5, 1.5, channels), rng.uniform(-0.5, 0.5, channels),
            rng.uniform(-0.5, 0.5, channels), rng.uniform(0.5, 2.0, channels))


class TorchVision:
    """torchvision.models.resnet50, saved with torch.save(state_dict)."""

    suffix = ".pth"

    @staticmethod
    def make(seed):
        torch.manual_seed(seed)
        model = torchvision.models.resnet50()
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    for tensor, values in zip((m.weight, m.bias, m.running_mean, m.running_var),
                                              _random_bn(rng, m.num_features)):
                        tensor.copy_(torch.from_numpy(values.astype(np.float32)))
        return model.eval()

    @staticmethod
    def save(model, path):
        torch.save(model.state_dict(), path)

    @staticmethod
    def load(path):
        model = torchvision.models.resnet50()
        result = model.load_state_dict(torch.load(path, weights_only=True), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        return model.eval()

    @staticmethod
    def run(model, x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()


class PaddleVision:
    """paddle.vision.models.resnet50, saved with paddle.save(state_dict)."""

    suffix = ".pdparams"

    @staticmethod
    def make(seed):
        paddle.seed(seed)
        model = paddle.vision.models.resnet50()
        rng = np.random.default_rng(seed)
        for m in model.sublayers():
            if isinstance(m, paddle.nn.BatchNorm2D):
                for tensor, values in zip((m.weight, m.bias, m._mean, m._variance),
                                          _random_bn(rng, m.weight.shape[0])):
                    tensor.set_value(values.astype(np.float32))
        model.eval()
        return model

    @staticmethod
    def save(model, path):
        paddle.save(model.state_dict(), str(path))

    @staticmethod
    def load(path):
        model = paddle.vision.models.resnet50()
        missing, unexpected = model.set_state_dict(paddle.load(str(path)))
        assert not missing and not unexpected, (missing, unexpected)
        model.eval()
        return model

    @staticmethod
    def run(model, x):
        with paddle.no_grad():
            return model(paddle.to_tensor(x)).numpy()


PEERS = {"torchvision": TorchVision, "paddle.vision": PaddleVision}


@pytest.mark.parametrize("source, target", [(a, b) for a in PEERS for b in PEERS if a != b])
def test_peer_checkpoint_converts_to_the_other_peer_and_to_flax(tmp_path, source, target):
    src_peer, dst_peer = PEERS[source], PEERS[target]
    x = odd_input(SPEC, batch=2)
    model = src_peer.make(seed=7)
    expected = src_peer.run(model, x)
    src = tmp_path / f"{source}{src_peer.suffix}"
    src_peer.save(model, src)

    # the peer's own file -> the other peer's own format, spec inferred from names and shapes
    assert rm.inspect_file(src).preset == "resnet50"
    dst = rm.convert(src, tmp_path / f"converted{dst_peer.suffix}")
    assert_close(dst_peer.run(dst_peer.load(dst), x), expected, f"{source} -> {target} logits")

    # either file -> Flax msgpack -> the Flax backend
    for path in (src, dst):
        msgpack = rm.convert(path, tmp_path / f"{path.stem}.msgpack")
        flax_model = rm.build(SPEC, "flax", weights=msgpack)
        assert_close(rm.forward(flax_model, x), expected, f"{path.name} -> flax logits")
    # and straight from the peer's file, without an intermediate msgpack
    assert_close(rm.forward(rm.build(SPEC, "flax", weights=src), x), expected, f"{source} file -> flax logits")
