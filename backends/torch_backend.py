"""The torch backend's old import path; it is the package ``resnet_multi.backends.torch``."""
import sys
from resnet_multi.backends import torch as _package
sys.modules[__name__] = _package
