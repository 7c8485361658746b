"""The old home of the atomic file writers, kept so that ``from resnet_multi.io_util import ...`` works.

They live in ``resnet_multi.formats.atomic`` now (file formats have a package of their own).
"""

from .formats.atomic import atomic_path, atomic_write_text, check_output_dir

__all__ = ["atomic_path", "atomic_write_text", "check_output_dir"]
