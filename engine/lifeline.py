"""The lifeline between a dashboard and the run it started.

One Unix socket pair, inherited by the child run process: `--lifeline FD` for
a preset run, the TUITRAIN_LIFELINE environment variable for a user's script
started by `tuitrain run` (engine/attach.py). Standard library only: the
viewer imports the same module.
JSON lines, few and small:

  run -> viewer   {"phase": "importing torch"}, {"phase": "building the model"}, {"phase": "attaching"},
                  {"ready": RUN_DIR, "pid": N, "said": [lines printed before]}
                  {"failed": TEXT}   (a user's script whose attach() could not record: it trains on unseen)
  viewer -> run   {"detach": true}   (d: keep training without me)

Its real job is the end of the line: when the viewer process dies in any
way (SIGKILL included) the kernel closes its end, and the run reads EOF at
once. Unless the viewer detached first, the run treats that as a hangup
(SIGHUP to itself: save and end interrupted, or keep training with
`--on-hangup detach`), so it never trains on with nobody able to find it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable

#: The longest message line either side accepts (they are tiny; anything longer is not ours).
MAX_LINE = 64 * 1024
#: `tuitrain run` tells the user's script where its lifeline and its run directory are.
LIFELINE_ENV = "TUITRAIN_LIFELINE"
RUN_DIR_ENV = "TUITRAIN_RUN_DIR"


def pair() -> tuple["ViewerEnd", int]:
    """A connected pair: the viewer's end, and the descriptor the child inherits (close it after the spawn)."""
    viewer, run = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    viewer.set_inheritable(False)
    run.set_inheritable(True)
    fd = run.detach()
    return ViewerEnd(viewer), fd


def _send(sock: socket.socket, message: dict[str, Any]) -> bool:
    """One line; False when the other side is gone (never raises, never blocks for long)."""
    data = (json.dumps(message) + "\n").encode()
    try:
        sock.sendall(data, socket.MSG_NOSIGNAL)
        return True
    except OSError:
        return False


class _Lines:
    """Bytes from a socket into JSON objects, bounded."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                out.append(message)
        if len(self._buf) > MAX_LINE:
            self._buf = b""
        return out


class ViewerEnd:
    """The dashboard's end: read what the run says while it starts, tell it to stay on detach."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lines = _Lines()
        self._queued: list[dict[str, Any]] = []
        self.eof = False

    def read(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Messages that arrived (waiting up to `timeout` for the first)."""
        out, self._queued = self._queued, []
        if self.eof or out:
            return out
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            while ready:
                data = self.sock.recv(65536)
                if not data:
                    self.eof = True
                    break
                out.extend(self._lines.feed(data))
                ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            self.eof = True
        return out

    def pending(self) -> bool:
        """Something is still unread (the run may have said ready just before it exited)."""
        if self.eof:
            return False
        self._queued.extend(self.read(0.0))
        return bool(self._queued)

    def detach(self) -> None:
        _send(self.sock, {"detach": True})

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RunEnd:
    """The run's end, in the child process: say how starting goes; notice when the viewer is gone."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self.detached = threading.Event()
        """The viewer said d: its going away is no longer a hangup."""
        self._thread: threading.Thread | None = None

    def say(self, **message: Any) -> None:
        _send(self.sock, message)

    def report_ready(self, run_dir: Path) -> None:
        """The run serves its socket: from now on its output goes to RUN_DIR/output.log, and the
        dashboard attaches (it shows what was printed before from its own copy)."""
        from .rundir import LOG_NAME

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            fd = os.open(Path(run_dir) / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass  # the output stays where it was; the run itself is unaffected
        self.say(ready=str(run_dir), pid=os.getpid())

    def watch(self, on_lost: Callable[[], None] | None = None) -> None:
        """Start the thread that waits for the viewer's end to close. By default a lost viewer is SIGHUP
        to ourselves, in the main thread, where the run's SignalRelay applies the hangup policy."""
        callback = on_lost or (lambda: os.kill(os.getpid(), signal.SIGHUP))
        self._thread = threading.Thread(target=self._wait, args=(callback,), name="tuitrain-lifeline",
                                        daemon=True)
        self._thread.start()

    def _wait(self, on_lost: Callable[[], None]) -> None:
        lines = _Lines()
        while True:
            try:
                data = self.sock.recv(4096)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            for message in lines.feed(data):
                if message.get("detach"):
                    self.detached.set()
        if not self.detached.is_set():
            on_lost()


def open_run_end(fd: int) -> RunEnd:
    """The run's end from an inherited descriptor; ValueError (one line) when it is not a dashboard's socket.

    Never takes over stdio or a file as if it were the dashboard's socket.
    """
    try:
        is_socket = fd > 2 and stat.S_ISSOCK(os.fstat(fd).st_mode)
    except (OSError, OverflowError):
        is_socket = False
    if not is_socket:
        raise ValueError(f"{fd}: not the socket of a dashboard (it is passed by tuitrain itself)")
    try:
        return RunEnd(fd)
    except OSError as exc:
        raise ValueError(f"{fd}: not an open socket ({exc.strerror or exc})") from None
