"""The run directory: everything a run leaves on disk, and the reader for it.

    config.json  metrics.jsonl  history.json  summary.json  error.txt  checkpoints/

metrics.jsonl is append-only. A resumed run appends a "started" record with
resumed=true at the checkpoint's step; readers drop earlier step records past
that step, since the run went back and redid them. A write that fails (a full
disk, a read-only folder) never ends the run: the records wait in memory
(up to BACKLOG_LIMIT bytes) and are written, in order, once the disk takes
them again; the first failure of each streak is reported (a write_failed event).
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .checkpoint import atomic_write_bytes, atomic_write_text
from .events import clean_json


#: The temp files of atomic_write_bytes (".latest.pt.k3j9x_q2.tmp") and the
#: write probe of create(): a killed process can leave one behind; nothing
#: else in a run directory looks like them.
_TEMP_FILE = re.compile(r"^\.(.+\.[A-Za-z0-9_]{8}\.tmp|write-test-\d+)$")


class RunDirError(Exception):
    """The run directory cannot be created or written; one line for the user."""


def new_run_path(root: str | os.PathLike[str], preset_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{preset_name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self._metrics: int | None = None  # the file descriptor of metrics.jsonl
        self.metrics_error: str | None = None
        """The error of the failing metrics.jsonl write streak, None while writes succeed."""
        self.dropped_lines = 0
        """Records dropped because metrics.jsonl could not be written for too long."""

    # -- creation -----------------------------------------------------------
    def create(self, *, resume: bool = False) -> "RunDir":
        """Make the folders and prove we can write there, before any training."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from None
        if not resume and (self.path / "metrics.jsonl").exists():
            raise RunDirError(f"{self.path} already holds a run; use --resume {self.path} to continue it, "
                              "or choose another --run-dir")
        self.remove_stale_temp_files()
        return self

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the half-written temp files a killed run left (never the real files); return them.

        Only one process writes a run directory, and this runs before it writes
        anything, so every temp file here is a dead one.
        """
        removed = []
        for folder in (self.path, self.checkpoints):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if _TEMP_FILE.match(name):
                    try:
                        os.unlink(folder / name)
                        removed.append(folder / name)
                    except OSError:
                        pass
        return removed

    # -- files ----------------------------------------------------------------
    @staticmethod
    def json_bytes(data: Any) -> bytes:
        # Strict JSON: a NaN/Inf number is written as null.
        return (json.dumps(clean_json(data), indent=2, allow_nan=False, default=str) + "\n").encode("utf-8")

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_bytes(self.path / name, lambda f: f.write(self.json_bytes(data)))

    def read_json(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return default

    def write_error(self, text: str) -> None:
        atomic_write_text(self.path / "error.txt", text)

    # -- metrics.jsonl --------------------------------------------------------
    #: Bytes held in memory while metrics.jsonl cannot be written (a full disk, a
    #: read-only folder); beyond this, new records are dropped and counted.
    BACKLOG_LIMIT = 64 << 20
    #: append() writes through once this much is pending, even between flushes.
    FLUSH_AT = 1 << 16

    def open_metrics(self, on_error: Callable[[Path, str], None] | None = None) -> None:
        """Open metrics.jsonl for appending; `on_error(path, message)` hears of the first failed write
        of each streak (the records wait in memory and are written once the disk takes them)."""
        path = self.path / "metrics.jsonl"
        _drop_partial_last_line(path)
        self._metrics = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._pending: list[str] = []
        self._pending_size = 0
        self._unwritten = b""  # what a failed or short write left, starting where the file ends
        self._on_error = on_error
        self.metrics_error: str | None = None
        self.dropped_lines = 0

    def append(self, lines: list[str]) -> None:
        if self._metrics is None or not lines:
            return
        size = sum(map(len, lines)) + len(lines)
        if self._pending_size + len(self._unwritten) + size > self.BACKLOG_LIMIT:
            self.dropped_lines += len(lines)
            return
        self._pending.extend(lines)
        self._pending_size += size
        if self._pending_size >= self.FLUSH_AT and self.metrics_error is None:
            self.flush()

    def flush(self) -> None:
        """Write what is pending; a failure keeps it for the next try and is reported once."""
        if self._metrics is None:
            return
        if self._pending:
            self._unwritten += ("\n".join(self._pending) + "\n").encode("utf-8")
            self._pending, self._pending_size = [], 0
        try:
            view = memoryview(self._unwritten)
            while view:
                n = os.write(self._metrics, view)
                view = view[n:]
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            self._unwritten = bytes(view)  # a short write continues exactly where the file ends
            if self.metrics_error is None:
                self.metrics_error = f"{type(exc).__name__}: {exc}"
                if self._on_error is not None:
                    self._on_error(self.path / "metrics.jsonl", self.metrics_error)
            return
        self._unwritten = b""
        self.metrics_error = None

    def close(self) -> None:
        if self._metrics is not None:
            self.flush()
            try:
                os.fsync(self._metrics)
            except OSError:
                pass
            self.dropped_lines += self._unwritten.count(b"\n")  # the disk never took them
            os.close(self._metrics)
            self._metrics = None


def _drop_partial_last_line(path: Path) -> None:
    """A crash can leave half a line at the end; cut it so new lines start clean."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = min(size, 1 << 20)
        f.seek(size - chunk)
        tail = f.read(chunk)
        cut = tail.rfind(b"\n")
        f.truncate(size - chunk + cut + 1 if cut >= 0 else 0)


def read_metrics(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every complete record of metrics.jsonl, skipping a torn or garbled line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                return  # the torn last line of a killed run
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def step_losses(path: str | os.PathLike[str]) -> dict[int, float | None]:
    """step -> loss as the run finally went, honouring resume points."""
    losses: dict[int, float | None] = {}
    for record in read_metrics(path):
        kind = record.get("kind")
        if kind == "step":
            losses[record["step"]] = record.get("loss")
        elif kind == "event" and ((record.get("event") == "started" and record.get("resumed"))
                                  or record.get("rolled_back_to") is not None):
            start = record["step"] if record.get("event") == "started" else record["rolled_back_to"]
            for s in [s for s in losses if s > start]:
                del losses[s]
    return losses
