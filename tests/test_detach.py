"""Leaving a run training in the background: --detach, the d key, and --on-hangup detach.

The dashboard cases run the installed `tuitrain` in a real terminal (tmux,
as in test_dashboard_tmux.py); the background process is found through the
run directory's run.pid, and killed in a `finally` if a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from conftest import only_slow
from cli_helpers import CIRCLES_STEPS_PER_EPOCH, assert_usage_error, in_process
from test_dashboard_tmux import START_DEADLINE, Tmux, script, wait_file
from test_watch import kill, wait_for
from tuitrain.engine.rundir import pid_alive, read_metrics, read_pid, step_losses
from tuitrain.tui.detach import background_args

BACKGROUND = 120.0


def test_detach_with_bad_input_is_one_line_exit_2_and_starts_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import tuitrain.tui.detach as detach

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(detach, "spawn", lambda *a, **k: pytest.fail("a background run was started"))
    for args, needle in ((["--preset", "nope"], "unknown preset"),
                         (["--preset", "circles", "--lr", "-1"], "--lr"),
                         (["--preset", "circles", "--epochs", "x"], "--epochs"),
                         (["--resume", "nowhere"], "--resume"),
                         (["--preset", "circles", "--on-hangup", "later"], "--on-hangup")):
        rc, out, err = in_process(*args, "--detach")
        assert_usage_error(rc, err, needle)
        assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_a_live_run_cannot_be_resumed_a_second_time(tmp_path: Path) -> None:
    from tuitrain.engine.commands import CommandQueue
    from tuitrain.engine.control import ControlServer

    run = tmp_path / "R"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"not read")
    with ControlServer(run, CommandQueue()):
        rc, out, err = in_process("--resume", run, "--detach")
    assert_usage_error(rc, err, "a live run is training in", f"tuitrain watch {run}")


def test_the_background_command_line() -> None:
    args = background_args(["--preset", "circles", "--det", "--epochs", "3"], Path("runs/x"), resuming_dir=False)
    assert args == ["--preset", "circles", "--epochs", "3", "--for-watchers", "--run-dir", "runs/x"]
    args = background_args(["--resume", "runs/x", "--detach"], Path("runs/x"), resuming_dir=True)
    assert args == ["--resume", "runs/x", "--for-watchers"]
    args = background_args(["--preset", "circles", "--run-dir=R", "--detach"], Path("R"), resuming_dir=False)
    assert args == ["--preset", "circles", "--run-dir=R", "--for-watchers"]


def _assert_kept_training(R: Path, dashboard_pid: int | None, epochs: int) -> int:
    """The run's own process (not the dashboard's) trains on to the end: no restart, no gap; returns its pid."""
    info = wait_for(lambda: (i := read_pid(R)) and i, "run.pid")
    pid = int(info["pid"])
    assert pid != dashboard_pid and "--lifeline" in info["argv"]  # the child the dashboard started
    wait_for(lambda: not pid_alive(pid), "the run to finish", timeout=BACKGROUND)
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "finished", summary
    assert summary["steps"] == epochs * CIRCLES_STEPS_PER_EPOCH
    losses = step_losses(R / "metrics.jsonl")
    assert sorted(losses) == list(range(1, epochs * CIRCLES_STEPS_PER_EPOCH + 1))
    records = list(read_metrics(R / "metrics.jsonl"))
    starts = [r for r in records if r.get("event") == "started"]
    assert [s.get("resumed", False) for s in starts] == [False]  # one run, never stopped and resumed
    assert not [r for r in records if r.get("event") in ("stopped", "interrupted")]
    return pid


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals and a real terminal")
@pytest.mark.parametrize("how", ["d key", pytest.param("SIGHUP", marks=only_slow)])  # SIGHUP: also test_launch.py
def test_detaching_the_dashboard_leaves_the_same_run_process_training(tmp_path: Path, how: str) -> None:
    R = tmp_path / "R"
    epochs = 40  # long enough to press d mid-run, short enough to wait for its end
    args = ["--preset", "circles", "--epochs", str(epochs), "--run-dir", "R"]
    if how == "SIGHUP":
        args += ["--on-hangup", "detach"]
    tmux = Tmux(tmp_path, script(tmp_path, *args, pidfile=True))
    background = None
    try:
        tmux.wait_text("RUNNING", START_DEADLINE)
        tmux.wait_screen(lambda s: "total " in s and "total 0/" not in s, "steps on screen")
        dashboard = int((tmp_path / "pid").read_text())
        if how == "SIGHUP":
            os.kill(dashboard, signal.SIGHUP)
        else:
            tmux.keys("d")
        assert wait_file(tmp_path / "exit", BACKGROUND, tmux).strip() == "EXIT=0"
        background = int(read_pid(R)["pid"])
        if how == "d key":
            tmux.wait_text(f"detached: training continues in the background (pid {background})")
        _assert_kept_training(R, dashboard, epochs)
    finally:
        tmux.kill()
        kill(background)
        info = read_pid(R) if R.exists() else None
        kill(info["pid"] if info else None)
