"""`tuitrain --preset ... --nproc-per-node N`: start the group under torchrun, and be its one process to a dashboard.

tuitrain writes no launcher of its own: this process runs PyTorch's, `python -m
torch.distributed.run` (torchrun), with a c10d rendezvous on 127.0.0.1 and the
same command line for every rank (tui/group_member.py). It never imports torch.
It chooses the run directory before the ranks start, so it knows where rank 0
will record; it passes SIGINT, SIGTERM and SIGHUP on to torchrun, which passes
them to every rank (rank 0 turns them into the group's stop at the next sync
step); and it exits with the run's own status (from summary.json), not
torchrun's.

Started by a dashboard (`--lifeline FD`, engine/lifeline.py), it holds the
lifeline for the whole group: it reports the run directory once rank 0 serves
control.sock, copies the ranks' output to where its own goes (RUN_DIR/output.log
from then on), and when the dashboard goes away without `d`, it is a hangup
for the group.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from tuitrain.tui.run_process import UsageError

#: Seconds to wait for rank 0 to serve control.sock before the dashboard is told anyway.
READY_TIMEOUT = 600.0
#: Flags of ours that are not passed on to the ranks.
_LAUNCH_FLAGS = ("--nproc-per-node", "--lifeline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_args(argv: Sequence[str]) -> list[str]:
    """The command line every rank gets: ours without --nproc-per-node N and --lifeline FD (either spelling)."""
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in _LAUNCH_FLAGS:
            skip = "=" not in token
            continue
        out.append(token)
    return out


def _name(spec: str | None) -> str:
    spec = (spec or "run").strip()
    raw = Path(spec).stem if spec.endswith(".py") else spec.split(":")[-1].split(".")[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")[:40].strip("-.")
    return safe or "preset"


def choose_run_dir(preset_spec: str | None, resume: str | None, run_dir: str | None) -> tuple[Path, bool]:
    """Where rank 0 will record, and whether the ranks must be told (--run-dir) or already know it."""
    if resume is not None and Path(resume).is_dir():
        return Path(resume), False
    if run_dir is not None:
        return Path(run_dir), False
    from tuitrain.engine.rundir import new_run_path

    return new_run_path("runs", _name(preset_spec)), True


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            "--rdzv-id", uuid.uuid4().hex, "-m", "tuitrain", *args]


def launch_group(argv: Sequence[str], nproc: int, *, preset_spec: str | None, resume: str | None,
                 run_dir: str | None, lifeline: Any = None, on_hangup: str = "save-exit") -> int:
    """Run the group to its end; the exit status is the run's (README: exit codes)."""
    from tuitrain.engine.rundir import exit_status, read_json

    if nproc < 1:
        raise UsageError(f"--nproc-per-node must be a positive integer, got {nproc}")
    target, tell = choose_run_dir(preset_spec, resume, run_dir)
    args = rank_args(argv) + (["--run-dir", str(target)] if tell else [])
    if "--headless" not in args:
        args.append("--headless")
    if lifeline is not None:
        lifeline.say(phase=f"starting {nproc} ranks (torchrun)")
    # The ranks' output reaches us through a pipe (copied by _copy), so that torchrun's own traceback for
    # the signal we passed it does not end a clean interrupted run; headless, stdout goes straight through.
    pipe = subprocess.PIPE
    # Its own session: a Ctrl-C or a hangup reaches torchrun once, from here (twice, a rank would take the
    # second for "kill me now" and end without its checkpoint).
    # The CPU cores shared out between the ranks (torchrun would otherwise set 1 and say so at length).
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # torchrun imports torch too, which warns where numpy is missing (tuitrain does not need it).
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), "ignore:Failed to initialize NumPy") if w)
    proc = subprocess.Popen(torchrun_command(nproc, args), stdin=subprocess.DEVNULL,
                            stdout=pipe if lifeline is not None else None, stderr=pipe, start_new_session=True,
                            env=env)
    forward = _Forward(proc, on_hangup).install()
    output = _Output(keep=lifeline is not None)
    copiers = [threading.Thread(target=output.copy, args=(stream, fd), name="tuitrain-group-output", daemon=True)
               for stream, fd in ((proc.stdout, 1), (proc.stderr, 2)) if stream is not None]
    for copier in copiers:
        copier.start()
    try:
        if lifeline is not None:
            _report_when_serving(lifeline, proc, target, output)
        code = proc.wait()
    finally:
        forward.restore()
    for copier in copiers:
        copier.join(timeout=5)
    summary = read_json(target / "summary.json")
    if isinstance(summary, dict) and summary.get("world_size", 1) > 1 and isinstance(summary.get("status"), str):
        return exit_status(summary["status"], summary.get("signal"))
    return 2 if code == 2 else (code if 0 <= code < 256 and code != 0 else (1 if code else 0))


def _report_when_serving(lifeline: Any, proc: subprocess.Popen[bytes], target: Path, output: "_Output") -> None:
    """Tell the dashboard the run directory once rank 0 serves its socket (or the group ended)."""
    from tuitrain.engine.control import SOCKET_NAME
    from tuitrain.engine.rundir import PID_NAME

    def serving() -> bool:
        return (target / SOCKET_NAME).exists() and (target / PID_NAME).exists()

    deadline = time.monotonic() + READY_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline and not serving():
        time.sleep(0.05)  # wait-ok: polling for files another process creates, with a deadline
    # Rank 0 serves before its trainer opens metrics.jsonl (as a single run reports ready before step 1),
    # so serving is enough; a group that ended without serving is worth showing only if it recorded.
    if serving() or (target / "metrics.jsonl").exists():
        output.moved(lambda: lifeline.report_ready(target))


class _Output:
    """The ranks' output, line by line, to wherever ours goes (the dashboard's copy of the start, then
    RUN_DIR/output.log, which also gets what came before), without torchrun's own traceback for a
    signal it was sent (a rank's lines never start one unprefixed: torchrun writes `[rankN]: ...`)."""

    def __init__(self, keep: bool) -> None:
        self._lock = threading.Lock()
        self._before: list[tuple[int, bytes]] | None = [] if keep else None

    def moved(self, move: Any) -> None:
        """Our stdout and stderr now go to output.log (`move`): it starts with what was said before."""
        with self._lock:
            move()
            for fd, data in self._before or []:
                _write(fd, data)
            self._before = None

    def copy(self, stream: Any, fd: int) -> None:
        held: list[bytes] = []
        for line in iter(stream.readline, b""):
            if held or line.startswith(b"Traceback (most recent call last):"):
                held.append(line)
                if line[:1].isspace() or line.startswith(b"Traceback"):
                    continue
                block, held = b"".join(held), []
                if b"SignalException" in line:
                    continue  # the agent's report of the signal we forwarded: the run says what happened
                line = block
            self._write(fd, line)
        if held:
            self._write(fd, b"".join(held))

    def _write(self, fd: int, data: bytes) -> None:
        with self._lock:
            _write(fd, data)
            if self._before is not None:
                self._before.append((fd, data))


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


class _Forward:
    """SIGINT, SIGTERM and SIGHUP to torchrun (which passes them to every rank); a lost dashboard is a SIGHUP."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, proc: subprocess.Popen[bytes], on_hangup: str) -> None:
        self.proc = proc
        self.on_hangup = on_hangup
        self._previous: dict[int, Any] = {}

    def install(self) -> "_Forward":
        # A lost dashboard arrives as SIGHUP too: the lifeline's watcher sends it (engine/lifeline.py).
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (TypeError, ValueError):
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP and self.on_hangup == "detach":
            return  # the group keeps training; tuitrain watch RUN_DIR finds it
        self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)
        except (OSError, ProcessLookupError):
            pass
