"""The "native" peers of the benchmarks: each framework's own hand-written model.

- torch: ``torchvision.models`` (resnet18/50, densenet121, convnext_tiny, vgg16_bn), timm's
  ghostnet_100; PaddleOCR's ResNet45 written here in torchvision's style (no torchvision model
  exists).
- paddle: ``paddle.vision.models`` (resnet18/50, densenet121, ``vgg16(batch_norm=True)``);
  ResNet45 written here as PaddleOCR's ``rec_resnet_45.py`` is (1x1 -> 3x3 blocks).
- flax: a plain ``flax.nnx`` ResNet written here in the style of the Flax ImageNet example
  (``ResNetBlock`` / ``BottleneckResNetBlock``, stage sizes, NHWC), with explicit symmetric
  padding instead of 'SAME' (docs/NUMERICS.md), so that it computes what the spec computes.

The torch and paddle peers use the canonical module names, so the very weights of the built
model load into them and the benchmark can check that both compute the same function.

HorNet has no installable implementation in any framework (its official code is a repository,
not a package). Its rows compare each framework with the torch model built from the same spec
and weights, run in the same process (``TORCH_BUILT_PEER``): the ratio is then one framework's
speed against another's on the same network, not the cost of building from a spec.
"""

from __future__ import annotations

# name -> (block kind, depths, channels, strides, stem (widths, kernel, stride, pool), head)
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2), (64, 7, 2, True), 1000),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2), (64, 7, 2, True), 1000),
    "resnet45": ("basic_1x1", (3, 4, 6, 6, 3), (32, 64, 128, 256, 512), (2, 1, 2, 1, 1), (32, 3, 1, False), None),
}
EXPANSION = {"basic": 1, "bottleneck": 4, "basic_1x1": 1}


# --------------------------------------------------------------------------- torch


NATIVE = {  # backend -> the models it has a native peer for
    "torch": ("resnet18", "resnet50", "resnet45", "densenet121", "ghostnet_100", "convnext_tiny", "vgg16_bn"),
    "paddle": ("resnet18", "resnet50", "resnet45", "densenet121", "vgg16_bn"),
    "flax": ("resnet18", "resnet50", "resnet45"),
}
TORCH_BUILT_PEER = ("hornet_tiny_7x7", "hornet_tiny_gf")
"""Models without any installable peer: in the paddle and flax benchmarks their peer is the torch
model built from the same spec and weights (the torch benchmark has none for them)."""


def peer(backend: str, name: str) -> str | None:
    """What ``name`` is timed against in ``backend``: "native", "torch built" or None (not benchmarked)."""
    if name in NATIVE[backend]:
        return "native"
    if name in TORCH_BUILT_PEER and backend != "torch":
        return "torch built"
    return None


def torch_model(name: str):
    import torchvision

    if name.startswith("ghostnet"):  # timm's GhostNet; the spec's canonical names are timm's
        import timm

        return timm.create_model(name, pretrained=False).eval()
    if hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)().eval()
    if name == "resnet45":
        return _torch_resnet45().eval()
    raise KeyError(name)


def _torch_resnet45():
    from torch import nn

    class BasicBlock(nn.Module):  # PaddleOCR rec_resnet_45 BasicBlock: 1x1 -> 3x3(stride), torchvision idioms
        def __init__(self, inplanes, planes, stride, downsample):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class ResNet45(nn.Module):
        def __init__(self):
            super().__init__()
            _, depths, channels, strides, _, _ = ARCHS["resnet45"]
            self.inplanes = 32
            self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(32)
            self.relu = nn.ReLU(inplace=True)
            for i, (depth, planes, stride) in enumerate(zip(depths, channels, strides)):
                self.add_module(f"layer{i + 1}", self._make_layer(planes, depth, stride))

        def _make_layer(self, planes, depth, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes, 1, None) for _ in range(1, depth)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            return self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))

    return ResNet45()


# --------------------------------------------------------------------------- paddle


def paddle_model(name: str):
    import paddle

    if name in ("resnet18", "resnet50", "densenet121"):  # densenet121: PaddleClas names, as the backend's
        model = getattr(paddle.vision.models, name)()
    elif name.startswith("vgg"):  # paddle.vision's vgg16(batch_norm=True): torchvision's keys, Paddle's BN names
        model = getattr(paddle.vision.models, name.removesuffix("_bn"))(batch_norm=name.endswith("_bn"))
    elif name == "resnet45":
        model = _paddle_resnet45()
    else:
        raise KeyError(name)
    model.eval()
    return model


def _paddle_resnet45():
    from paddle import nn

    class BasicBlock(nn.Layer):  # as PaddleOCR's rec_resnet_45.py
        def __init__(self, inplanes, planes, stride, downsample):
            super().__init__()
            self.conv1 = nn.Conv2D(inplanes, planes, 1, bias_attr=False)
            self.bn1 = nn.BatchNorm2D(planes)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2D(planes, planes, 3, stride, 1, bias_attr=False)
            self.bn2 = nn.BatchNorm2D(planes)
            self.downsample = downsample

        def forward(self, x):
            residual = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                residual = self.downsample(x)
            return self.relu(out + residual)

    class ResNet45(nn.Layer):
        def __init__(self):
            super().__init__()
            _, depths, channels, strides, _, _ = ARCHS["resnet45"]
            self.inplanes = 32
            self.conv1 = nn.Conv2D(3, 32, 3, 1, 1, bias_attr=False)
            self.bn1 = nn.BatchNorm2D(32)
            self.relu = nn.ReLU()
            for i, (depth, planes, stride) in enumerate(zip(depths, channels, strides)):
                self.add_sublayer(f"layer{i + 1}", self._make_layer(planes, depth, stride))

        def _make_layer(self, planes, depth, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(nn.Conv2D(self.inplanes, planes, 1, stride, bias_attr=False),
                                           nn.BatchNorm2D(planes))
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes, 1, None) for _ in range(1, depth)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            return self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))

    return ResNet45()


# --------------------------------------------------------------------------- flax (nnx), Flax ImageNet example style


def flax_model(name: str, seed: int = 0):
    """A plain nnx ResNet (NHWC), eval mode, for ``name`` in ARCHS."""
    import jax.numpy as jnp
    from flax import nnx

    def pad(p):
        return ((p, p), (p, p))

    class ConvBN(nnx.Module):
        def __init__(self, cin, cout, k, stride, *, rngs):
            self.conv = nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=pad(k // 2), use_bias=False,
                                 rngs=rngs)
            self.bn = nnx.BatchNorm(cout, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.conv(x))

    class ResNetBlock(nnx.Module):  # basic: 3x3 -> 3x3
        def __init__(self, cin, filters, stride, *, rngs):
            self.a = ConvBN(cin, filters, 3, stride, rngs=rngs)
            self.b = ConvBN(filters, filters, 3, 1, rngs=rngs)
            self.proj = ConvBN(cin, filters, 1, stride, rngs=rngs) if stride != 1 or cin != filters else None

        def __call__(self, x):
            residual = x if self.proj is None else self.proj(x)
            return nnx.relu(residual + self.b(nnx.relu(self.a(x))))

    class BottleneckResNetBlock(nnx.Module):  # 1x1 -> 3x3(stride) -> 1x1 x4
        def __init__(self, cin, filters, stride, *, rngs):
            self.a = ConvBN(cin, filters, 1, 1, rngs=rngs)
            self.b = ConvBN(filters, filters, 3, stride, rngs=rngs)
            self.c = ConvBN(filters, filters * 4, 1, 1, rngs=rngs)
            self.proj = ConvBN(cin, filters * 4, 1, stride, rngs=rngs) if stride != 1 or cin != filters * 4 else None

        def __call__(self, x):
            residual = x if self.proj is None else self.proj(x)
            y = nnx.relu(self.b(nnx.relu(self.a(x))))
            return nnx.relu(residual + self.c(y))

    class OneByOneBlock(nnx.Module):  # PaddleOCR ResNet45: 1x1 -> 3x3(stride)
        def __init__(self, cin, filters, stride, *, rngs):
            self.a = ConvBN(cin, filters, 1, 1, rngs=rngs)
            self.b = ConvBN(filters, filters, 3, stride, rngs=rngs)
            self.proj = ConvBN(cin, filters, 1, stride, rngs=rngs) if stride != 1 or cin != filters else None

        def __call__(self, x):
            residual = x if self.proj is None else self.proj(x)
            return nnx.relu(residual + self.b(nnx.relu(self.a(x))))

    blocks = {"basic": ResNetBlock, "bottleneck": BottleneckResNetBlock, "basic_1x1": OneByOneBlock}
    kind, depths, channels, strides, (width, k, stride, pool), classes = ARCHS[name]

    class ResNet(nnx.Module):
        def __init__(self, *, rngs):
            self.stem = ConvBN(3, width, k, stride, rngs=rngs)
            self.pool = pool
            layers, cin = [], width
            for depth, filters, s in zip(depths, channels, strides):
                for i in range(depth):
                    layers.append(blocks[kind](cin, filters, s if i == 0 else 1, rngs=rngs))
                    cin = filters * EXPANSION[kind]
            self.blocks = nnx.List(layers)
            self.head = nnx.Linear(cin, classes, rngs=rngs) if classes else None

        def __call__(self, x):
            x = nnx.relu(self.stem(x))
            if self.pool:
                x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=pad(1))
            for block in self.blocks:
                x = block(x)
            if self.head is None:
                return x
            return self.head(jnp.mean(x, axis=(1, 2)))

    return ResNet(rngs=nnx.Rngs(seed))
