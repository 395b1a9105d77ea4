"""Runs that outlive the terminal: start one in the background, or move a live one there.

A background run is the same `tuitrain` command, headless, in its own
session (start_new_session: no controlling terminal, so no SIGHUP when the
SSH connection drops), reading /dev/null and writing RUN_DIR/output.log.
It serves RUN_DIR/control.sock like any run, which is how `tuitrain watch`
finds and steers it, and how we know here that it started.

An in-process run (the dashboard, or a headless run in a terminal) cannot
leave its foreground process; detaching it means: save a checkpoint at this
step (a Stop that behaves like SIGHUP: no evaluation), end, and start
`tuitrain --resume RUN_DIR --headless` in the background, which continues
the same run directory exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tuitrain.engine.rundir import LOG_NAME

#: How long `--detach` waits for the background run to serve its socket (torch import, data, model).
START_TIMEOUT = 60.0

#: The Stop reason of a detach; the run ends 'interrupted' (signal SIGHUP) until the resumed run takes over.
DETACH_SIGNAL = int(getattr(signal, "SIGHUP", 1))


@dataclass
class Started:
    pid: int
    state: str
    """'serving' (the control socket answers), 'exited' (returncode is set) or 'starting' (timed out)."""
    returncode: int | None = None


def child_command(args: Sequence[str]) -> list[str]:
    """The background process: this interpreter and this tuitrain, whatever the PATH says."""
    return [sys.executable, "-m", "tuitrain.tui.cli", *args]


def spawn(args: Sequence[str], run_dir: Path) -> subprocess.Popen[bytes]:
    """Start `tuitrain ARGS` detached: own session, stdin /dev/null, stdout and stderr appended to output.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("TEXTUAL", None)
    with open(run_dir / LOG_NAME, "ab") as log:
        return subprocess.Popen(child_command(args), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env)


def wait_started(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float = START_TIMEOUT) -> Started:
    """Wait (bounded) until the child serves its control socket, or exits."""
    from tuitrain.engine.control import ControlClient, ControlError
    from tuitrain.engine.rundir import read_pid

    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            return Started(proc.pid, "exited", code)
        info = read_pid(run_dir)
        if info is not None and _started_by(info.get("pid"), proc.pid):
            try:
                ControlClient.connect(run_dir, timeout=1.0).close()
                return Started(proc.pid, "serving")
            except ControlError:
                pass
        if time.monotonic() > deadline:
            return Started(proc.pid, "starting")
        time.sleep(0.05)  # wait-ok: poll interval of a bounded wait for the child's socket


def _started_by(pid: object, child: int) -> bool:
    """The run's process is our child, or (--nproc-per-node: the child runs torchrun) its rank 0."""
    if pid == child:
        return True
    if not isinstance(pid, int):
        return False
    import psutil

    try:
        return any(parent.pid == child for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def log_tail(run_dir: Path, lines: int = 20) -> str:
    try:
        text = (run_dir / LOG_NAME).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def background_args(argv: Sequence[str], run_dir: Path, *, resuming_dir: bool) -> list[str]:
    """The command line for the background run: ours without --detach, headless, with its run directory."""
    args = [a for a in argv if not _is_detach_flag(a)]
    args.append("--for-watchers")  # headless, plus what watchers show (cli.py)
    if not resuming_dir and not any(a == "--run-dir" or a.startswith("--run-dir=") for a in args):
        args += ["--run-dir", str(run_dir)]
    return args


def _is_detach_flag(token: str) -> bool:
    # argparse accepts unique prefixes: --det, --deta ... (--de is ambiguous with --device).
    return len(token) >= 5 and "--detach".startswith(token)


def start_detached(argv: Sequence[str], run_dir: Path, *, resuming_dir: bool) -> int:
    """`tuitrain ... --detach`: start the run in the background, say where it is, return the exit status."""
    proc = spawn(background_args(argv, run_dir, resuming_dir=resuming_dir), run_dir)
    started = wait_started(proc, run_dir)
    if started.state == "exited":
        code = started.returncode or 0
        tail = log_tail(run_dir)
        if code != 0:
            print(tail or f"tuitrain: the background run exited with status {code}", file=sys.stderr)
            return code
        print(tail)
        return 0
    note = "" if started.state == "serving" else " (still starting)"
    print(f"{run_dir}")
    print(f"tuitrain: training in the background{note} (pid {started.pid}, log {run_dir / LOG_NAME}); "
          f"watch it with: tuitrain watch {run_dir}")
    return 0


def continue_in_background(run_dir: Path, *, to_terminal: bool, preset: str | None = None) -> int:
    """After an in-process run saved and ended for a detach: resume it in the background.

    `preset` is the run's own preset, named again for the resume (which runs a
    preset file only when the command line names it). The message goes to the
    terminal when there is one, and always to the run's output.log (after
    SIGHUP nobody is left to read the terminal).
    """
    args = ["--resume", str(run_dir), "--for-watchers"] + (["--preset", preset] if preset else [])
    proc = spawn(args, run_dir)
    started = wait_started(proc, run_dir)
    if started.state == "exited":
        message = (f"tuitrain: could not continue in the background (status {started.returncode}); "
                   f"the checkpoint is saved: tuitrain --resume {run_dir}")
        code = 1
    else:
        message = (f"detached: training continues in the background (pid {started.pid}); "
                   f"tuitrain watch {run_dir}")
        code = 0
    _append_log(run_dir, message)
    if to_terminal:
        try:
            print(message, file=sys.stderr if code else sys.stdout, flush=True)
        except (OSError, ValueError):
            pass
    return code


def _append_log(run_dir: Path, message: str) -> None:
    try:
        with open(run_dir / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(message + "\n")
    except OSError:
        pass
