"""The dashboard on a user's own loop (tuitrain.attach): what it shows, and its keys steering the loop.

The loop trains in a thread of this process; the real app (tuitrain watch's make_app) attaches
to it through metrics.jsonl and control.sock, driven by Pilot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboard_helpers import (SIZE, FakeSampler, log_text, progress_text, run_async, set_lr, status_text,
                               until,
                               wait_event)
from integration_helpers import records
from test_attach import Loop


def test_the_keys_steer_a_users_loop_and_the_panels_say_what_it_cannot_know(tmp_path: Path) -> None:
    from tuitrain.tui.watch import make_app
    from tuitrain.tui.widgets.lr_plot import LRPlot

    R = tmp_path / "R"
    loop = Loop(R, total_steps=None).start()  # the planned total is not known to the dashboard

    async def body() -> None:
        app = make_app([R], sampler=FakeSampler())
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.source.remote.steerable and app.state.step > 0, "the live loop")
            log = log_text(app)
            assert "(your own loop) started on cpu" in log and "train /" not in log
            await until(pilot, lambda: "steps/s" in progress_text(app), "the speed")
            progress = progress_text(app)
            assert "samples/s" not in progress, progress
            assert "RUNNING" in status_text(app) and "ETA" not in status_text(app), status_text(app)
            await until(pilot, lambda: "no plan" in str(app.query_one(LRPlot).border_title), "the LR panel's note")
            await pilot.press("p")
            await wait_event(pilot, R, "paused")
            held = loop.steps
            # 3x the LR on screen: the StepLR has halved it many times by now (0.02 could be a >100x jump
            # the dialog asks to confirm), and the step it is at depends on this machine's speed.
            target = float(f"{app.state.lr * 3:.3g}")
            await set_lr(pilot, f"{target:g}")
            change = (await wait_event(pilot, R, "lr_changed"))[0]
            assert loop.steps == held, "paused means the loop waits inside run.step()"
            await pilot.press("p")
            await wait_event(pilot, R, "resumed")
            await until(pilot, lambda: loop.steps > held + 10, "steps after resuming")
            assert loop.used[held][0] == pytest.approx(target)
            assert change["multiplier"] == pytest.approx(target / loop.used[held][1])  # over the schedule then
            await pilot.press("x")
            await wait_event(pilot, R, "stopped")
            await until(pilot, lambda: app.state.status == "STOPPED", "STOPPED on the dashboard")
            assert "tip:" not in log_text(app), "no 'tuitrain --preset' tip for a user's loop"
            await pilot.press("q")

    try:
        run_async(body)
    finally:
        loop.end()
    loop.join()
    assert json.loads((R / "summary.json").read_text())["status"] == "stopped"
    assert [r["event"] for r in records(R) if r.get("event") in ("paused", "lr_changed", "resumed", "stopped")] == \
        ["paused", "lr_changed", "resumed", "stopped"]
