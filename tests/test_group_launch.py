"""`tuitrain --preset ... --nproc-per-node N`: tuitrain starts torchrun and the dashboard attaches to the group.

The dashboard is tests/attached_viewer.py (the real app, headless, an auto-pilot for the user), as in
test_launch.py; the group is two gloo ranks of the trace preset (group_helpers.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import alive, assert_usage_error, in_process
from conftest import wait_until
from dashboard_helpers import events_named
from group_helpers import pid, steps_taken, write_preset
from integration_helpers import connect
from test_launch import report, summary, viewer
from tuitrain.engine.commands import Stop
from tuitrain.tui.group_launch import rank_args

GROUP = ("--epochs", "3000", "--nproc-per-node", "2")


@pytest.fixture
def preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRACE_DIR", str(tmp_path / "traces"))
    return write_preset(tmp_path)


def test_the_ranks_get_our_command_line_without_the_launch_flags() -> None:
    assert rank_args(["--preset", "x", "--nproc-per-node", "2", "--lifeline", "7", "--lr", "0.1"]) == \
        ["--preset", "x", "--lr", "0.1"]
    assert rank_args(["--nproc-per-node=4", "--preset", "x"]) == ["--preset", "x"]


@pytest.mark.parametrize("extra,message", [
    (["--nproc-per-node", "0"], "argument --nproc-per-node: must be a positive integer, got 0"),
    (["--nproc-per-node", "two"], "--nproc-per-node: expected an integer, got 'two'"),
    (["--nproc-per-node", "2", "--in-process"], "--in-process"),
])
def test_bad_group_flags_are_one_line(here: Path, extra: list[str], message: str) -> None:
    rc, out, err = in_process("--preset", "circles", *extra, "--run-dir", here / "R")
    assert_usage_error(rc, err, message)
    assert not (here / "R").exists()


def test_q_in_the_dashboard_stops_every_rank_and_the_dashboard_never_imports_torch(
        tmp_path: Path, preset: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("quit", R, "--preset", str(preset), *GROUP, cwd=tmp_path)
    out, err = proc.communicate(timeout=180)
    got = report(out)
    assert proc.returncode == 0 and got["rc"] == 0, (out, err)
    assert got["torch"] is False and got["libtorch"] is False
    s = summary(R)
    assert s["status"] == "stopped" and s["world_size"] == 2
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == s["steps"]
    log = (R / "output.log").read_text()
    assert "group: 2 ranks (torchrun)" in log and "SignalException" not in log


def test_a_killed_dashboard_is_a_hangup_for_the_whole_group(tmp_path: Path, preset: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("hold", R, "--preset", str(preset), *GROUP, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("VIEWER-SHOWN")
        proc.kill()
        proc.communicate()
        ended = wait_until(lambda: summary(R), timeout=60, what="the group to save and end")
        assert ended["status"] == "interrupted" and ended["signal"] == signal.SIGHUP
        assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == ended["steps"]
        assert (R / "checkpoints" / "latest.pt").is_file()
    finally:
        _end_group(R, tmp_path)


def test_d_leaves_the_group_training_and_a_watcher_can_stop_it(tmp_path: Path, preset: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("detach", R, "--preset", str(preset), *GROUP, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=180)
        assert report(out)["rc"] == 0, (out, err)
        at_detach = steps_taken(tmp_path, 1)
        wait_until(lambda: steps_taken(tmp_path, 1) > at_detach + 200, timeout=60,
                   what="both ranks training on after d")
        assert summary(R) is None and not events_named(R, "stopped")
        client = connect(R)
        client.send(Stop(reason="from another terminal"))
        ended = wait_until(lambda: summary(R), timeout=60, what="the group to stop")
        client.close()
        assert ended["status"] == "stopped" and steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1)
    finally:
        _end_group(R, tmp_path)


def test_headless_ctrl_c_saves_every_rank_and_exits_130_without_torchruns_traceback(
        tmp_path: Path, preset: Path) -> None:
    R = tmp_path / "R"
    proc = subprocess.Popen([sys.executable, "-m", "tuitrain", "--preset", str(preset), *GROUP, "--headless",
                             "--run-dir", str(R)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: steps_taken(tmp_path, 1) >= 100, timeout=60, what="both ranks training")
        maps = Path(f"/proc/{proc.pid}/maps")
        if maps.exists():  # the process that stands for the group never loads torch (its ranks do)
            assert "libtorch" not in maps.read_text()
            assert "libtorch" in Path(f"/proc/{pid(tmp_path, 1)}/maps").read_text(), "a rank does"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    s = summary(R)
    assert s["status"] == "interrupted" and s["world_size"] == 2
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == s["steps"]
    assert "Traceback" not in err and "stopping at step" in out + err
    assert took < 20
    # torchrun restarts nothing here (no --max-restarts): the launch's restart marker goes with the run.
    assert not (tmp_path / "runs" / ".torchrun").exists()


def _end_group(R: Path, folder: Path) -> None:
    """Cleanup: ranks a failing test left training would take the cores of every later test."""
    for rank in (0, 1):
        path = folder / "traces" / f"rank{rank}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.startswith('{"pid"'):
                pid = json.loads(line)["pid"]
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_detach_starts_the_group_in_the_background_and_returns(tmp_path: Path, preset: Path) -> None:
    R = tmp_path / "R"
    try:
        done = subprocess.run([sys.executable, "-m", "tuitrain", "--preset", str(preset), *GROUP, "--detach",
                               "--run-dir", str(R)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "training in the background" in done.stdout and summary(R) is None
        at_return = steps_taken(tmp_path, 1)
        wait_until(lambda: steps_taken(tmp_path, 1) > at_return + 100, timeout=60, what="the group training on")
        client = connect(R)
        client.send(Stop(reason="enough"))
        ended = wait_until(lambda: summary(R), timeout=60, what="the group to stop")
        client.close()
        assert ended["status"] == "stopped" and ended["world_size"] == 2
    finally:
        _end_group(R, tmp_path)


class _Lifeline:
    def __init__(self) -> None:
        self.ready: list[Path] = []

    def report_ready(self, run_dir: Path) -> None:
        self.ready.append(run_dir)


class _Proc:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


@pytest.mark.parametrize("files,code,told", [
    # Rank 0 serves control.sock before its trainer opens metrics.jsonl: the dashboard must be told then
    # (it was not, and the dashboard waited for ever: the q and d tests' timeouts in CI).
    (("control.sock", "run.pid"), None, True),
    (("metrics.jsonl",), 1, True),  # the group ended after it recorded: there is a record to show
    ((), 2, False),  # it ended before it started (a usage error): nothing to attach to
])
def test_the_dashboard_is_told_the_run_directory_once_rank_0_serves(
        tmp_path: Path, files: tuple[str, ...], code: int | None, told: bool) -> None:
    from tuitrain.tui.group_launch import _Output, _report_when_serving

    for name in files:
        (tmp_path / name).write_text("{}")
    lifeline = _Lifeline()
    _report_when_serving(lifeline, _Proc(code), tmp_path, _Output(keep=True))  # type: ignore[arg-type]
    assert lifeline.ready == ([tmp_path] if told else [])
