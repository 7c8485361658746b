"""The flax backend's old import path; it is the package ``resnet_multi.backends.flax``."""
import sys
from resnet_multi.backends import flax as _package
sys.modules[__name__] = _package
