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

The final step decides who wins when several writers race for one output:

- **Without overwrite** (no ``--force``) the complete temporary file is hard-linked to the output
  name (``os.link``, which fails if the name exists), never renamed over it: of racing writers
  exactly one wins, the others fail with FileExistsError naming the output, and a file that
  appeared meanwhile is never replaced. (On a file system without hard links the check and the
  rename are two steps; there, racing writers are not told apart.)
- **With overwrite** the temporary file is renamed onto the output (``os.replace``): the last
  writer wins, with a whole file.

**Temporary files** are named ``.<output name>.<pid>.<8 hex>.tmp<output suffix>``, beside the
output (``TEMP_NAME``; e.g. ``.r50.pdparams.4242.9f3ab1c0.tmp.pdparams``). A writer killed before
its clean-up (``kill -9``, power loss) leaves one behind; the next write of the same output removes
those whose process (``<pid>``) is no longer running on this machine (``remove_stale_temporaries``; POSIX only).

**Failures name the output**: an OSError while writing (disk full, read-only file system, no
permission) is raised again as one line naming the output file, not the temporary one, saying
that nothing was written; so is a codec's own error when it reports an I/O failure (safetensors'
``SafetensorError``, torch's ``unexpected pos`` on a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import threading
from pathlib import Path
from typing import Iterator

TEMP_NAME = ".{name}.{pid}.{token}.tmp{suffix}"
"""The name of a write's temporary file, beside its output ``name`` (module doc)."""

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
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give the output file's name")
    if parent.is_dir():
        return
    if parent.exists():
        raise NotADirectoryError(f"{path}: {parent} is not a directory")
    raise FileNotFoundError(f"{path}: the output directory {parent} does not exist "
                            "(it is not created; create it first)")


def _temp_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[0-9a-f]{8}\.tmp" + re.escape(path.suffix) + "$")


def _process_is_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (signal 0 probes, on POSIX). On Windows, where
    ``os.kill`` would terminate the process, every writer counts as running: nothing is removed."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The temporary files of writes of ``path`` that are still beside it (``TEMP_NAME``), running or stale."""
    path = Path(path)
    pattern = _temp_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / name for name in names if pattern.match(name))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writes of ``path`` left behind: those whose process is
    not running on this machine (a running writer's file is left alone). Returns the removed paths."""
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    for tmp in temporaries_of(path):
        pid = int(pattern.match(tmp.name).group(1))
        if pid != os.getpid() and not _process_is_running(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


class WriteError(OSError):
    """A write of an output file failed (disk full, read-only, no permission); nothing was written.
    ``errno`` is the operating system's, when known; ``filename`` is the output; the message is one line."""

    def __init__(self, path: Path, reason: str, code: int | None = None):
        super().__init__(code, reason, str(path))
        self.message = f"{path}: cannot write it: {reason} (nothing was written)"

    def __str__(self) -> str:
        return self.message


def _cannot_write(path: Path, reason: str, cause: BaseException | None = None) -> WriteError:
    return WriteError(path, reason, getattr(cause, "errno", None))


def _write_failure(path: Path, exc: BaseException) -> OSError | None:
    """The one-line error for a failed write of ``path``, or None if ``exc`` is not an I/O failure
    (a bug or a bad argument passes through unchanged)."""
    if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)) and exc.filename in (None, str(path)):
        return None  # already about the output itself
    if isinstance(exc, OSError):
        return _cannot_write(path, exc.strerror or str(exc), exc)
    message = str(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error" in message:  # "... (os error 28)"
        found = re.search(r"os error (\d+)", message)
        code = int(found.group(1)) if found else None
        cause = OSError(code, os.strerror(code)) if code else None
        return _cannot_write(path, os.strerror(code) if code else message.splitlines()[0], cause)
    if isinstance(exc, RuntimeError) and ("unexpected pos" in message or "failed writing" in message):
        # torch's zip writer does not say why a write failed; a full disk is the usual reason
        with contextlib.suppress(OSError):
            if shutil.disk_usage(path.parent).free < 2 ** 20:
                return _cannot_write(path, os.strerror(errno.ENOSPC), OSError(errno.ENOSPC, ""))
        return _cannot_write(path, f"the writer failed ({message.splitlines()[0]})")
    return None


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path`` (``TEMP_NAME``), created with mode 0o666 so the umask
    applies (as to any file ``open(..., "w")`` creates); O_EXCL so an existing name is never reused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / TEMP_NAME.format(name=path.name, pid=os.getpid(), token=secrets.token_hex(4),
                                             suffix=path.suffix)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # read-only file system, no permission: about the output, not this name
            raise _cannot_write(path, exc.strerror or str(exc), exc) from None
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path}: could not create a temporary file beside it")  # pragma: no cover


def _link_no_replace(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s file the name ``path`` only if no file has it (module doc: racing writers)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{path} exists (another writer made it meanwhile); "
                                            "pass force=True (--force) to overwrite it", str(path)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # no hard links here: check, then rename (not exclusive)
            raise FileExistsError(errno.EEXIST, f"{path} exists; pass force=True (--force) to overwrite it",
                                  str(path)) from None
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was. The directory
    of ``path`` must exist (``check_output_dir``); the file gets normal permissions (module doc).
    If ``path`` is itself the temporary file of an enclosing ``atomic_path`` block, it is yielded
    as it is: the enclosing block owns the write (its checks, rename and clean-up), so one write
    makes one temporary file however many layers ask for atomicity.

    Without ``overwrite`` the final step is exclusive: if ``path`` exists then (another writer
    made it meanwhile), FileExistsError is raised and ``path`` is left as that writer made it.
    Stale temporary files of ``path`` (killed writers) are removed first (module doc).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (before the block, or at the end).
        FileNotFoundError / NotADirectoryError: no such output directory; IsADirectoryError: ``path`` is one.
        OSError: the write failed (disk full, read-only, no permission): one line naming ``path``.
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
    remove_stale_temporaries(path)
    tmp = _new_temp(path)
    key = os.path.abspath(tmp)
    with _OPEN_TEMPS_LOCK:
        _OPEN_TEMPS.add(key)
    normal = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, read without os.umask's race
    try:
        try:
            yield tmp
        except Exception as exc:
            failure = _write_failure(path, exc)
            if failure is None:
                raise
            raise failure from exc
        try:  # overwriting: keep the file's permissions, as writing it in place would
            mode = stat.S_IMODE(os.stat(path).st_mode) if overwrite else normal
        except FileNotFoundError:
            mode = normal
        # set again after the writer: some replace the file they are given (safetensors writes 0o600)
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_replace(tmp, path)
    finally:
        with _OPEN_TEMPS_LOCK:
            _OPEN_TEMPS.discard(key)
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
