"""Flax's weight layout (nnx's names, HWIO kernels, (in, out) Linear kernels); module paths are the
canonical ones (numbered children in nnx.List, so state keys are ints there)."""

from resnet_multi.layout import Layout, Leaf

LAYOUT = Layout("flax", {
    # conv weight: canonical OIHW, Flax kernel HWIO (also the 1x1 convs of squeeze-excite)
    "conv_weight": Leaf("kernel", (2, 3, 1, 0)),
    "conv_bias": Leaf("bias"),
    # BatchNorm gamma: torch calls it weight, Flax calls it scale
    "bn_weight": Leaf("scale"),
    "bn_bias": Leaf("bias"),
    # running statistics: BatchStats called mean and var; in eval mode both frameworks use them
    # the same way (train-mode updates differ: torch stores the unbiased batch variance, Flax the biased)
    "bn_mean": Leaf("mean"),
    "bn_var": Leaf("var"),
    # linear weight: canonical (out, in) as torch stores it, Flax kernel (in, out)
    "linear_weight": Leaf("kernel", (1, 0)),
    "linear_bias": Leaf("bias"),
    "ln_weight": Leaf("scale"),
    "ln_bias": Leaf("bias"),
    "layer_scale": Leaf(None),  # its own leaf (torchvision's layer_scale, HorNet's gamma1), its own shape
    "complex_weight": Leaf(None),
})
