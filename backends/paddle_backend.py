"""The paddle backend's old import path; it is the package ``resnet_multi.backends.paddle``."""
import sys
from resnet_multi.backends import paddle as _package
sys.modules[__name__] = _package
