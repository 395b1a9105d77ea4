"""One checkpoint = one plain dict, written atomically, loaded strictly.

Atomic: torch.save goes to a temp file in the same folder, which is fsynced
and then renamed over the target, and the folder is fsynced. A crash or a
full disk at any point leaves either the old file or the new one, never a
half-written file under the real name, and no temp file behind.

Strict: loads use weights_only=True (a pickled object in a .pt file is
refused, never executed), and leftover or missing keys are an error.
"""

from __future__ import annotations

import io
import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT = "tuitrain-checkpoint"
VERSION = 1

# mkstemp creates files 0600; finished files get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)

KEYS = frozenset({
    "format", "version", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
    "scaler_state_dict", "epoch", "step", "batch_in_epoch", "lr_multiplier", "best_val_loss",
    "best_epoch", "early_stop_counter", "epoch_totals", "rng", "config", "preset",
})
#: Keys a checkpoint may lack (an older tuitrain did not write them).
OPTIONAL_KEYS = frozenset({"diagnosis"})


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit; one line for the user."""


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


def save(state: dict[str, Any], path: Path) -> int:
    """Write a checkpoint dict atomically (synchronously); returns its size in bytes."""
    data = serialize(state)
    return atomic_write_bytes(Path(path), lambda f: f.write(data))


def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint's bytes: taken on the training thread, so they are this step's weights."""
    missing = KEYS - set(state)
    if missing:
        raise ValueError(f"checkpoint state lacks {sorted(missing)}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class SaveResult:
    path: Path
    step: int
    reason: str
    size: int = 0
    error: str | None = None


class CheckpointWriter:
    """Writes serialized checkpoints on a background thread.

    The file write and fsync cost milliseconds a checkpoint, which is a large
    share of an epoch for a small model; the loop only pays for serializing.
    Writes happen in submission order; results are collected by the loop,
    which turns them into events on its own thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[bytes, list[Path], int, str, bool] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[SaveResult] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def submit(self, data: bytes, paths: list[Path], step: int, reason: str, *, report: bool = True) -> None:
        """Queue `data` to be written atomically to each path; `report=False` keeps the result quiet
        unless it fails."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tuitrain-checkpoints", daemon=True)
            self._thread.start()
        with self._lock:
            self._pending += 1
        self._jobs.put((data, paths, step, reason, report))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            data, paths, step, reason, report = job
            for path in paths:
                try:
                    size = atomic_write_bytes(path, lambda f: f.write(data))
                    if report:
                        self._done.put(SaveResult(path, step, reason, size=size))
                except Exception as exc:  # full disk, read-only folder, ...
                    self._done.put(SaveResult(path, step, reason, error=f"{type(exc).__name__}: {exc}"))
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def completed(self) -> list[SaveResult]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted write is on disk (or failed)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self.wait()
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        remove_leftovers()


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint; every problem is a CheckpointError with one line."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"not a checkpoint file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise CheckpointError(
                f"refusing to load {p}: it contains pickled Python objects "
                "(only plain tensors and containers are allowed)") from None
        text = text if len(text) <= 160 else text[:157] + "..."
        raise CheckpointError(f"cannot read checkpoint {p}: not a valid torch file ({text})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a tuitrain checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{p} has checkpoint version {state.get('version')!r}; this tuitrain reads {VERSION}")
    keys = set(state) - (OPTIONAL_KEYS & set(state))
    if keys != KEYS:
        extra, missing = sorted(keys - KEYS), sorted(KEYS - keys)
        detail = "; ".join(s for s in (extra and f"unexpected keys {extra}", missing and f"missing keys {missing}") if s)
        raise CheckpointError(f"{p} does not match the checkpoint format: {detail}")
    if "diagnosis" in state and not isinstance(state["diagnosis"], dict):
        raise CheckpointError(f"{p} does not match the checkpoint format: 'diagnosis' is not a dict")
    return state


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
