"""A small full-able filesystem for disk-full tests.

As root (CI containers, the dev VM) a real tmpfs of the requested size is mounted, so the kernel
itself answers ENOSPC. Elsewhere the process's file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes
the kernel refuse writes past ``size`` with EFBIG: still the OS-write boundary, no mock.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(where: Path, size: int) -> Iterator[Path]:
    """A folder under ``where`` whose filesystem holds about ``size`` bytes."""
    mnt = where / "small_disk"
    mnt.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, timeout=30
        ).returncode
        == 0
    )
    if mounted:
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
        return
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))
    try:
        yield mnt
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
