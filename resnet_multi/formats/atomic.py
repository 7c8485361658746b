"""Atomic writes: every file resnet_multi writes appears complete or not at all.

One layer makes a write atomic, with one temporary file: the outermost writer (``convert.
write_canonical``, ``weights.save_weights``, ``spec.save_spec``, the report and plot writers) wraps
the write in ``atomic_path``; the codecs below it (``formats.pdparams``, ``formats.msgpack_stream``,
safetensors, ``torch.save``) write exactly the path they are given. A writer that still wraps the
temporary path it was handed in ``atomic_path`` gets that same path back (``atomic_path`` of a
temporary file another ``atomic_path`` has open is the same write), so a write never makes two.

Two rules every writer here follows:

- **The output directory must exist.** It is not created: a mistyped directory would otherwise
  silently become a new tree (as ``cp``, ``torch.save`` and ``np.save`` do, the write is refused,
  before any work). The error names the directory.
- **A written file has the permissions of a normal file**: ``0o666`` less the umask for a new
  file, the existing file's permissions when one is overwritten, exactly as ``open(path, "w")``
  would give. (A temporary file from ``tempfile.mkstemp`` is 0600, and renaming it kept that.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Iterator

# Temporary files an atomic_path block has open (absolute paths), so that atomic_path on one of
# them, from a writer nested inside, writes it in place instead of making a temporary file of the
# temporary file. Shared by threads; the lock guards the set.
_OPEN_TEMPS: set[str] = set()
_OPEN_TEMPS_LOCK = threading.Lock()


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse to write ``path`` if its directory does not exist (it is never created).

    Raises:
        FileNotFoundError: the directory does not exist.
        NotADirectoryError: the "directory" is a file.
    """
    path = Path(path)
    parent = path.parent
    if parent.is_dir():
        return
    if parent.exists():
        raise NotADirectoryError(f"{path}: {parent} is not a directory")
    raise FileNotFoundError(f"{path}: the output directory {parent} does not exist "
                            "(it is not created; create it first)")


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path``, created with mode 0o666 so the umask applies (as to any
    file ``open(..., "w")`` creates); O_EXCL so an existing name is never reused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path}: could not create a temporary file beside it")  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was. The directory
    of ``path`` must exist (``check_output_dir``); the file gets normal permissions (module doc).
    If ``path`` is itself the temporary file of an enclosing ``atomic_path`` block, it is yielded
    as it is: the enclosing block owns the write (its checks, rename and clean-up), so one write
    makes one temporary file however many layers ask for atomicity.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError / NotADirectoryError: no such output directory.
    """
    path = Path(path)
    with _OPEN_TEMPS_LOCK:
        nested = os.path.abspath(path) in _OPEN_TEMPS
    if nested:
        yield path
        return
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    check_output_dir(path)
    tmp = _new_temp(path)
    key = os.path.abspath(tmp)
    with _OPEN_TEMPS_LOCK:
        _OPEN_TEMPS.add(key)
    normal = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, read without os.umask's race
    try:
        yield tmp
        try:  # overwriting: keep the file's permissions, as writing it in place would
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = normal
        # set again after the writer: some replace the file they are given (safetensors writes 0o600)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with _OPEN_TEMPS_LOCK:
            _OPEN_TEMPS.discard(key)
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
