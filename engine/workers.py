"""What a forked DataLoader worker must not keep: the run's control socket and open run files.

A DataLoader worker is a fork of the run's process and inherits every open file
descriptor, whatever its close-on-exec flag (that flag acts on exec, not on
fork). A worker stuck in a preset's __getitem__ after the run's process died
would then hold the listening control socket (a watcher's connect still
succeeds, so the dead run looks live) and the run's files. Whoever opens such a
descriptor registers it here; batching.py's worker_init closes them all in the
worker before it touches any data.

Each descriptor is recorded with its device and inode, so a number that was
closed and reused for something else (a worker's own pipe) is never closed.
Standard library only.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_fds: dict[int, tuple[int, int]] = {}


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def parent_only(fd: int) -> None:
    """Close `fd` in every DataLoader worker forked from now on (call release() before closing it)."""
    ident = _identity(fd)
    if ident is not None:
        with _lock:
            _fds[fd] = ident


def release(fd: int) -> None:
    """`fd` is about to be closed by its owner: forget it."""
    with _lock:
        _fds.pop(fd, None)


def registered() -> dict[int, tuple[int, int]]:
    """A copy of what a worker would close: {fd: (device, inode)}."""
    with _lock:
        return dict(_fds)


def close_inherited() -> int:
    """In a freshly forked worker: close every registered descriptor that is still the same file.

    Returns how many were closed. Reads the table without the lock: a fork can copy a
    lock held by another thread of the parent, and this is the only thread here.
    """
    closed = 0
    for fd, ident in list(_fds.items()):
        if _identity(fd) == ident:
            try:
                os.close(fd)
                closed += 1
            except OSError:
                pass
    _fds.clear()
    return closed
