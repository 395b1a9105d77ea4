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
import fcntl
import json
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .events import clean_json

# engine/checkpoint.py (atomic writes) imports torch: imported where a file is written, so that
# the readers here (`tuitrain runs`, `watch`: viewers, which never import torch) can use this module.


#: The temp files of engine/atomic.py's atomic_write_bytes (".latest.pt.k3j9x_q2.tmp") and the
#: write probe of create(): a killed process can leave one behind; nothing
#: else in a run directory looks like them.
_TEMP_FILE = re.compile(r"^\.(.+\.[A-Za-z0-9_]{8}\.tmp|write-test-\d+)$")


class RunDirError(Exception):
    """The run directory cannot be created or written; one line for the user."""


#: The files a run reads or writes in its directory (and checkpoints/): each must be a regular
#: file, never a link, a folder or a FIFO. (control.sock is a socket, or a link to one for a long path.)
RUN_FILES = ("config.json", "metrics.jsonl", "history.json", "summary.json", "error.txt", "run.pid",
             "output.log", "run.lock")
CHECKPOINT_FILES = ("latest.pt", "best.pt")
LOCK_NAME = "run.lock"
PID_NAME = "run.pid"
LOG_NAME = "output.log"
"""What the run process prints once it serves (a dashboard started it, or --detach did)."""
#: The most of a small run file (summary.json, config.json, run.pid) read_json reads.
JSON_LIMIT = 1 << 20
#: What may be in a folder a new run goes into: what starting a run there leaves before it writes
#: anything of its own (its lock, `--detach`'s log, the empty checkpoints/ folder).
_FRESH = {LOCK_NAME, "output.log", "checkpoints"}
#: Linux's limits on a file name and a whole path, in bytes.
NAME_MAX, PATH_MAX = 255, 4095


def check_path(text: str | os.PathLike[str], what: str) -> Path:
    """A path the user gave, checked before any file call can raise on it (one line, not a traceback)."""
    raw = os.fsencode(text)
    if b"\0" in raw:
        raise RunDirError(f"{what}: the path contains a NUL byte")
    if len(raw) > PATH_MAX:
        raise RunDirError(f"{what}: the path is {len(raw):,} bytes long (at most {PATH_MAX})")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            name = os.fsdecode(part)
            raise RunDirError(f"{what}: a name in the path is {len(part)} bytes long (at most {NAME_MAX}): "
                              f"{name[:24]}...{name[-8:]}")
    return Path(os.fsdecode(raw))


def irregular_files(path: Path) -> list[str]:
    """The run files in `path` that exist but are not regular files (links, folders, FIFOs ...)."""
    bad = []
    for name in (*RUN_FILES, "checkpoints", *(f"checkpoints/{n}" for n in CHECKPOINT_FILES)):
        try:
            mode = os.lstat(path / name).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            bad.append(name)
            continue
        if not (stat.S_ISDIR(mode) if name == "checkpoints" else stat.S_ISREG(mode)):
            bad.append(name)
    return bad


def check_run_files(path: Path) -> None:
    """Refuse a run directory whose files tuitrain would follow out of it or hang on."""
    bad = irregular_files(path)
    if bad:
        raise RunDirError(f"{path}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a regular "
                          f"{'file' if bad != ['checkpoints'] else 'folder'} (a link, a folder or a FIFO); "
                          "tuitrain reads and writes only its own files there")


def foreign_entries(path: Path) -> list[str]:
    """What in `path` a new run would overwrite or mix with (empty when it may start there)."""
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing there yet (or a file: creating the folder says so)
    except OSError as exc:
        raise RunDirError(f"cannot read the run directory {path}: {exc.strerror or exc}") from None
    out = []
    for name in names:
        if name not in _FRESH and not _TEMP_FILE.match(name):
            out.append(name)
        elif name == "checkpoints":
            try:
                if not stat.S_ISDIR(os.lstat(path / name).st_mode) or os.listdir(path / name):
                    out.append(name)
            except OSError:
                out.append(name)
    return out


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.json as rows (an absent file is no rows); a file of another shape is a RunDirError."""
    file = path / "history.json"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        rows = json.loads(text)
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and type(r.get("epoch")) is int for r in rows):
        raise RunDirError(f"{file} is not a list of epoch rows (each with an integer epoch); "
                          "restore it from a backup or remove it, then resume")
    return rows


class RunLock:
    """An exclusive lock on a run directory, held for the run's whole life.

    A POSIX record lock (fcntl F_SETLK) on RUN_DIR/run.lock: the kernel drops
    it when the process ends however it ends (so a dead run's lock is simply
    free again), and a child never inherits it (not a forked DataLoader
    worker, not a spawned background run). Such a lock is also dropped when
    the process closes any descriptor of the file, so this process opens it
    only here, once per directory (the registry below).
    """

    _held: dict[str, "RunLock"] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, fd: int, key: str) -> None:
        self.path, self._fd, self._key = path, fd, key

    @classmethod
    def acquire(cls, path: str | os.PathLike[str]) -> "RunLock":
        """Take the lock (creating run.lock); a RunDirError when another run holds it."""
        path = Path(path)
        key = os.path.realpath(path)
        with cls._guard:
            if key in cls._held:
                raise RunDirError(f"another run in this process is using {path}")
            file = path / LOCK_NAME
            try:
                fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RunDirError(f"cannot lock the run directory {path}: {exc.strerror or exc}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _lock_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    who = f" (pid {holder})" if holder else ""
                    raise RunDirError(f"another tuitrain run{who} is using {path}; watch it with: "
                                      f"tuitrain watch {path}") from None
                raise RunDirError(f"cannot lock the run directory {path}: {exc.strerror or exc}") from None
            lock = cls(path, fd, key)
            cls._held[key] = lock
        return lock

    def release(self) -> None:
        """Let another run have the directory (idempotent)."""
        with self._guard:
            if self._fd < 0:
                return
            self._held.pop(self._key, None)
            os.close(self._fd)  # closing drops the lock
            self._fd = -1

    def remove(self) -> None:
        """Release and delete run.lock: only for a folder this run created and is about to remove."""
        self.release()
        try:
            os.unlink(self.path / LOCK_NAME)
        except OSError:
            pass

    @property
    def held(self) -> bool:
        return self._fd >= 0


def _lock_holder(fd: int) -> int | None:
    """The pid holding the lock on `fd`'s file, as the kernel reports it (None if it cannot say)."""
    import struct

    try:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", answer)
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


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
        self.tee: Callable[[bytes], None] | None = None
        """Also hears every flush's new lines, as bytes (--tensorboard's writer: engine/tensorboard_feed.py)."""

    # -- creation -----------------------------------------------------------
    def claim(self, *, resume: bool) -> RunLock:
        """Lock the directory for this run and check it may be used, before anything is written there.

        A new run goes only into a folder that does not exist or is empty (what
        starting a run leaves aside); a resumed one only where every run file is
        a regular file. The caller holds the returned lock for the run's life.
        """
        if not resume:
            self.refuse_foreign()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from None
        lock = RunLock.acquire(self.path)
        try:
            check_run_files(self.path)
            if not resume:
                self.refuse_foreign()  # again, now that no other run can start here
            self.create(resume=resume)
        except BaseException:
            lock.release()
            raise
        return lock

    def refuse_foreign(self, *, resumable: bool = True) -> None:
        """A new run goes only into a new or empty folder; RunDirError (one line) otherwise.
        `resumable`: the message may offer --resume (a preset's run; not a user's script)."""
        foreign = foreign_entries(self.path)
        if not foreign:
            return
        if any(name in foreign for name in ("metrics.jsonl", "config.json", "summary.json", "checkpoints")):
            offer = f"use --resume {self.path} to continue it, or " if resumable else ""
            raise RunDirError(f"{self.path} already holds a run; {offer}choose another --run-dir")
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirError(f"{self.path} is not empty (it holds {shown}); a new run goes into a new or empty "
                          "folder: choose another --run-dir")

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
        from .atomic import atomic_write_bytes

        atomic_write_bytes(self.path / name, lambda f: f.write(self.json_bytes(data)))

    def write_error(self, text: str) -> None:
        from .atomic import atomic_write_text

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
        self._metrics = _open_metrics(self.path / "metrics.jsonl")
        _drop_partial_last_line(self._metrics)
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
            data = ("\n".join(self._pending) + "\n").encode("utf-8")
            self._unwritten += data
            self._pending, self._pending_size = [], 0
            if self.tee is not None:
                self.tee(data)
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


class Unrecorded(RunDir):
    """A rank other than 0 under torchrun: the same run directory (it reads latest.pt to roll back), but
    rank 0 alone writes the run's files."""

    def create(self, *, resume: bool = False) -> "RunDir":
        return self

    def write_json(self, name: str, data: Any) -> None:
        pass

    def write_error(self, text: str) -> None:
        pass

    def open_metrics(self, on_error: Callable[[Path, str], None] | None = None) -> None:
        pass


def _open_metrics(path: Path) -> int:
    """metrics.jsonl for appending: a regular file of this directory, never a link followed elsewhere."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o666)
    except OSError as exc:
        raise RunDirError(f"cannot open {path}: {exc.strerror or exc} (it must be a regular file, not a link "
                          "or a folder)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is not a regular file; tuitrain writes only its own files there")
    return fd


def _drop_partial_last_line(fd: int) -> None:
    """A crash can leave half a line at the end; cut it so new lines start clean."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    chunk = min(size, 1 << 20)
    tail = os.pread(fd, chunk, size - chunk)
    cut = tail.rfind(b"\n")
    os.ftruncate(fd, size - chunk + cut + 1 if cut >= 0 else 0)


def open_run_file(path: str | os.PathLike[str]) -> Any:
    """Open a run file for reading without following a link or blocking on a FIFO; OSError otherwise.

    For readers of other runs' directories (`tuitrain runs`, `watch`): a link,
    a folder or a FIFO under a run file's name is not read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


def exit_status(status: str, signal: int | None = None) -> int:
    """The one mapping from how a run ended to the process's exit status (README, Exit status).

    0 finished or stopped on purpose; 1 failed (or its process died); 128+N interrupted by signal N.
    """
    if status == "interrupted" and signal:
        return 128 + int(signal)
    return 1 if status in ("failed", "died") else 0
# -- reading a run directory from outside: small JSON files, run.pid, the run's state --------------

def read_json(path: str | os.PathLike[str]) -> Any | None:
    """A small run file (summary.json, config.json, run.pid) as JSON; None when it is missing,
    unreadable, not a regular file (a link or a FIFO is not opened), over JSON_LIMIT or not JSON.

    The one reader for them: viewers ask about runs that may be half written, killed or
    someone else's, and every answer short of valid JSON means "not known".
    """
    try:
        with open_run_file(path) as f:
            data = f.read(JSON_LIMIT + 1)
    except OSError:
        return None
    if len(data) > JSON_LIMIT:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def read_pid(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """run.pid as a dict (pid is an int), None if missing or unreadable."""
    data = read_json(Path(run_dir, PID_NAME))
    if not isinstance(data, dict) or isinstance(data.get("pid"), bool) or not isinstance(data.get("pid"), int):
        return None
    return data


def pid_alive(pid: int) -> bool:
    """os.kill(pid, 0): True if a process with that pid exists (EPERM counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc), None where unknown.

    With the pid it names one process for good: a pid reused by another process has
    another start time.
    """
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat_line = f.read()
        return int(stat_line[stat_line.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def run_process_alive(info: dict[str, Any] | None) -> bool | None:
    """Is the process that run.pid records still running? None when this machine cannot tell.

    True only for the same pid AND the same start time (when run.pid recorded one): an
    orphaned DataLoader worker or a process that reused the pid is not the run.
    """
    if info is None:
        return None
    if info.get("host") not in (None, socket.gethostname()):
        return None  # another machine's pid (a shared file system) cannot be checked here
    pid = info["pid"]
    if not pid_alive(pid):
        return False
    recorded = info.get("proc_start")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        now = process_start(pid)
        if now is not None and now != recorded:
            return False
    return True


def run_state(run_dir: str | os.PathLike[str]) -> str:
    """What a run directory holds now.

    'live'       the control socket accepts connections and run.pid's process (pid and start
                 time) is alive, or run.pid cannot tell (checked first: a resumed run in a
                 directory with an earlier summary.json is live). A socket that answers while
                 run.pid's process is gone is held by an orphan (a DataLoader worker): not live;
    'finished', 'stopped', 'early_stopped', 'interrupted', 'failed' (events.END_STATUSES)
                 summary.json's status (ignored when older than run.pid's start time, i.e. left
                 by an earlier session of a resumed run);
    'died'       no (current) summary, and run.pid's process is gone (or, where that cannot be
                 checked, the socket is stale);
    'unknown'    no summary and no run.pid (an older run, or one that never started), or a pid on
                 another host / a live process that does not serve.
    """
    from .control import probe_socket  # the socket's side of the question (control imports this module)

    path = Path(run_dir)
    probe = probe_socket(path)
    info = read_pid(path)
    alive = run_process_alive(info)
    if probe == "live" and alive is not False:
        return "live"
    summary_path = path / "summary.json"
    summary = read_json(summary_path)
    status = summary.get("status") if isinstance(summary, dict) else None
    try:
        stale_summary = info is not None and summary_path.stat().st_mtime < float(info.get("started", 0)) - 1.0
    except (OSError, ValueError, TypeError):
        stale_summary = False
    if isinstance(status, str) and status and not stale_summary:
        return status
    if info is None:
        return "unknown"
    if alive is None:
        return "died" if probe == "stale" else "unknown"
    return "unknown" if alive else "died"


def process_status(returncode: int | None) -> int:
    """A finished child's Popen returncode as a shell reports it: killed by signal N is 128+N."""
    if returncode is None:
        return 1
    return returncode if returncode >= 0 else 128 - returncode
