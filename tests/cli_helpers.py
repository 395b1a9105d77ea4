"""Helpers for the command-line tests: run the installed `tuitrain` as a user would.

Every run gets cwd=tmp_path and an explicit --run-dir under it, so nothing
lands in the repository. Waiting is always on a condition (a line of output,
a signal handler being installed), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_experiment.py"
TUITRAIN = Path(sys.executable).with_name("tuitrain")

#: circles: 2000 training samples, batch size 16 by default.
CIRCLES_STEPS_PER_EPOCH = 125

EPOCH_LINE = (r"^epoch +(\d+) \| lr \d\.\d\de[+-]\d\d \| train +\d+\.\d{4} \| val \d+\.\d{4} \| "
              r"acc \d\.\d{4} \| [\d,]+ steps/s( \*)?$")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def tuitrain(*args: str | os.PathLike[str], cwd: Path, timeout: float = 120,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script to completion."""
    assert TUITRAIN.exists(), f"the tuitrain console script is not installed next to {sys.executable}"
    return subprocess.run([str(TUITRAIN), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env if env is not None else cli_env(), stdin=subprocess.DEVNULL)


def in_process(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    """tuitrain.tui.cli.main(args) in this process: (return value, stdout, stderr).

    For bad input only (fast: no interpreter start, no torch import); the
    caller has chdir'ed into a temporary folder.
    """
    from tuitrain.tui.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def train_in_process(*args: str | os.PathLike[str], cwd: Path) -> tuple[str, str]:
    """A training run made by tuitrain.tui.cli.main(args) in this process (cwd for its duration):
    (stdout, stderr); fails unless it exits 0.

    For the run directories that tests then read, resume or watch: the same code as the console
    script without the seconds of a new interpreter and its torch import. Tests of what the
    installed command itself does (exit status, signals, imports, output) keep `tuitrain`.
    """
    before = os.getcwd()
    os.chdir(cwd)
    try:
        rc, out, err = in_process(*args)
    finally:
        os.chdir(before)
    assert rc == 0, err
    return out, err


def assert_usage_error(rc: int, stderr: str, *needles: str) -> str:
    """Exit 2 and exactly one line on stderr, 'tuitrain: error: ...' containing each needle."""
    lines = stderr.splitlines()
    assert rc == 2, f"exit {rc}, stderr: {stderr!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("tuitrain: error: "), lines[0]
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a refused command must leave this unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics(path: Path) -> list[dict[str, Any]]:
    from tuitrain.engine.rundir import read_metrics

    return list(read_metrics(path / "metrics.jsonl"))



def write_preset(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source).lstrip())
    return path


class Proc:
    """A running `tuitrain`: stdout and stderr are read line by line in threads."""

    def __init__(self, *args: str | os.PathLike[str], cwd: Path, preexec_fn: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [str(TUITRAIN), *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, env=env if env is not None else cli_env(),
            preexec_fn=preexec_fn)
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, args=(self.popen.stdout, self.out), daemon=True),
                         threading.Thread(target=self._pump, args=(self.popen.stderr, self.err), daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.out:
                    if predicate(line):
                        return line
                if self.popen.poll() is not None and not any(t.is_alive() for t in self._threads):
                    pytest.fail(f"tuitrain exited ({self.popen.returncode}) before the line appeared:\n"
                                f"{''.join(self.out)}{''.join(self.err)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    pytest.fail(f"timed out waiting for a line; stdout so far:\n{''.join(self.out)}")
                self._cond.wait(min(left, 0.5))

    def send(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("tuitrain did not exit in time")
        for t in self._threads:
            t.join(10)
        return rc, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def handles_signal(pid: int, sig: int) -> bool:
    """True once the process has a Python handler for `sig` (Linux: SigCgt in /proc)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False



def reset_sighup() -> None:
    """preexec_fn: give the child the default SIGHUP disposition even if we run under nohup."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def ignore_sighup() -> None:
    """preexec_fn: start the child the way nohup does."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a child not yet reaped has exited for the tests' purpose)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")
