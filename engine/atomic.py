"""Files written whole or not at all: a temp file next to the target, fsynced, renamed into place.

Checkpoints, summary.json and the exports (tuitrain export) use it, so a crash or a
full disk never leaves half a file under the real name. Standard library only (the
export commands must not import torch).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

# mkstemp creates files 0600; finished files get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Temp files whose removal failed (the folder turned read-only mid-write):
#: removed at the next write that gets that far, or by remove_leftovers().
_leftovers: set[str] = set()
_leftovers_lock = threading.Lock()


def remove_leftovers() -> list[str]:
    """Try again to remove the temp files of failed writes; return those still there."""
    with _leftovers_lock:
        for tmp in list(_leftovers):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            _leftovers.discard(tmp)
        return sorted(_leftovers)


def atomic_write_bytes(path: Path, write: Any) -> int:
    """Run `write(fileobj)` into a temp file next to `path`, then rename it into place.

    Returns the size written. On any failure the temp file is removed and the
    previous `path` (if any) is untouched. (A folder that turned read-only
    mid-write refuses the removal too: the temp file is removed by a later
    write, once the folder takes writes again.)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if _leftovers:
        remove_leftovers()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            with _leftovers_lock:
                _leftovers.add(tmp)
        raise
    _fsync_dir(path.parent)
    return size


def atomic_write_text(path: Path, text: str) -> int:
    return atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


