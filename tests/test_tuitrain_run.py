"""`tuitrain run SCRIPT [ARGS ...]`: the user's own script as the run, with the dashboard attached.

What is asserted is what a user sees: the exit status, the lines printed,
the screen (tmux), the run directory the script's tuitrain.attach() writes.
Bad input is answered in this process (main(), no interpreter start). The
launch mechanics run fake scripts that never import torch; the end-to-end
tests run the real examples/train_loop.py, in a real terminal (tmux) where
a dashboard is wanted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import REPO, TUITRAIN, alive, assert_usage_error, cli_env, in_process, snapshot
from conftest import wait_until
from dashboard_helpers import records

EXAMPLE = REPO / "examples" / "train_loop.py"
DEADLINE = 30.0
#: Starting the example (its torch import) takes seconds on a busy machine.
START_DEADLINE = 90.0
STAMP = r"\d{8}-\d{6}(-\d+)?"

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None or sys.platform != "linux",
                                reason="a real terminal (tmux) and POSIX signals")


# -- bad input: one line, exit 2, nothing started or written -----------------------------------

#: (arguments after `tuitrain run`, what the one line says); the files they name are made by _files().
BAD = [
    ([], "no script given"),
    (["nope.py"], "no such script: nope.py"),
    (["folder"], "folder is a folder"),
    (["notes.txt"], "notes.txt is not a .py file"),
    (["--bogus", "train.py"], "unknown option --bogus"),
    (["-m"], "-m needs MODULE"),
    (["-m", "1bad.mod"], "'1bad.mod' is not a module name"),
    (["--run-dir"], "--run-dir needs DIR"),
    (["--run-dir=", "train.py"], "--run-dir needs DIR"),
    (["--run-dir", "taken", "train.py"], "taken already holds a run"),
    (["--run-dir", "busy", "train.py"], "busy is not empty (it holds data.csv)"),
    (["--run-dir", "afile", "train.py"], "afile is not a folder"),
    (["--run-dir", "x" * 300, "train.py"], "a name in the path is 300 bytes long"),
]


def _files(tmp: Path) -> None:
    (tmp / "notes.txt").write_text("not python\n")
    (tmp / "folder").mkdir()
    (tmp / "train.py").write_text("raise SystemExit(0)\n")
    (tmp / "afile").write_text("")
    (tmp / "taken").mkdir()
    (tmp / "taken" / "metrics.jsonl").write_text("")
    (tmp / "taken" / "config.json").write_text("{}")
    (tmp / "busy").mkdir()
    (tmp / "busy" / "data.csv").write_text("1,2\n")


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a)[:30] or "nothing" for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_is_started_or_written(
        args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    before = snapshot(tmp_path)
    rc, out, err = in_process("run", *args)
    assert_usage_error(rc, err, needle)
    assert "--resume" not in err, "a script's run is not resumed by tuitrain"
    assert out == ""
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "runs").exists()


def test_run_help_documents_it_and_tuitrain_help_mentions_it(tmp_path: Path) -> None:
    rc, out, err = in_process("run", "--help")
    assert rc == 0 and err == ""
    assert out.startswith("usage: tuitrain run [--run-dir DIR] [--headless] SCRIPT [ARGS ...]")
    for needle in ("-m MODULE", "tuitrain.attach()", "TUITRAIN_RUN_DIR", "tuitrain watch RUN_DIR",
                   "Exit status: the script's own"):
        assert needle in out, needle
    main_help = subprocess.run([str(TUITRAIN), "--help"], capture_output=True, text=True, cwd=tmp_path,
                               env=cli_env(), timeout=60)
    assert main_help.returncode == 0
    assert "tuitrain run SCRIPT [ARGS ...]" in " ".join(main_help.stdout.split())


# -- headless: the script is the process -----------------------------------------------------

#: A script without torch that says what it was given, and exits with a status of its own.
ECHO = """
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "run_dir": os.environ.get("TUITRAIN_RUN_DIR"),
                  "lifeline": os.environ.get("TUITRAIN_LIFELINE"), "pid": os.getpid()}))
sys.exit(5)
"""


def run_tuitrain(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console script with no terminal (so: headless), to completion."""
    return subprocess.run([str(TUITRAIN), *args], capture_output=True, text=True, cwd=cwd,
                          env=cli_env(**env), stdin=subprocess.DEVNULL, timeout=120)


def said(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_a_terminal_the_script_runs_in_the_foreground_with_its_args_and_status(tmp_path: Path) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    # TUITRAIN_LIFELINE from an outer run must not reach it: headless has no lifeline.
    proc = run_tuitrain("run", "echo.py", "--epochs", "3", "--help", "--run-dir", "theirs", cwd=tmp_path,
                        TUITRAIN_LIFELINE="7")
    assert proc.returncode == 5, proc
    got = said(proc)
    assert got["argv"] == ["--epochs", "3", "--help", "--run-dir", "theirs"]  # after SCRIPT: the script's own
    assert re.fullmatch(re.escape(str(tmp_path / "runs" / "echo-")) + STAMP, got["run_dir"]), got
    assert got["lifeline"] is None
    assert not (tmp_path / "runs").exists()  # attach() creates it; the viewer never does


def test_headless_module_and_run_dir(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "job.py").write_text(ECHO)
    proc = run_tuitrain("run", "--headless", "--run-dir", "out/R", "-m", "pkg.job", "a", "-b", cwd=tmp_path)
    assert proc.returncode == 5, proc
    got = said(proc)
    assert got["argv"] == ["a", "-b"] and got["run_dir"] == str(tmp_path / "out" / "R")
    proc = run_tuitrain("run", "--headless", "-mpkg.job", cwd=tmp_path)
    assert proc.returncode == 5 and re.fullmatch(re.escape(str(tmp_path / "runs" / "job-")) + STAMP,
                                                 said(proc)["run_dir"]), proc


@pytest.mark.slow
def test_headless_example_trains_and_writes_its_run_directory(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE.parent, tmp_path / "examples")
    proc = run_tuitrain("run", "--headless", "examples/train_loop.py", "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and re.fullmatch(r"train_loop-" + STAMP, runs[0].name), runs
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] > 0, summary
    assert "epoch 1: val_loss" in proc.stdout  # the script's own output, straight to its stdout


# -- the dashboard, in a real terminal ----------------------------------------------------------

def pane(tmp: Path, *args: str, pidfile: bool = False) -> Any:
    """A tmux pane running `tuitrain run ARGS` in tmp (tests/test_dashboard_tmux.py's helpers)."""
    from test_dashboard_tmux import Tmux, script

    return Tmux(tmp, script(tmp, "run", *args, pidfile=pidfile))


def exit_line(tmp: Path, tmux: Any, timeout: float = DEADLINE) -> str:
    from test_dashboard_tmux import wait_file

    return wait_file(tmp / "exit", timeout, tmux).strip()


def said_on(screen: str, text: str) -> bool:
    """`text` is on the screen, wherever the terminal wrapped it."""
    return "".join(text.split()) in "".join(screen.split())


def end(pid: int | None) -> None:
    """Cleanup: a script a failing test left behind."""
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


#: A script that never calls tuitrain.attach(): it says what it got (the launch contract), then waits.
SLEEPER = """
import json, os, stat, sys, time
fd = os.environ.get("TUITRAIN_LIFELINE")
seen = {"argv": sys.argv[1:], "run_dir": os.environ.get("TUITRAIN_RUN_DIR"), "pid": os.getpid(),
        "lifeline_is_socket": fd is not None and stat.S_ISSOCK(os.fstat(int(fd)).st_mode),
        "own_session": os.getsid(0) == os.getpid(), "stdin": os.path.realpath("/proc/self/fd/0")}
with open("seen.tmp", "w") as f:
    json.dump(seen, f)
os.replace("seen.tmp", "seen.json")
print("sleeper: working without tuitrain")
time.sleep(600)  # wait-ok: the user's script, working without tuitrain
"""


@needs_tmux
def test_a_script_that_never_attaches_is_named_then_waited_for_and_q_ends_it(tmp_path: Path) -> None:
    from test_dashboard_tmux import assert_terminal_restored

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    tmux = pane(tmp_path, "sleeper.py", "--epochs", "3", "--help")
    pid = None
    try:
        tmux.wait_text("STARTING  sleeper.py…")
        wait_until(lambda: (tmp_path / "seen.json").exists(), DEADLINE, "the script to start")
        seen = json.loads((tmp_path / "seen.json").read_text())
        pid = seen["pid"]
        assert seen["argv"] == ["--epochs", "3", "--help"]
        assert re.fullmatch(re.escape(str(tmp_path / "runs" / "sleeper-")) + STAMP, seen["run_dir"]), seen
        assert seen["lifeline_is_socket"] and seen["own_session"] and seen["stdin"] == "/dev/null", seen
        tmux.wait_text("STARTING  waiting for sleeper.py to call tuitrain.attach()…")
        tmux.keys("q")
        assert exit_line(tmp_path, tmux) == "EXIT=143"  # SIGTERM: it was not a run yet
        screen = tmux.wait_text("EXIT=143")
        assert "sleeper: working without tuitrain" in screen  # what it printed
        assert "sleeper.py had not called tuitrain.attach(); ended it (exit status 143)" in screen
        assert_terminal_restored(tmux, "EXIT=143")
        assert not alive(pid)
        assert not (tmp_path / "runs").exists()
    finally:
        tmux.kill()
        end(pid)


@needs_tmux
def test_a_script_that_exits_before_attaching_closes_the_dashboard_with_its_output_and_status(
        tmp_path: Path) -> None:
    (tmp_path / "fail.py").write_text("import sys\nprint('fail: no data here', file=sys.stderr)\nsys.exit(3)\n")
    tmux = pane(tmp_path, "fail.py")
    try:
        assert exit_line(tmp_path, tmux) == "EXIT=3"
        screen = tmux.wait_text("EXIT=3")
        lines = screen.splitlines()
        at = lines.index("EXIT=3")
        assert lines[at - 2:at] == ["fail: no data here",
                                    "tuitrain: fail.py exited with status 3 before it called tuitrain.attach()"], screen
        assert tmux.pane_flag("alternate_on") == "0"
    finally:
        tmux.kill()


def example_pane(tmp: Path, *args: str, pidfile: bool = False) -> Any:
    shutil.copytree(EXAMPLE.parent, tmp / "examples")
    return pane(tmp, "examples/train_loop.py", *args, pidfile=pidfile)


def wait_training(tmux: Any) -> str:
    """The dashboard shows the script's run: its name, RUNNING, steps counted, the loss drawn."""
    tmux.wait_text("STARTING  train_loop.py…", START_DEADLINE)
    screen = tmux.wait_screen(lambda s: " train_loop · cpu  RUNNING " in s and re.search(r"total [1-9][\d,]*/", s)
                              and "loss · smooth" in s, "the run's loss on screen", START_DEADLINE)
    return screen


def script_pid(run_dir: Path) -> int:
    return int(json.loads((run_dir / "run.pid").read_text())["pid"])


@pytest.mark.slow
@needs_tmux
def test_example_x_stops_the_run_the_dashboard_stays_and_q_exits_0(tmp_path: Path) -> None:
    from test_dashboard_tmux import assert_terminal_restored

    R = tmp_path / "R"
    tmux = example_pane(tmp_path, "--run-dir", "R", "--epochs", "400")
    pid = None
    try:
        wait_training(tmux)
        pid = script_pid(R)
        tmux.keys("x")
        tmux.wait_text("STOPPED")
        tmux.wait_text("press q to quit")
        assert not (tmp_path / "exit").exists()  # x keeps the dashboard open
        tmux.keys("q")
        assert exit_line(tmp_path, tmux) == "EXIT=0"
        screen = tmux.wait_text("EXIT=0")
        assert said_on(screen, f"run dir: {R}")
        assert_terminal_restored(tmux, "EXIT=0")
        assert not alive(pid)  # q waited for the script to exit
    finally:
        tmux.kill()
        end(pid)
    names = [r["event"] for r in records(R) if r.get("kind") == "event"]
    assert "stopped" in names and names[-1] == "ended", names
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["reason"] == "stopped from the dashboard", summary
    assert "epoch 1: val_loss" in (R / "output.log").read_text()  # the script's output, once attached


@pytest.mark.slow
@needs_tmux
def test_example_d_detaches_and_the_script_trains_on(tmp_path: Path) -> None:
    R = tmp_path / "R"
    tmux = example_pane(tmp_path, "--run-dir", "R", "--epochs", "400")
    pid = None
    try:
        wait_training(tmux)
        pid = script_pid(R)
        tmux.keys("d")
        assert exit_line(tmp_path, tmux) == "EXIT=0"
        screen = tmux.wait_text("EXIT=0")
        assert said_on(screen, f"detached: training continues in the background (pid {pid}); tuitrain watch {R}")
        tmux.kill()  # the terminal goes away too: the detached script does not care
        at = max(r["step"] for r in records(R) if r.get("kind") == "step")
        wait_until(lambda: max(r["step"] for r in records(R) if r.get("kind") == "step") > at + 500, DEADLINE,
                   "the script to keep training after d")
        assert alive(pid) and not (R / "summary.json").exists()
    finally:
        tmux.kill()
        end(pid)


@pytest.mark.slow
@needs_tmux
def test_sigterm_on_the_dashboard_reaches_the_script_and_its_status_is_returned(tmp_path: Path) -> None:
    """The example does not handle SIGTERM, so it dies of it: the dashboard still closes at once,
    restores the terminal and exits 143, the script's own status."""
    from test_dashboard_tmux import assert_terminal_restored

    R = tmp_path / "R"
    tmux = example_pane(tmp_path, "--run-dir", "R", "--epochs", "400", pidfile=True)
    pid = None
    try:
        wait_training(tmux)
        pid = script_pid(R)
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGTERM)
        assert exit_line(tmp_path, tmux) == "EXIT=143"
        screen = tmux.wait_text("EXIT=143")
        assert said_on(screen, f"exited with status 143 before its record ended; its output is in {R}/output.log")
        assert_terminal_restored(tmux, "EXIT=143")
        assert not alive(pid)
    finally:
        tmux.kill()
        end(pid)


#: A script with work left after its loop: q stops the loop, and tuitrain waits for the rest.
AFTERWORK = """
import sys, time
import tuitrain
run = tuitrain.attach(total_steps=10**7)
while not run.should_stop:
    run.step(loss=1.0)
    time.sleep(0.002)  # wait-ok: the user's step
run.close()
time.sleep(3)  # wait-ok: the user's work after the loop
open("after.done", "w").write("ok")
sys.exit(6)
"""


@pytest.mark.slow
@needs_tmux
def test_q_stops_the_loop_then_waits_for_the_script_to_finish_and_returns_its_status(tmp_path: Path) -> None:
    from test_dashboard_tmux import assert_terminal_restored

    R = tmp_path / "R"
    (tmp_path / "after.py").write_text(AFTERWORK)
    tmux = pane(tmp_path, "--run-dir", "R", "after.py")
    pid = None
    try:
        tmux.wait_screen(lambda s: " after · cpu  RUNNING " in s and "loss · smooth" in s, "its loss on screen",
                         START_DEADLINE)
        pid = script_pid(R)
        tmux.keys("q")
        screen = tmux.wait_text("tuitrain: waiting for after.py")
        assert said_on(screen, f"waiting for after.py (pid {pid}) to exit; its output goes to {R}/output.log")
        assert not (tmp_path / "exit").exists()
        assert exit_line(tmp_path, tmux) == "EXIT=6"
        assert (tmp_path / "after.done").read_text() == "ok"  # its work after the loop was done
        assert_terminal_restored(tmux, "EXIT=6")
    finally:
        tmux.kill()
        end(pid)
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["reason"] == "quit from the dashboard", summary

#: A script whose attach() cannot record: its run directory already holds a file of the user's.
UNRECORDED = """
import os, sys
import tuitrain
run_dir = os.environ["TUITRAIN_RUN_DIR"]
os.makedirs(run_dir)
open(os.path.join(run_dir, "data.csv"), "w").close()
run = tuitrain.attach()
for epoch in range(3):
    run.step(loss=1.0)
    print(f"unseen: epoch {epoch}", flush=True)
run.close()
sys.exit(4)
"""


@pytest.mark.slow
@needs_tmux
def test_a_script_whose_attach_cannot_record_closes_the_dashboard_and_shows_its_output(tmp_path: Path) -> None:
    (tmp_path / "unrecorded.py").write_text(UNRECORDED)
    tmux = pane(tmp_path, "--run-dir", "R", "unrecorded.py")
    try:
        assert exit_line(tmp_path, tmux, START_DEADLINE) == "EXIT=4"  # the script's own status
        screen = tmux.wait_text("EXIT=4")
        assert said_on(screen, "not recording this run")
        assert said_on(screen, "unrecorded.py trains on without the dashboard")
        assert [line for line in screen.splitlines() if line.startswith("unseen:")] == \
            ["unseen: epoch 0", "unseen: epoch 1", "unseen: epoch 2"], screen
        assert tmux.pane_flag("alternate_on") == "0"
    finally:
        tmux.kill()
    assert sorted(os.listdir(tmp_path / "R")) == ["data.csv"]  # nothing of tuitrain's written there
