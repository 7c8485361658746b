"""PyTorch's weight layout: the canonical one (torchvision's names, OIHW and (out, in))."""

from resnet_multi.layout import Layout, Leaf

LAYOUT = Layout("torch", {
    "conv_weight": Leaf("weight"),
    "conv_bias": Leaf("bias"),
    "bn_weight": Leaf("weight"),
    "bn_bias": Leaf("bias"),
    "bn_mean": Leaf("running_mean"),
    "bn_var": Leaf("running_var"),
    "linear_weight": Leaf("weight"),
    "linear_bias": Leaf("bias"),
    "ln_weight": Leaf("weight"),
    "ln_bias": Leaf("bias"),
    "layer_scale": Leaf(None),  # its own leaf (torchvision's layer_scale, HorNet's gamma1), its own shape
    "complex_weight": Leaf(None),
})
