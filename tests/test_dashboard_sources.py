"""The same keys, the same answers, over both sources the dashboard can drive for its own run.

`attached`: the default shape, a real child process started by tui/launch.py
(LaunchedRun); `in-process`: the engine in the app's worker thread
(InProcessRun, --in-process). Each test presses the keys a user presses and
asserts the run's answer in its run directory and on the screen.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from dashboard_helpers import (DEADLINE, FakeSampler, long_cfg, long_preset, run_async, set_lr, step_records,
                               until,
                               wait_event, wait_exit)


@contextlib.asynccontextmanager
async def dashboard_over(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Any, Path]]:
    from tuitrain.tui.app import TuitrainApp

    run_dir = tmp_path / "run"
    if kind == "attached":
        from tuitrain.tui.launch import preset_child, start_child
        from tuitrain.tui.source import LaunchedRun

        proc, lifeline, _out = start_child(preset_child(["--preset", "circles", "--epochs", "100000",
                                                          "--run-dir", str(run_dir)]))
        source: Any = LaunchedRun(proc, lifeline)
    else:
        from tuitrain.engine.trainer import Trainer
        from tuitrain.tui.source import InProcessRun

        proc = None
        source = InProcessRun(Trainer(long_cfg(run_dir=str(run_dir)), long_preset(), run_dir))
    app = TuitrainApp(source, sampler=FakeSampler())
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            yield app, pilot, run_dir
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(60)
        elif not source.done.is_set():
            from tuitrain.engine.commands import Stop

            source.send(Stop(reason="test cleanup"))
            source.done.wait(60)


async def training(pilot: Any, app: Any) -> None:
    """A few steps shown RUNNING (an attached run first imports torch and builds its model: allow longer)."""
    await until(pilot, lambda: app.state.step >= 3 and app.state.status == "RUNNING", "steps", DEADLINE * 3)


@pytest.mark.parametrize("kind", ["attached", "in-process"])
def test_pause_lr_save_stop_quit_answer_the_same_over_both_sources(kind: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with dashboard_over(kind, tmp_path) as (app, pilot, run_dir):
            await training(pilot, app)
            await pilot.press("p")
            await wait_event(pilot, run_dir, "paused")
            await until(pilot, lambda: app.state.status == "PAUSED", "PAUSED on screen")
            await set_lr(pilot, "0.003")
            change = (await wait_event(pilot, run_dir, "lr_changed"))[0]
            assert change["new_lr"] == pytest.approx(0.003)
            await pilot.press("s")
            saved = (await wait_event(pilot, run_dir, "checkpoint", where=lambda r: r["reason"] == "manual"))[0]
            assert (run_dir / "checkpoints" / f"step-{saved['step']}.pt").is_file()
            await pilot.press("p")
            await wait_event(pilot, run_dir, "resumed")
            await until(pilot, lambda: [r for r in step_records(run_dir) if r["step"] > change["step"]],
                        "steps after the LR change")
            used = [r["lr"] for r in step_records(run_dir) if r["step"] > change["step"]]
            assert used and all(lr == pytest.approx(0.003) for lr in used)  # the LR the optimizer used
            await pilot.press("x")
            await until(pilot, lambda: app.state.status == "STOPPED", "STOPPED on screen")
            assert app.check_action("set_lr", ()) is None  # greyed out once the run ended
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0

    run_async(body)


@pytest.mark.parametrize("kind", ["attached", "in-process"])
def test_q_while_training_stops_and_saves_first_over_both_sources(kind: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with dashboard_over(kind, tmp_path) as (app, pilot, run_dir):
            await training(pilot, app)
            await pilot.press("q")
            await wait_exit(pilot, app, DEADLINE * 2)
            stopped = await wait_event(pilot, run_dir, "stopped")
            assert "quit from the dashboard" in stopped[0]["reason"]
        assert app.return_code == 0
        assert (run_dir / "checkpoints" / "latest.pt").is_file()

    run_async(body)


@pytest.mark.parametrize("kind", ["attached", "in-process"])
def test_footer_help_and_palette_offer_the_same_keys_over_both_sources(kind: str, tmp_path: Path) -> None:
    from test_dashboard_newuser import footer_row

    from tuitrain.tui.screens.help_screen import HelpScreen
    from dashboard_helpers import screen_text

    async def body() -> None:
        async with dashboard_over(kind, tmp_path) as (app, pilot, run_dir):
            await training(pilot, app)
            await until(pilot, lambda: "d Detach" in footer_row(app), "the footer with d")
            footer = footer_row(app)
            for key in ("p Pause", "l LR", "s Save", "x Stop", "d Detach", "q Quit", "? Help"):
                assert key in footer, (key, footer)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert "Detach" in titles and "Quit tuitrain" in titles and "Set learning rate" in titles, titles
            assert len(titles) == len(set(titles))
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
            text = screen_text(app.screen)
            assert "the run keeps training in the background" in text and "stops and saves first" in text
            assert "read-only" not in text
            await pilot.press("escape")
            await pilot.press("p")
            await until(pilot, lambda: app.state.status == "PAUSED", "PAUSED")
            await until(pilot, lambda: "p Resume" in footer_row(app), "p Resume in the footer")
            await pilot.press("q")
            await wait_exit(pilot, app, DEADLINE * 2)
        assert app.return_code == 0

    run_async(body)
