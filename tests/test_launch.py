"""The dashboard attached to a run in its own process (tui/launch.py, engine/lifeline.py, tui/source.py).

Each test starts tests/attached_viewer.py: the real dashboard (headless, an
auto-pilot for the user) which starts the real run as a child process,
exactly as `tuitrain --preset ...` does in a terminal. What is asserted is what
a user sees: the exit status, the run directory, the run's process.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_until
from cli_helpers import alive
from tuitrain.engine.rundir import read_metrics

HERE = Path(__file__).parent
DEADLINE = 60.0


def viewer(mode: str, run_dir: Path, *args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(HERE / "attached_viewer.py"), mode, str(run_dir), *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def report(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.startswith("VIEWER {")]
    assert lines, out
    return json.loads(lines[-1].split(" ", 1)[1])


def run_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "run.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [r["step"] for r in read_metrics(path) if r.get("kind") == "step"] if path.exists() else []
    return max(steps, default=0)


def summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def end_run(run_dir: Path, pid: int | None = None) -> None:
    """Cleanup: a run a failing test left behind (the pid run.pid names when the test failed before it
    had the pid: a run left training for ever otherwise, taking a core from every later test)."""
    pid = pid if pid is not None else run_pid(run_dir)
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


LONG = ("--preset", "circles", "--epochs", "100000")


def test_q_stops_the_child_run_and_the_dashboard_never_imports_torch(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("quit", R, *LONG, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    got = report(out)
    assert proc.returncode == 0 and got["rc"] == 0, (out, err)
    assert got["torch"] is False and got["libtorch"] is False  # the viewer process: no torch, no libtorch
    assert summary(R)["status"] == "stopped"
    assert "quit from the dashboard" in summary(R)["reason"]
    assert (R / "checkpoints" / "latest.pt").is_file()
    assert "stopped:" in out and f"run dir: {R}" in out  # the final lines, in the shell
    assert "tuitrain: training circles" in (R / "output.log").read_text()  # the run's own output


def test_d_returns_at_once_and_the_same_process_keeps_training(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("detach", R, *LONG, cwd=tmp_path)
    pid = None
    try:
        out, err = proc.communicate(timeout=120)
        got = report(out)
        assert got["rc"] == 0, (out, err)
        assert got["after_press"] < 0.5, got  # d to the shell
        pid = run_pid(R)
        assert pid is not None and alive(pid)
        assert f"detached: training continues in the background (pid {pid}); tuitrain watch {R}" in out
        at_detach = last_step(R)
        wait_until(lambda: last_step(R) > at_detach + 100, DEADLINE, "the run to keep training after d")
        names = [r["event"] for r in read_metrics(R / "metrics.jsonl") if r.get("kind") == "event"]
        assert "stopped" not in names and summary(R) is None  # no restart, nothing ended
        assert run_pid(R) == pid
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: (summary(R) or {}).get("status") == "interrupted", DEADLINE, "the run to end")
    finally:
        end_run(R, pid)


def test_a_killed_dashboard_makes_the_run_save_and_end_interrupted(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("hold", R, *LONG, cwd=tmp_path)
    pid = None
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("VIEWER-SHOWN")
        pid = run_pid(R)
        assert pid is not None
        proc.kill()  # SIGKILL: no handler runs in the dashboard
        killed = time.monotonic()
        proc.wait(timeout=10)
        wait_until(lambda: not alive(pid), DEADLINE, "the run to notice and exit")
        took = time.monotonic() - killed
        s = summary(R)
        assert s is not None and s["status"] == "interrupted" and s["signal"] == signal.SIGHUP, s
        assert (R / "checkpoints" / "latest.pt").is_file()
        assert took < 10, took
    finally:
        end_run(R, pid)
        if proc.poll() is None:
            proc.kill()


def test_sigterm_on_the_dashboard_is_passed_to_the_run_and_its_status_returned(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("hold", R, *LONG, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("VIEWER-SHOWN")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert report(out)["rc"] == 143, (out, err)
        s = summary(R)
        assert s is not None and s["status"] == "interrupted" and s["signal"] == signal.SIGTERM
        assert (R / "checkpoints" / "latest.pt").is_file()
    finally:
        end_run(R)
        if proc.poll() is None:
            proc.kill()


def test_a_crash_in_the_dashboard_leaves_the_run_training_and_says_how_to_reattach(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = viewer("crash", R, *LONG, cwd=tmp_path)
    pid = None
    try:
        out, err = proc.communicate(timeout=120)
        assert report(out)["rc"] == 1, (out, err)
        pid = run_pid(R)
        assert pid is not None and alive(pid)
        assert "a bug in the dashboard" in err + out  # Textual's report of the error
        assert f"the run keeps training (pid {pid}): tuitrain watch {R}" in err
        at_crash = last_step(R)
        wait_until(lambda: last_step(R) > at_crash + 50, DEADLINE, "the run to keep training")
        os.kill(pid, signal.SIGINT)
        wait_until(lambda: (summary(R) or {}).get("status") == "interrupted", DEADLINE, "the run to end")
        assert (R / "checkpoints" / "latest.pt").is_file()
    finally:
        end_run(R, pid)


def test_bad_input_found_by_the_run_is_one_line_and_its_exit_status(tmp_path: Path) -> None:
    """An error only the run can find (it needs torch): the dashboard closes and prints the run's line."""
    R = tmp_path / "R"
    proc = viewer("quit", R, "--preset", "circles", "--device", "cuda:7", cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert report(out)["rc"] == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("tuitrain: error:")]
    assert len(lines) == 1 and "cuda" in lines[0], err


#: The dashboard of `tuitrain --preset ...` with one bug planted in its own code (in this process only:
#: the run it starts is the unchanged `python -m tuitrain.tui.cli`).
CRASHING_DASHBOARD = """
import sys
import tuitrain.tui.app as app

drain = app.TuitrainApp.drain

def buggy(self):
    drain(self)
    if self.state.step >= 50:
        raise RuntimeError("a bug in the dashboard")

app.TuitrainApp.drain = buggy
from tuitrain.tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_crash_in_a_real_terminal_restores_it_and_the_run_trains_on(tmp_path: Path) -> None:
    from test_dashboard_tmux import START_DEADLINE, Tmux, assert_terminal_restored

    (tmp_path / "crash.py").write_text(CRASHING_DASHBOARD)
    command = " ".join(shlex.quote(a) for a in (sys.executable, "crash.py", *LONG, "--run-dir", "R"))
    tmux = Tmux(tmp_path, f"cd {shlex.quote(str(tmp_path))}\n{command}\necho EXIT=$?\nexec sh -i\n")
    R = tmp_path / "R"
    pid = None
    try:
        screen = tmux.wait_text("EXIT=", START_DEADLINE)
        pid = run_pid(R)
        assert pid is not None and alive(pid)
        assert "EXIT=1" in screen and f"the run keeps training (pid {pid}): tuitrain watch R" in screen, screen
        assert_terminal_restored(tmux, "EXIT=1")
        at_crash = last_step(R)
        wait_until(lambda: last_step(R) > at_crash + 50, DEADLINE, "the run to keep training")
    finally:
        tmux.kill()
        end_run(R, pid)


def test_the_dashboards_own_run_that_ended_before_it_attached_is_not_called_a_replay(circles_run: Path) -> None:
    """A run that fails in its first second is over before its dashboard follows it: that is its end
    (the record says how), not a read-only replay of someone else's run (the line pushed the
    traceback off a 40-line screen)."""
    from tuitrain.tui.remote_run import RemoteRun

    own = RemoteRun(circles_run, announce=False)
    own.run()
    assert not [n.text for n in own.notes if "replaying" in n.text]
    assert own.end_event is not None and own.end_event.status == "finished"
    watcher = RemoteRun(circles_run)
    watcher.run()
    assert any("the run is over (finished); replaying it read-only" in n.text for n in watcher.notes)
