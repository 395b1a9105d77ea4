"""The run's side of --tensorboard: a low-priority helper process writes the event files, fed at the flush.

Encoding TensorBoard records costs interpreter time (protobuf, and the pure-Python
CRC32C of tensorboard's record writer): on a thread of the run it took about 11%
of circles' steps/s on 2 cores, through the GIL. So the run only hands over the
bytes it has just written to metrics.jsonl, at its flush (RunDir.tee), never on
the training step, and a separate process at nice +10 (tui/tensorboard_log.py)
decodes and writes them.

The hand-off never blocks the run and is bounded: a pipe (1 MiB where Linux
allows it) and at most BACKLOG bytes waiting here; a flush that does not fit is
dropped and counted (said once on stderr when the run ends;
`tuitrain export RUN_DIR --tensorboard DIR` writes the whole record again).
The helper ends with the run: when the run closes the pipe (close() waits a
moment for it to write the last records, then kills it), when the run dies (the
kernel closes the pipe), or when its parent is gone. Standard library only.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from . import workers

#: Bytes of records waiting here while the pipe is full; beyond that, flushes are dropped and counted.
BACKLOG = 4 << 20
#: The pipe's size asked for (Linux F_SETPIPE_SZ; 1 MiB is the default limit for a user).
PIPE_SIZE = 1 << 20
#: How much lower the helper's CPU priority is than the run's (nice).
NICE = 10
#: Seconds close() gives the helper to write what is left.
CLOSE_WAIT = 5.0


class TensorBoardFeed:
    """A running helper and the write end of its pipe. `send()` at each flush; `close()` when the run ends."""

    def __init__(self, proc: subprocess.Popen[bytes], fd: int, out_dir: Path) -> None:
        self.proc = proc
        self.out_dir = out_dir
        self._fd: int | None = fd
        self._pending = bytearray()
        self.dropped = 0
        """Record lines not handed to the helper (its pipe and the backlog were full)."""

    @classmethod
    def start(cls, out_dir: Path) -> "TensorBoardFeed | None":
        """Start the helper writing into `out_dir`; None (after a one-line warning) if it cannot start."""
        read_end, write_end = os.pipe()
        try:
            try:
                import fcntl
                if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
                    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except (ImportError, OSError):
                pass  # the default pipe size: the backlog here covers more
            os.set_blocking(write_end, False)
            nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
            proc = subprocess.Popen(
                [sys.executable, "-m", "tuitrain.tui.tensorboard_log", "--live", str(out_dir),
                 "--parent", str(os.getpid()), "--nice", str(nice)],
                stdin=read_end, stdout=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)  # the terminal's Ctrl-C and hangup are the run's to handle
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, nice)  # from its first import on (it also asks itself)
            except OSError:
                pass
        except OSError as exc:
            os.close(write_end)
            print(f"tuitrain: warning: --tensorboard: cannot start the writer: {exc}", file=sys.stderr)
            return None
        finally:
            os.close(read_end)
        workers.parent_only(write_end)  # a forked DataLoader worker must not keep the helper waiting
        return cls(proc, write_end, out_dir)

    def send(self, data: bytes) -> None:
        """Hand over complete record lines; never blocks (what does not fit is dropped and counted)."""
        if self._fd is None or not data:
            return
        if len(self._pending) + len(data) > BACKLOG:
            self.dropped += data.count(b"\n")
            self._write()
            return
        self._pending += data
        self._write()

    def _write(self) -> None:
        """As much of the backlog as the pipe takes now (a short write continues where it stopped)."""
        while self._pending and self._fd is not None:
            try:
                n = os.write(self._fd, self._pending)
            except BlockingIOError:
                return
            except OSError:  # the helper is gone (it said why on stderr): the run goes on without it
                self.dropped += self._pending.count(b"\n")
                self._pending.clear()
                self._close_fd()
                return
            del self._pending[:n]

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """The run's record is complete: pass on what waits, end the pipe, let the helper finish (bounded)."""
        deadline = time.monotonic() + wait
        while self._pending and self._fd is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([], [self._fd], [], min(left, 0.1))
            self._write()
        self.dropped += self._pending.count(b"\n")
        self._pending.clear()
        self._close_fd()
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            print(f"tuitrain: warning: --tensorboard: the writer did not finish within {wait:g} s and was "
                  "stopped; the last records may be missing from its event file", file=sys.stderr)
        if self.dropped:
            print(f"tuitrain: warning: --tensorboard: {self.dropped:,} records were not written live (the "
                  f"writer fell behind or stopped); all of them: tuitrain export {self.out_dir.parent} --tensorboard DIR",
                  file=sys.stderr)

    def _close_fd(self) -> None:
        if self._fd is not None:
            workers.release(self._fd)
            os.close(self._fd)
            self._fd = None
