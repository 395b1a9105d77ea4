"""The control socket: watchers steer a run that outlives its terminal.

A run started with `--detach` (or any run that serves) listens on a Unix
socket in its run directory; `tuitrain watch RUN_DIR` connects to it.
metrics.jsonl stays the source of truth for everything persisted: a watcher
reads it and then follows it. The socket carries only

- commands from watchers to the run (put into the run's CommandQueue, applied
  at the next step boundary and answered by events in metrics.jsonl exactly as
  hotkeys in the run's own dashboard), and
- the LIVE-ONLY events, the ones that never reach metrics.jsonl
  (SchedulePreview, BoundaryGrid frames taken mid-epoch, ProcessStats: the
  run's RSS and CUDA memory), so a watcher can show them too.

So a watcher can never slow the run: the engine writes the file anyway, the
trainer thread only appends the few live-only events per second to one
bounded deque (ControlServer.listener), and one I/O thread fans them out to
bounded per-client queues, dropping the oldest for a client that falls behind
and disconnecting one that stalls.

Protocol v1
-----------
Newline-delimited JSON (UTF-8, one object a line) over a SOCK_STREAM Unix
socket, RUN_DIR/control.sock, mode 0600.

- On connect the server checks the peer's uid (SO_PEERCRED on Linux; other
  platforms rely on the 0600 permissions). A different uid gets one line
  ``{"kind":"error","error":"not the run's owner"}`` and is closed.
- The server's first line::

      {"kind":"hello","protocol":"tuitrain-control","version":1,"pid":1234,"run_dir":"/abs/run/dir"}

- Client -> server, one command a line, with an optional "id" (any JSON value)::

      {"cmd":"pause"}  {"cmd":"resume"}  {"cmd":"toggle_pause"}  {"cmd":"set_lr","lr":0.001}
      {"cmd":"save"}   {"cmd":"evaluate"}  {"cmd":"stop","reason":"..."}

  They become Pause, Resume, TogglePause, SetLR, SaveCheckpoint, Evaluate and
  Stop (reason defaults to "watcher") in the run's CommandQueue. A valid
  command gets no reply on the socket: the engine answers in metrics.jsonl
  (paused, resumed, lr_changed, checkpoint, rejected, stopped ...). The engine
  validates the LR value itself (a bad one is answered by a `rejected`
  event); a value that is not a number is refused here.
  A line that is not a JSON object, an unknown "cmd" or a bad argument gets
  ``{"kind":"error","id":<its id or null>,"error":"..."}``; a line longer than
  64 KiB (MAX_LINE) gets an error line and the client is disconnected. Every
  line is data: "lr" must be a finite number in the float range, "reason" a
  string (kept to MAX_REASON printable characters), the echoed id is bounded
  (MAX_ID); no input ends the I/O thread (it reports an exception once on
  stderr and serves on). Commands go to the bounded CommandQueue with the
  connection as their source (see commands.py: per-connection and overall
  limits, coalescing, drops answered by `rejected` events).
- Server -> client after the hello, nothing but::

      {"kind":"live","event":{...event.to_dict()...}}   a live-only event
      {"kind":"dropped","count":N}                      N live lines were dropped for this
                                                        client (its queue overflowed)
      {"kind":"error","id":...,"error":"..."}           answer to a bad line

- When the run ends (ControlServer.close()) every client sees EOF.

Files in the run directory
--------------------------
control.sock  the socket while the run serves; removed by close(). When
              RUN_DIR/control.sock is too long for a socket address (about
              107 bytes on Linux, 103 on macOS), the socket is bound in a
              private directory (tempfile.mkdtemp, mode 0700) and
              RUN_DIR/control.sock is a SYMLINK to it; ControlClient.connect
              reads the link and connects to its (short) target. close()
              removes the link, the socket and the private directory.
run.pid       JSON {"pid", "started" (unix time), "host", "argv", "proc_start" (the process's
              start time in clock ticks, Linux; with the pid it names the process for good)}, written
              atomically by start() and LEFT IN PLACE by close(): it records
              which process ran the directory. run_state() (engine/rundir.py) combines it with
              summary.json and the socket to tell live / finished / died: a
              socket answered while that process is gone (an orphaned DataLoader
              worker) is not a live run.

Standard library only (no torch, no UI): `tuitrain runs` imports this to
describe many runs quickly.
"""

from __future__ import annotations

import errno
import json
import math
import os
import select
import selectors
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .commands import (Command, CommandQueue, Evaluate, Pause, Resume, SaveCheckpoint, SetLR, Stop,
                       TogglePause, clean_text)
from . import workers
from .events import BoundaryGrid, Event, ProcessStats, SchedulePreview
from .rundir import PID_NAME, pid_alive, process_start, read_pid, run_process_alive, run_state  # noqa: F401

PROTOCOL = "tuitrain-control"
VERSION = 1
SOCKET_NAME = "control.sock"

MAX_LINE = 64 * 1024
"""A client line longer than this (bytes, without the newline) is an error and drops the client."""
MAX_ID = 200
"""Characters of a client's "id" echoed back in an error line."""
MAX_REASON = 200
"""Characters of a stop reason kept."""
MAX_CLIENTS = 32
"""Watchers beyond this get an error line and are closed."""

#: Longest socket path bind/connect take (sun_path less the terminating NUL).
SOCKET_PATH_LIMIT = 107 if sys.platform.startswith("linux") else 103

#: Event types that never reach metrics.jsonl (their records() is always empty).
#: BoundaryGrid is live-only when epoch_end is False; it is checked apart.
LIVE_ONLY_TYPES: frozenset[type] = frozenset({SchedulePreview, ProcessStats})

NOT_OWNER = "not the run's owner"


class ControlError(Exception):
    """Base of the control-socket errors; one line for the user."""


class NoRun(ControlError):
    """No socket: the run finished, or it never served."""


class StaleRun(ControlError):
    """The socket file exists but nobody accepts or answers on it (the run's process died)."""


class ProtocolMismatch(ControlError):
    """The other side speaks another protocol or version."""


class NotOwner(ControlError):
    """Refused: the run belongs to another user."""


# -- commands <-> protocol lines ------------------------------------------------------

_SIMPLE: dict[str, type[Command]] = {cls.name: cls for cls in (Pause, Resume, TogglePause, SaveCheckpoint,
                                                                 Evaluate)}


def command_to_message(command: Command) -> dict[str, Any]:
    """The protocol object for an engine Command (Stop.signal is not sent: a watcher is no signal)."""
    if isinstance(command, SetLR):
        return {"cmd": "set_lr", "lr": command.lr}
    if isinstance(command, Stop):
        return {"cmd": "stop", "reason": command.reason}
    for name, cls in _SIMPLE.items():
        if type(command) is cls:
            return {"cmd": name}
    raise ControlError(f"{type(command).__name__} cannot be sent to a run")


def command_from_message(message: Any) -> Command:
    """The engine Command for a decoded client line; ValueError (the error text) if it is not one.

    Every field is checked as data: "cmd" a known name, "lr" a finite number in the
    float range (an integer of 310 digits is refused here, not converted), "reason" a
    string of at most MAX_REASON characters kept (control characters replaced).
    """
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object")
    name = message.get("cmd")
    if not isinstance(name, str):
        raise ValueError('missing "cmd" (a string)')
    if name in _SIMPLE:
        return _SIMPLE[name]()
    if name == "set_lr":
        return SetLR(_lr_value(message.get("lr")))
    if name == "stop":
        reason = message.get("reason", "watcher")
        if not isinstance(reason, str):
            raise ValueError('stop: "reason" must be a string')
        return Stop(reason=clean_text(reason, MAX_REASON).strip() or "watcher")
    raise ValueError(f"unknown cmd {clean_text(name, 80)!r}")


def _lr_value(lr: Any) -> float:
    """A finite float from a JSON number; ValueError for anything else (the engine checks lr > 0)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f'set_lr needs a number "lr", got {_short(lr)}')
    try:
        value = float(lr)
    except OverflowError:
        raise ValueError(f'set_lr: "lr" is out of range (an integer of {len(str(abs(lr)))} digits)') from None
    if not math.isfinite(value):
        raise ValueError('set_lr: "lr" must be a finite number')
    return value


def _short(value: Any) -> str:
    """A few characters naming a value for an error line (its type when it cannot be shown cheaply)."""
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and abs(value) < 10 ** 30):
        return json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(clean_text(value, 40))
    return {dict: "an object", list: "an array", int: "a huge integer"}.get(type(value), type(value).__name__)


def _parse(raw: bytes) -> Any:
    """One client line as JSON data; ValueError for bad UTF-8, bad JSON, nesting too deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    try:
        return json.loads(text)  # NaN, Infinity and 1e999 decode to floats that _lr_value refuses
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    except ValueError as exc:  # an integer past the digit limit
        raise ValueError(f"not JSON data: {clean_text(exc, 120)}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode("utf-8")


# -- paths ----------------------------------------------------------------------------------

def _too_long(path: str) -> bool:
    return len(os.fsencode(path)) > SOCKET_PATH_LIMIT


def socket_address(run_dir: str | os.PathLike[str]) -> str | None:
    """The address to connect to for RUN_DIR (following the symlink for long paths), None if no socket file."""
    link = os.path.join(os.path.abspath(run_dir), SOCKET_NAME)
    if os.path.islink(link):
        try:
            return os.readlink(link)
        except OSError:
            return None
    return link if os.path.exists(link) else None


def _connect(address: str, timeout: float) -> socket.socket:
    """A connected socket; raises OSError (ConnectionRefusedError, FileNotFoundError, TimeoutError ...)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(timeout, 0.001))
        if _too_long(address):
            # The run directory was reached by a longer path than the server bound (moved, or through
            # a symlinked parent): reach it through /proc instead of chdir, which is process-wide.
            fd = os.open(os.path.dirname(address), os.O_RDONLY)
            try:
                sock.connect(f"/proc/self/fd/{fd}/{os.path.basename(address)}")
            finally:
                os.close(fd)
        else:
            sock.connect(address)
        return sock
    except BaseException:
        sock.close()
        raise


def probe_socket(run_dir: str | os.PathLike[str], timeout: float = 0.5) -> str:
    """'absent' (no socket file), 'live' (someone accepts), 'stale' (refused / gone), 'denied'."""
    address = socket_address(run_dir)
    if address is None:
        return "stale" if os.path.islink(os.path.join(run_dir, SOCKET_NAME)) else "absent"
    try:
        sock = _connect(address, timeout)
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
        return "stale"
    except PermissionError:
        return "denied"
    except OSError as exc:
        if isinstance(exc, (TimeoutError, BlockingIOError)) or exc.errno == errno.EAGAIN:
            return "live"  # bound and listening, its backlog full: alive but busy
        return "stale"
    sock.close()
    return "live"


# -- run.pid (read side and run_state: engine/rundir.py) ---------------------------------------

def _write_pid(run_dir: Path) -> None:
    data = {"pid": os.getpid(), "started": round(time.time(), 3), "host": socket.gethostname(),
            "argv": list(sys.argv), "proc_start": process_start(os.getpid())}
    # Named like the run directory's other temp files, so a killed writer's leftover is cleaned up.
    fd, tmp = tempfile.mkstemp(prefix=f".{PID_NAME}.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / PID_NAME)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- the server -----------------------------------------------------------------------------

def _peer_uid(sock: socket.socket) -> int | None:
    """The connecting process's uid (Linux SO_PEERCRED), None where the platform cannot tell."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i")))
    except OSError:
        return None
    return uid


class _Client:
    __slots__ = ("sock", "queue", "dropped", "out", "inbuf", "since", "closing")

    def __init__(self, sock: socket.socket, queue_size: int) -> None:
        self.sock = sock
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.out = b""
        """Bytes taken from the queue and not yet sent."""
        self.inbuf = b""
        self.since = time.monotonic()
        """When `out` last made progress (or became non-empty)."""
        self.closing = False
        """Send what is in `out`, then disconnect (the oversized-line case)."""


class ControlServer:
    """Owned by the run's process: accepts watchers on RUN_DIR/control.sock.

    ``server.start()`` before the run, ``Trainer(..., listeners=[server.listener])``,
    ``server.close()`` after it. All socket work happens in one daemon I/O thread;
    the trainer thread only calls `listener`, which never blocks.
    """

    def __init__(self, run_dir: str | os.PathLike[str], commands: CommandQueue, *, queue_size: int = 256,
                 stall_timeout: float = 10.0) -> None:
        self.run_dir = Path(os.path.abspath(run_dir))
        self.commands = commands
        self.queue_size = max(1, int(queue_size))
        self.stall_timeout = stall_timeout
        """A client whose socket takes no bytes for this long is disconnected."""
        self.socket_path = self.run_dir / SOCKET_NAME
        self.address: str | None = None
        """Where the socket is bound: socket_path, or a short private path that socket_path links to."""
        self.dropped = 0
        """Live events dropped before the I/O thread could take them (it fell behind); counted
        to every client's `dropped` line too."""
        self._dropped_seen = 0
        self._outbox: deque[Event] = deque(maxlen=self.queue_size)
        self._latest: dict[type, Event] = {}
        self._clients: tuple[_Client, ...] = ()  # replaced, never mutated: the trainer thread reads it
        self._listen: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        self._stop = False
        self._private_dir: str | None = None
        self._bound_ino: int | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._sel: selectors.BaseSelector | None = None
        self.errors = 0
        """Exceptions the I/O thread caught and survived (the first is reported on stderr)."""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind RUN_DIR/control.sock (0600), write run.pid, start the I/O thread.

        A socket left by a dead run is removed; a live run serving the same
        directory makes this raise ControlError.
        """
        if self._thread is not None:
            raise ControlError("the control server is already started")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = probe_socket(self.run_dir)
        info = read_pid(self.run_dir)
        if state == "live" and run_process_alive(info) is False:
            state = "stale"  # answered by an orphan of a dead run (a DataLoader worker): not a run
        if state == "live":
            raise ControlError(f"a live run (pid {(info or {}).get('pid', '?')}) already serves {self.run_dir}")
        if state == "denied":
            raise ControlError(f"{self.socket_path} belongs to another user")
        if state == "stale" or os.path.lexists(self.socket_path):
            _remove_socket(self.socket_path)
        path = str(self.socket_path)
        if _too_long(path):
            sweep_private_dirs()
            # mode 0700; the pid in the name lets a later run remove it should this process be SIGKILLed
            self._private_dir = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-")
            address = os.path.join(self._private_dir, SOCKET_NAME)
        else:
            address = path
        listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                listen.bind(address)
            finally:
                os.umask(old)
            os.chmod(address, 0o600)
            self._bound_ino = os.stat(address).st_ino
            if self._private_dir is not None:
                os.symlink(address, path)
            listen.listen(16)
            listen.setblocking(False)
            _write_pid(self.run_dir)
        except BaseException:
            listen.close()
            self._unlink_own(address)
            raise
        self.address = address
        self._listen = listen
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        for sock in (listen, self._wake_r, self._wake_w):
            workers.parent_only(sock.fileno())
        self._thread = threading.Thread(target=self._serve, name="tuitrain-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the I/O thread, close every client (they see EOF), remove the socket. Idempotent.

        run.pid stays: it records which process ran the directory.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for client in self._clients:
            self._drop(client)
        self._clients = ()
        for sock in (self._listen, self._wake_r, self._wake_w):
            if sock is not None:
                workers.release(sock.fileno())
                sock.close()
        if self.address is not None:
            self._unlink_own(self.address)

    def __enter__(self) -> "ControlServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def clients(self) -> int:
        """Watchers connected now."""
        return len(self._clients)

    # -- the trainer thread ------------------------------------------------------------------
    def listener(self, event: Event) -> None:
        """Trainer listener: hand a live-only event to the I/O thread. O(1), never blocks."""
        kind = type(event)
        if kind not in LIVE_ONLY_TYPES and not (kind is BoundaryGrid and not event.epoch_end):  # type: ignore[attr-defined]
            return
        # The newest of each kind, for watchers that connect later (one reference, no copy).
        self._latest[kind] = event
        if not self._clients:
            return
        outbox = self._outbox
        if len(outbox) == outbox.maxlen:
            self.dropped += 1  # only this thread writes it; the I/O thread reads the growth
        outbox.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._wake_pending or self._wake_w is None:
            return
        self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (the I/O thread will look anyway) or closed

    # -- the I/O thread ------------------------------------------------------------------------
    def _serve(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        assert self._listen is not None and self._wake_r is not None
        sel.register(self._listen, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                try:
                    self._serve_once(sel)
                except Exception as exc:  # never end the server: report once, keep serving
                    self._report(exc)
                    time.sleep(0.05)  # wait-ok: no busy loop should the same error come back at once
        finally:
            self._sel = None
            sel.close()

    def _serve_once(self, sel: selectors.BaseSelector) -> None:
        """One select() round: accept, read and write what is ready; drop stalled clients."""
        pending = [c for c in self._clients if c.out or c.queue]
        timeout = None
        if pending:
            now = time.monotonic()
            timeout = max(0.0, min(c.since for c in pending) + self.stall_timeout - now) + 0.01
        for client in self._clients:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if (client.out or client.queue) else 0)
            try:
                if sel.get_key(client.sock).events != want:
                    sel.modify(client.sock, want, client)
            except KeyError:
                sel.register(client.sock, want, client)
        for key, mask in sel.select(timeout):
            if key.data == "listen":
                self._accept()
            elif key.data == "wake":
                self._take_outbox()
            else:
                self._serve_client(key.data, mask)
        now = time.monotonic()
        for client in self._clients:
            if (client.out or client.queue) and now - client.since > self.stall_timeout:
                self._drop(client)  # stalled: it takes no bytes

    def _serve_client(self, client: _Client, mask: int) -> None:
        """Read and write for one client; whatever goes wrong with it ends that connection only."""
        if client not in self._clients:
            return
        try:
            if mask & selectors.EVENT_READ:
                self._read(client)
            if mask & selectors.EVENT_WRITE and client in self._clients:
                self._write(client)
        except Exception as exc:
            self._report(exc)
            if client in self._clients:
                try:
                    client.sock.send(_line({"kind": "error", "id": None,
                                            "error": "internal error in the control server; disconnecting"}))
                except OSError:
                    pass
                self._drop(client)

    def _report(self, exc: BaseException) -> None:
        """Say once on stderr that the I/O thread caught something (it serves on regardless)."""
        self.errors += 1
        if self.errors > 1:
            return
        try:
            print(f"tuitrain: warning: the control socket caught {type(exc).__name__}: {clean_text(exc, 200)} "
                  "(it keeps serving)", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def _take_outbox(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        self._wake_pending = False
        events = []
        try:
            while True:
                events.append(self._outbox.popleft())
        except IndexError:
            pass
        clients = self._clients
        dropped, self._dropped_seen = self.dropped - self._dropped_seen, self.dropped
        for client in clients:
            client.dropped += dropped
        for event in events:
            try:
                line = b'{"kind":"live","event":' + event.to_json().encode("utf-8") + b"}\n"
            except (TypeError, ValueError):
                continue
            for client in clients:
                self._enqueue(client, line)

    def _enqueue(self, client: _Client, line: bytes) -> None:
        if not client.out and not client.queue:
            client.since = time.monotonic()
        if len(client.queue) >= self.queue_size:
            client.queue.popleft()
            client.dropped += 1
        client.queue.append(line)

    def _accept(self) -> None:
        assert self._listen is not None
        while True:
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            uid = _peer_uid(sock)
            if uid is not None and uid != self._owner_uid():
                _send_and_close(sock, _line({"kind": "error", "error": NOT_OWNER}))
                continue
            if len(self._clients) >= MAX_CLIENTS:
                _send_and_close(sock, _line({"kind": "error", "error": f"too many watchers (at most {MAX_CLIENTS})"}))
                continue
            client = _Client(sock, self.queue_size)
            workers.parent_only(sock.fileno())
            client.out = _line({"kind": "hello", "protocol": PROTOCOL, "version": VERSION, "pid": os.getpid(),
                                "run_dir": str(self.run_dir)})
            # A late watcher still gets the planned LR curve and the current boundary frame.
            for event in list(self._latest.values()):
                try:
                    client.queue.append(b'{"kind":"live","event":' + event.to_json().encode("utf-8") + b"}\n")
                except (TypeError, ValueError):
                    continue
            self._clients = self._clients + (client,)

    def _owner_uid(self) -> int:
        return os.getuid()

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        if client.closing:
            return
        buf = client.inbuf + data
        lines = buf.split(b"\n")
        client.inbuf = lines.pop()
        for raw in lines:
            if len(raw) > MAX_LINE:
                self._oversized(client)
                return
            self._handle(client, raw)
        if len(client.inbuf) > MAX_LINE:
            self._oversized(client)

    def _oversized(self, client: _Client) -> None:
        client.inbuf = b""
        client.closing = True
        client.queue.clear()
        self._enqueue(client, _line({"kind": "error", "id": None,
                                     "error": f"line longer than {MAX_LINE} bytes; disconnecting"}))

    def _handle(self, client: _Client, raw: bytes) -> None:
        raw = raw.strip()
        if not raw:
            return
        ident = None
        try:
            message = _parse(raw)
            if isinstance(message, dict):
                ident = message.get("id")
            command = command_from_message(message)
        except ValueError as exc:
            self._enqueue(client, _line({"kind": "error", "id": _plain(ident), "error": clean_text(exc, 300)}))
            return
        self.commands.put(command, source=client)

    def _write(self, client: _Client) -> None:
        if not client.out:
            parts = []
            if client.dropped:
                parts.append(_line({"kind": "dropped", "count": client.dropped}))
                client.dropped = 0
            while client.queue and len(parts) < 64:
                parts.append(client.queue.popleft())
            client.out = b"".join(parts)
        if not client.out:
            return
        try:
            n = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if n:
            client.out = client.out[n:]
            client.since = time.monotonic()
        if client.closing and not client.out and not client.queue:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients = tuple(c for c in self._clients if c is not client)
        sel = self._sel
        if sel is not None:
            try:
                sel.unregister(client.sock)  # before close: a new client may get the same fd number
            except (KeyError, ValueError, OSError):
                pass
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        workers.release(client.sock.fileno())
        client.sock.close()

    def _unlink_own(self, address: str) -> None:
        """Remove our socket (only if it is still ours), the symlink and the private directory."""
        try:
            if self._bound_ino is not None and os.stat(address).st_ino == self._bound_ino:
                os.unlink(address)
        except OSError:
            pass
        if self._private_dir is not None:
            try:
                if os.path.islink(self.socket_path) and os.readlink(self.socket_path) == address:
                    os.unlink(self.socket_path)
            except OSError:
                pass
            shutil.rmtree(self._private_dir, ignore_errors=True)


def _plain(value: Any) -> Any:
    """An id echoed back: small JSON scalars as they are, anything else as a short description."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2 ** 63 else _short(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_ID else value[:MAX_ID]
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        return _short(value)
    return text[:MAX_ID]


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)  # a short line into an empty socket buffer: never blocks
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


PRIVATE_PREFIX = "tuitrain-"
"""Private socket folders in the temp directory: tuitrain-<pid>-<random>."""


def sweep_private_dirs(limit: int = 1000) -> int:
    """Remove the private socket folders of our runs whose process is gone (SIGKILLed); how many.

    Only folders named tuitrain-<pid>-*, owned by this user, holding nothing but a socket.
    """
    removed = 0
    base = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(PRIVATE_PREFIX)][:limit]
    except OSError:
        return 0
    for name in names:
        pid_text = name[len(PRIVATE_PREFIX):].partition("-")[0]
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        folder = os.path.join(base, name)
        try:
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            for entry in os.listdir(folder):
                target = os.path.join(folder, entry)
                if entry == SOCKET_NAME and stat.S_ISSOCK(os.lstat(target).st_mode):
                    os.unlink(target)
            os.rmdir(folder)
            removed += 1
        except OSError:
            continue
    return removed


def _remove_socket(link: Path) -> None:
    """Remove a dead run's control.sock (and, for a symlink, its target and private directory)."""
    if os.path.islink(link):
        try:
            target = os.readlink(link)
        except OSError:
            target = None
        parent = os.path.dirname(target) if target is not None else ""
        # Only what start() makes: a socket in a private tuitrain-* directory, never another file.
        if target is not None and os.path.basename(parent).startswith("tuitrain-"):
            try:
                if stat.S_ISSOCK(os.lstat(target).st_mode):
                    os.unlink(target)
            except OSError:
                pass
            try:
                os.rmdir(parent)
            except OSError:
                pass
    try:
        os.unlink(link)
    except FileNotFoundError:
        pass


# -- the client -------------------------------------------------------------------------------

class ControlClient:
    """A watcher's connection to a run: send commands, poll live events.

    ``client = ControlClient.connect(run_dir)`` raises NoRun, StaleRun,
    ProtocolMismatch or NotOwner and never waits longer than `timeout`.
    """

    def __init__(self, sock: socket.socket, hello: dict[str, Any], rest: bytes = b"",
                 timeout: float = 2.0) -> None:
        self._sock = sock
        self.hello = hello
        self.timeout = timeout
        self._buf = rest
        self._closed = False

    @classmethod
    def connect(cls, run_dir: str | os.PathLike[str], timeout: float = 2.0) -> "ControlClient":
        deadline = time.monotonic() + timeout
        link = os.path.join(os.path.abspath(run_dir), SOCKET_NAME)
        address = socket_address(run_dir)
        if address is None:
            if os.path.islink(link):
                raise StaleRun(f"{link} points to a socket that is gone (the run's process died)")
            raise NoRun(f"no run serves {os.path.abspath(run_dir)} (finished, or started without a control socket)")
        try:
            sock = _connect(address, timeout)
        except FileNotFoundError:
            if os.path.islink(link):
                raise StaleRun(f"{link} points to a socket that is gone (the run's process died)") from None
            raise NoRun(f"no run serves {os.path.abspath(run_dir)} (it just ended)") from None
        except ConnectionRefusedError:
            raise StaleRun(f"{link} is left by a run that died (nobody accepts)") from None
        except PermissionError:
            raise NotOwner(f"{link}: permission denied (not the run's owner)") from None
        except (TimeoutError, BlockingIOError):
            raise StaleRun(f"{link}: the run did not accept within {timeout:g} s") from None
        except OSError as exc:
            raise StaleRun(f"{link}: {exc.strerror or exc}") from None
        try:
            line, rest = _read_line(sock, deadline)
        except TimeoutError:
            sock.close()
            raise StaleRun(f"{link}: the run did not answer within {timeout:g} s") from None
        except OSError as exc:
            sock.close()
            raise NoRun(f"{link}: the connection closed ({exc.strerror or exc})") from None
        if line is None:
            sock.close()
            raise NoRun(f"{link}: the run closed the connection (it is ending)")
        try:
            hello = json.loads(line)
        except ValueError:
            hello = None
        if isinstance(hello, dict) and hello.get("kind") == "error":
            sock.close()
            if hello.get("error") == NOT_OWNER:
                raise NotOwner(f"{link}: refused, not the run's owner")
            raise ControlError(f"{link}: refused: {hello.get('error')}")
        if (not isinstance(hello, dict) or hello.get("kind") != "hello" or hello.get("protocol") != PROTOCOL
                or hello.get("version") != VERSION):
            sock.close()
            got = (f"{hello.get('protocol')!r} version {hello.get('version')!r}" if isinstance(hello, dict)
                   else repr(line[:80]))
            raise ProtocolMismatch(f"{link} speaks {got}; this tuitrain speaks {PROTOCOL!r} version {VERSION}")
        sock.setblocking(False)
        return cls(sock, hello, rest, timeout)

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        """True once the server closed the connection (the run ended) or close() was called."""
        return self._closed

    def send(self, command: Command) -> None:
        """Send one engine Command; ControlError if the run is gone (or does not take it within timeout)."""
        self.send_message(command_to_message(command))

    def send_message(self, message: dict[str, Any]) -> None:
        """Send one raw protocol object (a command line)."""
        if self._closed:
            raise ControlError("the run has ended (the control connection is closed)")
        data = _line(message)
        deadline = time.monotonic() + self.timeout
        view = memoryview(data)
        try:
            while view:
                try:
                    n = self._sock.send(view)
                    view = view[n:]
                except (BlockingIOError, InterruptedError):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ControlError(f"the run did not take the command within {self.timeout:g} s") from None
                    select.select([], [self._sock], [], left)
        except OSError as exc:
            self._mark_closed()
            raise ControlError(f"the run has ended ({exc.strerror or exc})") from None

    def poll(self) -> list[dict[str, Any]]:
        """Every complete message received so far (non-blocking): 'live', 'dropped' and 'error' dicts."""
        if self._closed and not self._buf:
            return []
        chunks = [self._buf]
        while not self._closed:
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._mark_closed()
                break
            if not data:
                self._mark_closed()
                break
            chunks.append(data)
        buf = b"".join(chunks)
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if self._closed:
            self._buf = b""  # a torn last line from a closed server is dropped
        out = []
        for raw in lines:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict):
                out.append(message)
        return out

    def _mark_closed(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._mark_closed()
        self._buf = b""

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_line(sock: socket.socket, deadline: float) -> tuple[bytes | None, bytes]:
    """The first line (None on EOF) and whatever came after it; TimeoutError past the deadline."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        if not data:
            return None, b""
        buf += data
        if len(buf) > MAX_LINE:
            return buf[:200], b""
    line, _, rest = buf.partition(b"\n")
    return line, rest
