"""Paddle's weight layout: BatchNorm's running statistics are ``_mean`` and ``_variance``, a Linear
weight is stored (in, out); module paths follow the plan's "paddle" naming scheme
(``plan.aliases["paddle"]``: PaddleClas' DenseNet names), canonical otherwise. So
``paddle.vision.models`` ResNets and PaddleOCR's ResNet45 checkpoints load with
``set_state_dict`` as they are."""

from resnet_multi.layout import Layout, Leaf

LAYOUT = Layout("paddle", {
    "conv_weight": Leaf("weight"),
    "conv_bias": Leaf("bias"),
    "bn_weight": Leaf("weight"),
    "bn_bias": Leaf("bias"),
    "bn_mean": Leaf("_mean"),
    "bn_var": Leaf("_variance"),  # biased when updated in train mode
    "linear_weight": Leaf("weight", (1, 0)),  # Paddle's (in, out)
    "linear_bias": Leaf("bias"),
    "ln_weight": Leaf("weight"),
    "ln_bias": Leaf("bias"),
    "layer_scale": Leaf(None),  # its own leaf (torchvision's layer_scale, HorNet's gamma1), its own shape
    "complex_weight": Leaf(None),
}, naming="paddle")
