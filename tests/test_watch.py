"""`tuitrain watch`: the dashboard on a run in another process, steered over its control socket.

Real processes, a real socket and a real run directory: a run started with
`--detach`, watched by the real app in watch mode (App.run_test + Pilot),
and asserted on what the engine wrote (metrics.jsonl, checkpoint files,
summary.json). Every wait polls a condition with a deadline. A background
run is killed in a `finally`, so none outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from cli_helpers import cli_env, in_process, train_in_process, tuitrain
from conftest import wait_until
from dashboard_helpers import (SIZE, FakeSampler, event_names, log_text, run_async, screen_text, status_text,
                               set_lr, step_records, until, wait_event)
from tuitrain.engine.rundir import pid_alive, read_pid, step_losses

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="Unix sockets, SO_PEERCRED")]

#: Starting a background run (interpreter, torch import, data) takes seconds on a busy machine.
START = 90.0
DEADLINE = 30.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """conftest.wait_until with this file's deadline (outside the app's event loop)."""
    return wait_until(predicate, timeout, what, poll=0.05)


def last_step(run_dir: Path) -> int:
    steps = step_records(run_dir)
    return steps[-1]["step"] if steps else 0


def detach(run_dir: Path, cwd: Path, *extra: str) -> int:
    """`tuitrain --preset circles --detach ...`: returns the background run's pid once it serves."""
    p = tuitrain("--preset", "circles", "--detach", "--run-dir", run_dir, *extra, cwd=cwd, timeout=START)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == str(run_dir)
    assert f"tuitrain watch {run_dir}" in p.stdout
    info = read_pid(run_dir)
    assert info is not None and pid_alive(info["pid"])
    return int(info["pid"])


def kill(pid: int | None) -> None:
    """Cleanup: end a background run that a failing test left behind."""
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def watcher(run_dir: Path) -> Any:
    from tuitrain.tui.watch import make_app

    return make_app([run_dir], sampler=FakeSampler())


def test_detach_watch_steer_detach_rewatch_and_stop(tmp_path: Path) -> None:
    R = tmp_path / "R"
    pid = None
    try:
        pid = detach(R, tmp_path, "--epochs", "100000")
        assert (R / "output.log").exists()
        assert Path(f"/proc/{pid}/stat").read_text().split()[5] != str(os.getsid(0))  # its own session

        async def first_watcher() -> None:
            app = watcher(R)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.source.remote.steerable and app.state.step > 0, "the live history")
                assert "watching the live run" in log_text(app)
                await pilot.press("p")
                await wait_event(pilot, R, "paused")
                await until(pilot, lambda: app.state.status == "PAUSED", "PAUSED on the watcher")
                await set_lr(pilot, "0.003")
                change = (await wait_event(pilot, R, "lr_changed"))[0]
                assert change["new_lr"] == 0.003
                await pilot.press("s")
                saved = (await wait_event(pilot, R, "checkpoint", where=lambda r: r["reason"] == "manual"))[0]
                assert (R / "checkpoints" / f"step-{saved['step']}.pt").is_file()
                await until(pilot, lambda: f"step-{saved['step']}.pt" in log_text(app), "the save in the log")
                await pilot.press("p")
                await wait_event(pilot, R, "resumed")
                await pilot.press("q")  # detach the watcher: the run goes on
                await until(pilot, lambda: not app.is_running, "the watcher to exit")
            assert app.return_code == 0

        run_async(first_watcher)
        assert "stopped" not in event_names(R)
        at_detach = last_step(R)
        wait_for(lambda: last_step(R) > at_detach + 200, "the run to keep training after q")
        assert pid_alive(pid)

        async def second_watcher() -> None:
            from tuitrain.tui.remote_run import RemoteRun
            from tuitrain.tui.state import DashboardState

            app = watcher(R)
            # A third watcher at the same time, without a UI: it must end up with the same state.
            third, third_state = RemoteRun(R), DashboardState()
            reader = threading.Thread(target=third.run, daemon=True)
            reader.start()

            def third_caught_up() -> bool:
                third_state.apply_all(third.events.drain())
                return third_state.status == "STOPPED"

            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.source.remote.steerable and app.source.remote.history_loaded.is_set(),
                            "the second watcher to catch up")
                marks = {kind for _, kind, _ in app.state.marks.in_range(0, 10 ** 9)}
                assert {"pause", "lr", "checkpoint"} <= marks  # the first watcher's interventions, from the file
                await pilot.press("x")
                await until(pilot, lambda: app.state.status == "STOPPED", "STOPPED", timeout=DEADLINE)
                await until(pilot, lambda: not app.source.remote.steerable, "steering off after the end")
                assert app.check_action("toggle_pause", ()) is None  # greyed out
                losses = step_losses(R / "metrics.jsonl")
                assert len(app.state.loss) == len(losses)
                assert app.state.loss.last_step == max(losses) == app.state.step
                await until(pilot, third_caught_up, "the third watcher to see the stop")
                assert len(third_state.loss) == len(app.state.loss)
                assert third_state.marks.in_range(0, 10 ** 9) == app.state.marks.in_range(0, 10 ** 9)
                assert third_state.lr == app.state.lr == 0.003
                reader.join(10)
                assert not reader.is_alive()
                await pilot.press("q")
                await until(pilot, lambda: not app.is_running, "the watcher to exit")
            assert app.return_code == 0

        run_async(second_watcher)
        wait_for(lambda: not pid_alive(pid), "the background run's process to exit")
        summary = json.loads((R / "summary.json").read_text())
        assert summary["status"] == "stopped" and summary["reason"] == "stopped from tuitrain watch"
        assert not (R / "control.sock").exists()
        names = event_names(R)
        assert names.index("paused") < names.index("lr_changed") < names.index("resumed") < names.index("stopped")
    finally:
        kill(pid)


CLIENT = textwrap.dedent("""
    import select, sys
    from tuitrain.engine.control import ControlClient
    client = ControlClient.connect(sys.argv[1])
    print("connected", flush=True)
    while not client.closed:  # read everything the run sends, as a watcher does
        select.select([client], [], [], 1.0)
        client.poll()
""")


def test_a_watcher_killed_mid_stream_leaves_the_run_unaffected(tmp_path: Path) -> None:
    R = tmp_path / "R"
    pid = None
    client = None
    try:
        # Long enough that the run is still training after the client's start (its import of the engine
        # takes a second or two), 100 steps with it and 100 after it: at 24 epochs it was at step 2,375 of
        # 3,000 when the client connected, and finished before the last 100.
        pid = detach(R, tmp_path, "--epochs", str(EPOCHS := 80))
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(R)], stdout=subprocess.PIPE, text=True,
                                  env=cli_env(), stdin=subprocess.DEVNULL)
        assert client.stdout.readline().strip() == "connected"
        before = last_step(R)
        wait_for(lambda: last_step(R) > before + 100, "steps while the watcher reads")
        client.kill()  # SIGKILL: no goodbye on the socket
        client.wait(10)
        killed_at = last_step(R)
        wait_for(lambda: last_step(R) > killed_at + 100, "steps after the watcher died")
        wait_for(lambda: not pid_alive(pid), "the run to finish", timeout=120)
        summary = json.loads((R / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["steps"] == EPOCHS * 125 == last_step(R)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        kill(pid)


def test_watching_a_finished_run_is_a_read_only_replay(tmp_path: Path) -> None:
    R = tmp_path / "R"
    train_in_process("--preset", "circles", "--epochs", "3", "--headless", "--run-dir", R, cwd=tmp_path)

    async def body() -> None:
        app = watcher(R)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.state.status == "FINISHED", "FINISHED")
            assert "FINISHED" in status_text(app)
            assert not app.source.remote.steerable
            for action in ("toggle_pause", "set_lr", "save", "stop"):
                assert app.check_action(action, ()) is None, action
            assert app.check_action("leave", ()) is True and app.check_action("quit_run", ()) is False
            assert len(app.state.loss) == 3 * 125 and app.state.loss.last_step == 375
            assert len(app.state.val_loss.points()) == 3
            assert "replaying it read-only" in log_text(app)
            await pilot.press("p")  # greyed out: nothing is sent, nothing changes
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "the watcher to exit")
        assert app.return_code == 0

    before = (R / "metrics.jsonl").read_bytes()
    run_async(body)
    assert (R / "metrics.jsonl").read_bytes() == before


def test_a_run_whose_process_died_is_shown_as_died(tmp_path: Path) -> None:
    R = tmp_path / "R"
    pid = None
    try:
        pid = detach(R, tmp_path, "--epochs", "100000")
        wait_for(lambda: last_step(R) > 300, "some steps")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), "the run's process to die")
    finally:
        kill(pid)
    died_at = last_step(R)

    async def body() -> None:
        app = watcher(R)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.state.status == "DIED", "DIED")
            assert f"the run's process died at step {died_at:,} without a summary" in log_text(app)
            assert app.check_action("toggle_pause", ()) is None
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "the watcher to exit")

    run_async(body)
    assert in_process("runs", tmp_path)[1].splitlines()[1].split()[2] == "died"


def test_watch_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = in_process("watch", "nope")
    assert rc == 2 and err.strip() == "tuitrain: error: no such run directory: nope"
    rc, out, err = in_process("watch")
    assert rc == 2 and "no runs under ./runs" in err and len(err.splitlines()) == 1
    (tmp_path / "plain").mkdir()
    rc, out, err = in_process("watch", "plain")
    assert rc == 2 and "not a run directory" in err
    rc, out, err = in_process("watch", "--bogus")
    assert rc == 2 and len(err.splitlines()) == 1


def test_watch_without_arguments_picks_the_most_recent_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuitrain.tui.watch import pick_runs

    monkeypatch.chdir(tmp_path)
    for name, started in (("circles-a", 100.0), ("circles-b", 300.0), ("circles-c", 200.0)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        (run / "run.pid").write_text(json.dumps({"pid": 1, "started": started}))
    assert pick_runs([]) == [Path("runs") / "circles-b"]


def test_watching_two_runs_overlays_them_read_only(tmp_path: Path) -> None:
    runs = {}
    for name, lr in (("slow-lr", "0.001"), ("fast-lr", "0.03")):
        runs[name] = tmp_path / name
        train_in_process("--preset", "circles", "--epochs", "2", "--lr", lr, "--headless", "--run-dir", runs[name],
                         cwd=tmp_path)

    async def body() -> None:
        from tuitrain.tui.watch import make_app
        from tuitrain.tui.widgets.loss_plot import LossPlot
        from tuitrain.tui.widgets.metric_plot import MetricPlot

        app = make_app([runs["slow-lr"], runs["fast-lr"]], sampler=FakeSampler())
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.state.status == "FINISHED" and app.source.other_states[0].status == "FINISHED",
                        "both runs replayed")
            assert [label for label, _ in app.overlays()] == ["slow-lr", "fast-lr"]
            assert len(app.source.other_states[0].loss) == len(app.state.loss) == 250
            for action in ("toggle_pause", "set_lr", "save", "stop"):
                assert app.check_action(action, ()) is None, action
            # The second run appears only in the two legends (the other panels show the first run).
            await until(pilot, lambda: app.export_screenshot().count("fast-lr") >= 2, "both legends drawn")
            assert app.query_one(LossPlot).drawn_width and app.query_one(MetricPlot).drawn_width
            await pilot.press("question_mark")
            await until(pilot, lambda: "several runs are compared" in screen_text(app.screen), "the help")
            assert "q" in screen_text(app.screen) and "the run keeps training" in screen_text(app.screen)
            await pilot.press("escape")
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "the watcher to exit")

    run_async(body)


def test_watch_progress_shows_the_runs_step_in_its_epoch_across_reads(tmp_path: Path) -> None:
    """The file read in many pieces (as a live run's is): each piece still knows the run's 125 steps/epoch."""
    from tuitrain.engine.events import StepStats
    from tuitrain.tui.remote_run import RemoteRun
    from tuitrain.tui.state import DashboardState

    R = tmp_path / "R"
    train_in_process("--preset", "circles", "--headless", "--max-steps", "300", "--run-dir", R, cwd=tmp_path)
    remote, state = RemoteRun(R, chunk_bytes=2048), DashboardState()
    remote.first_frame.set()
    reader = threading.Thread(target=remote.run, daemon=True)
    reader.start()
    seen: list[tuple[int, int, int]] = []

    def caught_up() -> bool:
        for e in remote.events.drain():
            state.apply_all([e])
            if isinstance(e, StepStats):
                seen.append((e.step, e.epoch_step, e.steps_per_epoch))
        return state.status == "FINISHED"

    wait_until(caught_up, DEADLINE, "the replay to finish")
    remote.close()
    assert (R / "metrics.jsonl").stat().st_size > 8 * 2048 and seen  # read in many pieces
    assert all(spe == 125 and step - 125 * ((step - 1) // 125) == epoch_step for step, epoch_step, spe in seen)
    assert (state.step, state.epoch_step, state.steps_per_epoch) == (300, 50, 125)  # "step 50/125 · total 300"


def test_the_system_panel_of_a_watcher_reports_the_runs_memory_not_its_own(tmp_path: Path) -> None:
    import psutil

    from tuitrain.tui.system import SystemSampler
    from tuitrain.tui.watch import live_pid

    child = subprocess.Popen([sys.executable, "-c", "import sys; b = bytearray(64 << 20); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        other = psutil.Process(child.pid)
        wait_until(lambda: other.memory_info().rss > 60 << 20, DEADLINE, "the child's 64 MB")
        snap = SystemSampler(pid=child.pid).sample_now()
        assert snap.process_label == f"run (pid {child.pid})"
        theirs, ours = other.memory_info().rss, psutil.Process().memory_info().rss
        assert abs(theirs - ours) > 16 << 20  # the test can tell them apart
        assert abs(snap.process_rss_bytes - theirs) < 8 << 20
        assert SystemSampler().sample_now().process_label == "process"
    finally:
        child.kill()
        child.wait()
    R = tmp_path / "R"
    R.mkdir()
    (R / "run.pid").write_text(json.dumps({"pid": os.getpid()}))
    assert live_pid(R) is None  # not live (no socket): that pid may be anyone's by now
