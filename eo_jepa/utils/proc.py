"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """On Linux, have the kernel send ``sig`` to this process when its parent dies (even by SIGKILL).

    Call it in the child (a ``preexec_fn``, a pool initializer). Linux ties this to the *thread* that
    started the child, so start children from a thread that outlives them. Elsewhere: does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def pool_worker_init(parent_pid: int) -> None:
    """Initializer of the chip builder's worker processes: exit when the main process is gone.

    Workers from a fork server are children of the fork server, not of ``parent_pid``: the kernel's
    death signal covers the fork server dying, a thread polling ``parent_pid`` every second covers
    the main process dying (even by SIGKILL) while the fork server lingers.
    """
    die_with_parent(signal.SIGKILL)
    if not pid_alive(parent_pid):
        os._exit(1)
    import threading
    import time

    def watch() -> None:  # the fork server may outlive the main process: watch the main one itself
        while pid_alive(parent_pid):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="eo-jepa-parent-watch", daemon=True).start()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a child process: SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
