"""Which format a checkpoint file has: from its suffix, checked against its first bytes.

The suffixes are the registry's (``registry.native_suffixes()``: each backend's native files)
plus the neutral ``.safetensors``; nothing here imports a framework or numpy, so finding a file's
reader costs nothing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..registry import native_suffixes

NEUTRAL = "neutral"
"""The format name of the neutral ``.safetensors`` file (the other format names are backend names)."""

NEUTRAL_SUFFIX = ".safetensors"
"""The neutral file's suffix (canonical names and layout, the spec's JSON in the metadata)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: wrong content for its suffix, truncated or corrupt.
    The message names the file."""


def formats() -> dict[str, str]:
    """Every supported checkpoint suffix -> format name (a backend name, or "neutral")."""
    return {**native_suffixes(), NEUTRAL_SUFFIX: NEUTRAL}


def format_of_suffix(path: str | os.PathLike) -> str:
    """The format a file of this name has (or will have), from its suffix alone.

    Raises:
        ValueError: an unknown suffix (the message lists the known ones).
    """
    suffix = Path(path).suffix.lower()
    table = formats()
    if suffix not in table:
        raise ValueError(f"{path}: unknown checkpoint suffix {suffix or '(none)'!r}; known: "
                         + ", ".join(f"{s} ({f})" for s, f in table.items()))
    return table[suffix]


# What the first bytes of each kind of file look like. Checked before a framework parses the
# file, so a misnamed or garbage file gets a message saying what it is instead of a framework
# traceback, and a renamed file of another format is recognised.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled torch magic number


def looks_like(head: bytes, size: int) -> str | None:
    """What ``head`` (the first bytes of a file of ``size`` bytes) looks like (a key of ``CONTENT_KINDS``),
    or None."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"  # torch.save since torch 1.6
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch_legacy"  # torch.save(..., _use_new_zipfile_serialization=False)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # paddle.save (pickle protocol 2-4)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"  # u64 little-endian header length, then a JSON object
    if head and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack_map"  # flax.serialization.to_bytes of a state dict
    return None


CONTENT_KINDS = {
    "zip": "a zip archive (as torch.save writes)",
    "torch_legacy": "a legacy torch.save pickle",
    "pickle": "a Python pickle (as paddle.save writes)",
    "safetensors": "a safetensors file",
    "msgpack_map": "a msgpack map (as flax.serialization writes)",
}
"""Kind of content ``looks_like`` recognises -> how messages describe it."""

# format -> the kinds of content it may have. A backend without an entry gets no content
# pre-check; its reader's errors are still turned into a CheckpointError naming the file.
_CONTENT = {
    "torch": ("zip", "torch_legacy"),
    "paddle": ("pickle",),
    "flax": ("msgpack_map",),
    NEUTRAL: ("safetensors",),
}


def detect_format(path: str | os.PathLike) -> str:
    """The format of an existing checkpoint: from its suffix, checked against its first bytes.

    Returns:
        "torch", "paddle", "flax" (backend names) or "neutral".
    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown suffix.
        CheckpointError: empty file, or content that is not what the suffix says (the message
            says what it looks like instead).
    """
    path = Path(path)
    fmt = format_of_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(16)
    allowed = _CONTENT.get(fmt)
    if allowed is None:
        return fmt
    looks = looks_like(head, size)
    if looks not in allowed:
        expected = " or ".join(CONTENT_KINDS[k] for k in allowed)
        found = CONTENT_KINDS.get(looks, f"unrecognised content (starts with {head[:8]!r})")
        others = [s for s, f in formats().items() if looks in _CONTENT.get(f, ())]
        hint = f"; is it a {'/'.join(others)} file?" if others else ""
        raise CheckpointError(f"{path}: not a {fmt} checkpoint: expected {expected}, found {found}{hint}")
    return fmt
