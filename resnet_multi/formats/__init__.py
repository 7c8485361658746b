"""Checkpoint file formats, independent of any framework (numpy, pickle and msgpack only).

- ``sniff``: a file's format from its suffix (the registry's native suffixes plus the neutral
  ``.safetensors``), checked against its first bytes.
- ``pdparams``: Paddle's ``.pdparams`` files, read safely (no code from the file runs) and written
  byte for byte as ``paddle.save`` writes them, under Paddle's own names and layouts.
- ``msgpack_stream``: Flax's ``.msgpack`` state dicts, streamed in both directions, byte for byte
  as ``flax.serialization`` writes them, under Flax's own names and layouts.
- ``atomic``: the one layer that makes a write atomic (a temporary file, then a rename).

The codecs work on the frameworks' raw state dicts; translating names and layouts to and from
canonical weights is each backend's. ``pdparams`` and ``msgpack_stream`` are imported when used,
so importing this package costs no numpy or msgpack import.
"""

from .sniff import NEUTRAL, NEUTRAL_SUFFIX, CheckpointError, detect_format, format_of_suffix, formats

__all__ = ["NEUTRAL", "NEUTRAL_SUFFIX", "CheckpointError", "detect_format", "format_of_suffix", "formats"]
