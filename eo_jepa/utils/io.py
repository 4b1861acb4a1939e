"""Atomic file writes: a crash never leaves a half-written file under the final name.

Write to a temporary file in the same directory, fsync, then ``os.replace`` (atomic on
POSIX and Windows for same-filesystem renames). The file gets the permissions a plain ``open()``
would give it (0666 less the umask), not ``mkstemp``'s private 0600.

A full disk (or quota) while writing is a user-facing :class:`~eo_jepa.errors.DiskFullError`
(exit status 2 from the CLI) naming the file and the space needed, whatever layer noticed it
(``OSError`` ENOSPC, torch's ``inline_container.cc`` ``RuntimeError``, ``SafetensorError``); the
previous complete file stays in place and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from eo_jepa.errors import DiskFullError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# What libraries that wrap the OS error in their own exception put in its message.
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large", "file write failed")


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the fallback only)
    os.umask(mask)
    return mask


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it wraps) says the disk or quota is full."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL_ERRNOS:
            return True
        if not isinstance(cur, OSError) and any(t in str(cur) for t in _FULL_TEXT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors/arrays in a (nested) state dict: what writing it will need, roughly."""
    if hasattr(obj, "nbytes") and not isinstance(obj, (int, float)):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def disk_full_error(path: Path, needed: int | None, written: int = 0) -> DiskFullError:
    """The one-sentence error for a write of ``path`` that ran out of space."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    parts = [f"{_human(needed)} needed"] if needed else [f"over {_human(written)} needed"] if written else []
    if free is not None:
        parts.append(f"{_human(free)} free")
    detail = f" ({', '.join(parts)})" if parts else ""
    return DiskFullError(
        f"Could not write {str(path)!r}: the disk is full{detail}; free some space or write "
        "elsewhere (the previous version of the file, if any, is unchanged)."
    )


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, suffix: str = ".tmp", size_hint: int | None = None
) -> Iterator[Path]:
    """A temporary sibling of ``path`` for writers that need a file name (rasterio, safetensors).

    On success the temporary file gets the umask's permissions, is fsynced and renamed onto
    ``path``; on any error it is removed and ``path`` is left as it was. A full disk becomes
    :class:`DiskFullError` (``size_hint``: the bytes the write needs, for the message).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = 0
        if tmp is not None:
            with contextlib.suppress(OSError):
                written = os.path.getsize(tmp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            raise disk_full_error(path, size_hint, written) from None
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", *, size_hint: int | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success."""
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing; got mode {mode!r}")
    with atomic_path(path, size_hint=size_hint) as tmp, open(tmp, mode) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb", size_hint=len(data)) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """JSON encoding for numpy scalars/arrays and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
