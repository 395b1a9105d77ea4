"""The lifeline between a dashboard and the run it started.

One Unix socket pair, inherited by the child run process (`--lifeline FD`).
JSON lines, few and small:

  run -> viewer   {"phase": "importing torch"}, {"phase": "building the model"},
                  {"ready": RUN_DIR, "pid": N, "said": [lines printed before]}
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
import threading
from typing import Any, Callable

#: The longest message line either side accepts (they are tiny; anything longer is not ours).
MAX_LINE = 64 * 1024


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
