"""The dashboard's keys, driven with the Pilot against the real engine.

Every test presses keys in a live TuitrainApp and then asserts the engine's
answer: the events it wrote to metrics.jsonl, the files in the run directory,
the learning rate it actually used in the following steps, and the app's exit
status. Screen text is checked too, but never alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard_helpers import (FakeSampler, FakeTrainer, dashboard, event_names, events_named, log_text,
                               long_cfg, long_preset, make_trainer, progress_text, run_async, screen_text,
                               set_lr, status_text, step_records, ticks, until, wait_event, wait_exit, wait_running,
                               wait_steps_after, widget_text)
from tuitrain.tui.source import InProcessRun
from tuitrain.engine import events as ev
from tuitrain.tui.screens.help_screen import HelpScreen
from tuitrain.tui.screens.lr_dialog import LRDialog, parse_lr

STEERING_ACTIONS = ("toggle_pause", "set_lr", "save", "stop")


def _status_word(app) -> str:
    """The status word as the status bar shows it (the whole bar's text, which names it once)."""
    text = status_text(app)
    words = [w for w in ("RUNNING", "PAUSED", "STOPPED", "FINISHED", "FAILED") if f" {w} " in text]
    return words[0] if len(words) == 1 else text


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- p: pause / resume -------------------------------------------------------------------

def test_p_pauses_the_engine_and_p_again_resumes(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await pilot.press("p")
            paused = (await wait_event(pilot, R, "paused"))[0]
            assert paused["reason"] == "user"
            await until(pilot, lambda: app.state.status == "PAUSED", "PAUSED in the state")
            await until(pilot, lambda: _status_word(app) == "PAUSED", "PAUSED on the status bar")
            # The step count stands still: the engine, the file and the screen agree.
            await until(pilot, lambda: app.state.step == paused["step"], "the dashboard to catch up")
            before = (trainer.step, app.state.step, len(step_records(R)))
            await ticks(pilot, sampler, 2)
            after = (trainer.step, app.state.step, len(step_records(R)))
            assert before == after == (paused["step"], paused["step"], paused["step"])
            assert app.state.status == "PAUSED"
            # Saving still works while paused, at the paused step.
            await pilot.press("s")
            saved = (await wait_event(pilot, R, "checkpoint", where=lambda r: r["reason"] == "manual"))[0]
            assert saved["step"] == paused["step"]
            assert _load(R / "checkpoints" / f"step-{paused['step']}.pt")["step"] == paused["step"]
            assert trainer.step == paused["step"] and app.state.status == "PAUSED"

            await pilot.press("p")
            resumed = (await wait_event(pilot, R, "resumed"))[0]
            assert resumed["step"] == paused["step"]
            assert resumed["paused_seconds"] > 0
            await until(pilot, lambda: app.state.status == "RUNNING", "RUNNING again")
            await until(pilot, lambda: app.state.step > paused["step"] + 3, "steps to move again")
            await until(pilot, lambda: _status_word(app) == "RUNNING", "RUNNING on the status bar")
            assert "paused at step" in log_text(app) and "resumed at step" in log_text(app)
            assert "rejected" not in event_names(R)

    run_async(body)


# -- l: set the learning rate -------------------------------------------------------------

def test_l_sets_the_learning_rate_used_by_the_following_steps(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)  # SGD, constant LR 0.05
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            assert all(r["lr"] == pytest.approx(0.05, rel=1e-12) for r in step_records(R))

            await set_lr(pilot, "0.001")
            change = (await wait_event(pilot, R, "lr_changed"))[0]
            assert not isinstance(app.screen, LRDialog)  # accepted: the dialog closed
            assert change["new_lr"] == 0.001
            assert change["old_lr"] == pytest.approx(0.05, rel=1e-12)
            after = await wait_steps_after(pilot, R, change["step"], n=5)
            assert [r["lr"] for r in after] == pytest.approx([0.001] * len(after), rel=1e-12)
            before = [r for r in step_records(R) if r["step"] <= change["step"]]
            assert before and all(r["lr"] == pytest.approx(0.05, rel=1e-12) for r in before)
            await until(pilot, lambda: app.state.lr == pytest.approx(0.001, rel=1e-12), "the new LR in the state")
            await until(pilot, lambda: "learning rate 0.05 -> 0.001" in log_text(app), "the change in the log")
            await until(pilot, lambda: "lr 1.000e-03" in progress_text(app),
                        "the new LR in the progress panel")

            # Scientific notation works too.
            await set_lr(pilot, "2e-3")
            second = (await wait_event(pilot, R, "lr_changed", count=2))[1]
            assert second["new_lr"] == 0.002
            assert second["old_lr"] == pytest.approx(0.001, rel=1e-12)
            after = await wait_steps_after(pilot, R, second["step"], n=5)
            assert [r["lr"] for r in after] == pytest.approx([0.002] * len(after), rel=1e-12)
            assert "rejected" not in event_names(R)

    run_async(body)


BAD_LR = ["", "0", "-1", "nan", "inf", "abc", "xsplq?"]


def test_l_rejects_bad_input_in_the_dialog_and_esc_cancels(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            dialog = app.screen
            field = dialog.query_one("#lr-input")
            message = dialog.query_one("#lr-message")
            hint = widget_text(message)
            for text in BAD_LR:
                field.value = ""
                # Typed key by key: letters that are hotkeys elsewhere (x s p l q ?) are just text here.
                if text:
                    await pilot.press(*text)
                    assert not message.has_class("-error")  # editing clears the previous error
                assert field.value == text
                await pilot.press("enter")
                await until(pilot, lambda: message.has_class("-error"), f"an error for {text!r}")
                assert app.screen is dialog, f"the dialog closed on {text!r}"
                shown = widget_text(message)
                assert shown != hint and shown, text
                with pytest.raises(ValueError) as info:
                    parse_lr(text)
                assert shown == str(info.value)
            start_step = trainer.step
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, LRDialog), "Esc to close the dialog")
            # Training went on undisturbed, at the same LR, with no answer to anything typed.
            await until(pilot, lambda: app.state.step > start_step + 3, "training to go on")
            names = event_names(R)
            for name in ("lr_changed", "rejected", "checkpoint", "stopped", "paused"):
                assert name not in names, names
            assert all(r["lr"] == pytest.approx(0.05, rel=1e-12) for r in step_records(R))
            assert app.state.status == "RUNNING"
            assert not trainer.commands.pending()

            # Esc on a fresh dialog: no event either.
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog again")
            await pilot.press(*"0.5")
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, LRDialog), "Esc to close the dialog")
            await ticks(pilot, sampler, 2)
            assert "lr_changed" not in event_names(R)

    run_async(body)


def _oracle(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


_numberish = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats().map(lambda v: f"{v:e}"),
    st.from_regex(r"\A[ \t]*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?[ \t\n]*\Z"),
    st.sampled_from(["nan", "-inf", "Infinity", "1_000", "0x10", "1e-3", " 1E-3 ", "+.5", "0.0", "-0",
                     "1e400", "1e-400", "5e-324", "\u0661", "1,5", "1e", "e3", "--1"]),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _numberish))
def test_parse_lr_accepts_exactly_the_positive_finite_floats(text: str) -> None:
    expected = _oracle(text)
    if expected is None:
        with pytest.raises(ValueError) as info:
            parse_lr(text)
        assert str(info.value)  # a message for the user
    else:
        assert parse_lr(text) == expected


def test_l_with_a_huge_lr_is_refused_not_turned_into_an_infinite_multiplier(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await set_lr(pilot, "1e308", confirm=True)
            await until(pilot, lambda: events_named(R, "lr_changed") or events_named(R, "rejected"),
                        "an answer to the LR change")
            step = trainer.step
            await until(pilot, lambda: not app.state.running or len(
                [r for r in step_records(R) if r["step"] > step]) >= 3, "steps after the change, or the end")
            # Refused (a 'rejected' event), or applied with a finite multiplier and a finite LR.
            for change in events_named(R, "lr_changed"):
                assert change["multiplier"] is not None and math.isfinite(change["multiplier"])
            assert all(math.isfinite(g["lr"]) for g in trainer.optimizer.param_groups)

    run_async(body)


# -- s: save a checkpoint ------------------------------------------------------------------

def test_s_saves_a_loadable_step_checkpoint(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await pilot.press("s")
            saved = (await wait_event(pilot, R, "checkpoint", where=lambda r: r["reason"] == "manual"))[0]
            step = saved["step"]
            path = R / "checkpoints" / f"step-{step}.pt"
            assert Path(saved["path"]) == path
            assert path.exists() and saved["bytes"] == path.stat().st_size
            state = _load(path)
            assert state["step"] == step
            assert {"model_state_dict", "optimizer_state_dict", "lr_multiplier", "rng", "config"} <= state.keys()
            await until(pilot, lambda: f"step-{step}.pt" in log_text(app), "the checkpoint in the event log")
            await until(pilot, lambda: app.state.step > step, "training to go on after the save")
            assert app.state.status == "RUNNING"

    run_async(body)


# -- x: stop early, keep the dashboard open ---------------------------------------------------

def test_x_stops_saves_and_keeps_the_dashboard_open_with_steering_disabled(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            for action in STEERING_ACTIONS:
                assert app.check_action(action, ()) is True
            await pilot.press("x")
            stopped = (await wait_event(pilot, R, "stopped"))[0]
            await until(pilot, lambda: app.state.status == "STOPPED", "STOPPED in the state")
            await until(pilot, lambda: _status_word(app) == "STOPPED", "STOPPED on the status bar")
            summary = json.loads((R / "summary.json").read_text())
            assert summary["status"] == "stopped"
            assert summary["steps"] == stopped["step"]
            latest = R / "checkpoints" / "latest.pt"
            assert _load(latest)["step"] == stopped["step"]
            assert "ended" in event_names(R)

            # Still open, a few refreshes later.
            await ticks(pilot, sampler, 2)
            assert app.is_running and app.return_code is None
            # Steering keys are disabled now: nothing reaches the engine's inbox.
            for action in STEERING_ACTIONS:
                assert app.check_action(action, ()) is None, action
            n_events = len(event_names(R))
            for key in ("p", "s", "x"):
                await pilot.press(key)
            await pilot.press("l")
            await ticks(pilot, sampler, 2)
            assert not isinstance(app.screen, LRDialog)
            assert not trainer.commands.pending()
            assert len(event_names(R)) == n_events
            assert app.state.status == "STOPPED"
            assert not (R / "checkpoints" / f"step-{stopped['step']}.pt").exists()

            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0

    run_async(body)


# -- q: quit ----------------------------------------------------------------------------------

def test_q_while_training_stops_and_saves_then_exits_0(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0
        assert app.source_done.is_set()
        summary = json.loads((R / "summary.json").read_text())
        assert summary["status"] == "stopped"
        assert summary["reason"] == "quit from the dashboard"
        assert _load(R / "checkpoints" / "latest.pt")["step"] == summary["steps"]
        names = event_names(R)
        assert names[-1] == "ended" and names.count("stopped") == 1, names
        stop_saves = [r for r in events_named(R, "checkpoint") if r["reason"] == "stop"]
        assert [r["step"] for r in stop_saves] == [summary["steps"]]
        assert names.index("stopped") < len(names) - 1 - names[::-1].index("checkpoint")
        assert sampler.stopped >= 1

    run_async(body)


def test_q_while_paused_stops_and_saves_then_exits_0(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await pilot.press("p")
            paused = (await wait_event(pilot, R, "paused"))[0]
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0
        summary = json.loads((R / "summary.json").read_text())
        assert (summary["status"], summary["steps"]) == ("stopped", paused["step"])
        assert _load(R / "checkpoints" / "latest.pt")["step"] == paused["step"]

    run_async(body)


def test_a_run_that_finishes_stays_open_until_q_then_exits_0(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path, long_cfg(epochs=2), long_preset(n_train=64, delay=0.0))
        async with dashboard(trainer) as (app, pilot, sampler):
            await until(pilot, lambda: app.state.status == "FINISHED", "FINISHED")
            await until(pilot, lambda: _status_word(app) == "FINISHED", "FINISHED on the status bar")
            summary = json.loads((R / "summary.json").read_text())
            assert (summary["status"], summary["steps"]) == ("finished", 16)
            await ticks(pilot, sampler, 3)
            assert app.is_running and app.return_code is None
            for action in STEERING_ACTIONS:
                assert app.check_action(action, ()) is None, action
            assert "press q to quit" in log_text(app)
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0
        assert not trainer.commands.pending()

    run_async(body)


# -- ?: help ------------------------------------------------------------------------------------

def test_question_mark_opens_help_listing_every_key_and_esc_closes_it(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
            text = screen_text(app.screen)
            keys = {line.split()[0] for line in text.splitlines() if line.strip()}
            for key in ("p", "l", "s", "x", "q", "?", "[", "y", "ctrl+p"):
                assert key in keys, (key, text)
            for word in ("pause", "learning rate", "checkpoint", "stop", "quit", "help"):
                assert word in text
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, HelpScreen), "Esc to close help")
            assert app.is_running and app.state.running  # Esc did not quit or stop anything
            assert "stopped" not in event_names(R)

    run_async(body)


# -- [ ] y: the loss plot ----------------------------------------------------------------------

def test_brackets_change_smoothing_within_bounds_and_y_toggles_log_scale(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            assert app.smoothing == pytest.approx(0.6)
            await pilot.press("right_square_bracket")
            assert app.smoothing == pytest.approx(0.7)
            await pilot.press("left_square_bracket", "left_square_bracket")
            assert app.smoothing == pytest.approx(0.5)
            await pilot.press(*["right_square_bracket"] * 6)
            assert app.smoothing == pytest.approx(0.99)
            await pilot.press("left_square_bracket")
            assert app.smoothing == pytest.approx(0.89)
            await pilot.press(*["left_square_bracket"] * 12)
            assert app.smoothing == 0.0
            await pilot.press("right_square_bracket")
            assert app.smoothing == pytest.approx(0.1)
            assert app.log_scale is False
            await pilot.press("y")
            assert app.log_scale is True
            await pilot.press("y")
            assert app.log_scale is False
            # Only the view changed: the run is untouched.
            assert app.state.status == "RUNNING"
            assert not trainer.commands.pending()
            # (The engine's own routine records, such as layer health, are not answers to anything.)
            assert [n for n in event_names(R) if n not in ("started", "layers", "hint")] == []

    run_async(body)


# -- ctrl+p: the command palette -------------------------------------------------------------------

def _palette_prompts(app) -> list[str]:
    from textual.command import CommandList

    options = app.screen.query_one(CommandList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


def test_command_palette_lists_the_actions_and_runs_save(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        from textual.command import CommandPalette

        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            titles = {c.title for c in app.get_system_commands(app.screen)}
            for title in ("Pause / resume training", "Set learning rate", "Save checkpoint now", "Stop early",
                          "Quit tuitrain", "Toggle log scale", "Keys"):
                assert title in titles

            await pilot.press("ctrl+p")
            await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the command palette")
            await pilot.press(*"Save")
            await until(pilot, lambda: any("Save checkpoint now" in p for p in _palette_prompts(app)),
                        "'Save checkpoint now' in the palette")
            prompts = _palette_prompts(app)
            await until(pilot, lambda: _palette_prompts(app)[0].startswith("Save checkpoint now"),
                        f"'Save checkpoint now' first in {prompts}")
            await pilot.press("enter")
            saved = (await wait_event(pilot, R, "checkpoint", where=lambda r: r["reason"] == "manual"))[0]
            assert (R / "checkpoints" / f"step-{saved['step']}.pt").exists()
            await until(pilot, lambda: not isinstance(app.screen, CommandPalette), "the palette to close")

            # Once the run has ended, the steering commands leave the palette.
            await pilot.press("x")
            await until(pilot, lambda: app.state.status == "STOPPED", "STOPPED")
            titles = {c.title for c in app.get_system_commands(app.screen)}
            assert not titles & {"Pause / resume training", "Set learning rate", "Save checkpoint now",
                                 "Stop early"}
            assert "Quit tuitrain" in titles

    run_async(body)


# -- a failing run ------------------------------------------------------------------------------------

def test_a_run_whose_model_raises_shows_failed_and_the_traceback_and_q_exits_1(tmp_path: Path) -> None:
    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path, preset=long_preset(delay=0.005))
        trainer.model.raise_at = 12
        async with dashboard(trainer) as (app, pilot, sampler):
            await until(pilot, lambda: app.state.status == "FAILED", "FAILED")
            await until(pilot, lambda: _status_word(app) == "FAILED", "FAILED on the status bar")
            await until(pilot, lambda: "press q to quit" in log_text(app), "the end in the log")
            text = log_text(app)
            assert "the run failed: RuntimeError: boom at training call 12" in text
            assert "Traceback (most recent call last):" in text
            assert "raise RuntimeError" in text
            error = (R / "error.txt").read_text()
            assert "RuntimeError: boom at training call 12" in error
            assert json.loads((R / "summary.json").read_text())["status"] == "failed"
            assert "error" in event_names(R)
            await ticks(pilot, sampler, 2)
            assert app.is_running and app.return_code is None
            for action in STEERING_ACTIONS:
                assert app.check_action(action, ()) is None, action
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 1

    run_async(body)


def test_q_right_after_a_failure_exits_1_even_before_the_screen_caught_up(tmp_path: Path) -> None:
    """The race made deterministic: the drain timer is slowed so q lands before it runs."""
    from tuitrain.tui.app import TuitrainApp

    t = 1_700_000_000.0
    summary = {"status": "failed", "reason": "RuntimeError: boom", "steps": 3, "signal": None}
    trainer = FakeTrainer([])

    def fail() -> None:
        trainer.events.put(ev.RunFailed(3, t, error="RuntimeError: boom", traceback="Traceback ...\n"))
        trainer.events.put(ev.RunEnded(3, t, status="failed", summary=summary))

    trainer.run = fail  # type: ignore[method-assign]

    async def body() -> None:
        app = TuitrainApp(InProcessRun(trainer), refresh_hz=0.01, sampler=FakeSampler())
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, app.source_done.is_set, "the (fake) engine to end")
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 1

    run_async(body)


def test_ctrl_q_while_training_stops_and_saves_then_exits_0(tmp_path: Path) -> None:
    """run_app end to end in this process, the app headless, ctrl+q pressed by an auto-pilot."""
    import sys
    import time

    from textual.app import App

    from tuitrain.tui import app as app_module
    from tuitrain.tui import launch
    from tuitrain.tui.run_process import PreparedRun, SignalRelay

    R = tmp_path / "run"
    # 40 steps at ~20 steps/s: a run that would take ~2 s to finish on its own.
    cfg = long_cfg(epochs=1, run_dir=str(R))
    run = PreparedRun(cfg, long_preset(n_train=320), R, None, created=None)
    seen: dict[str, float] = {}

    async def press_ctrl_q(pilot) -> None:
        await until(pilot, lambda: pilot.app.state.step >= 3, "a few steps")
        seen["pressed"] = time.monotonic()
        await pilot.press("ctrl+q")

    def headless_run(self, **kwargs):  # the dashboard without a terminal
        return App.run(self, headless=True, size=(120, 40), auto_pilot=press_ctrl_q)

    switch = sys.getswitchinterval()
    original = app_module.TuitrainApp.run
    app_module.TuitrainApp.run = headless_run  # type: ignore[method-assign]
    try:
        rc = launch.run_in_process(run, SignalRelay())
    finally:
        app_module.TuitrainApp.run = original  # type: ignore[method-assign]
        sys.setswitchinterval(switch)
    took = time.monotonic() - seen["pressed"]
    summary = json.loads((R / "summary.json").read_text())
    assert (summary["status"], rc) == ("stopped", 0), (summary["status"], summary["reason"], rc, f"{took:.1f}s")
    assert summary["steps"] < 40
    assert _load(R / "checkpoints" / "latest.pt")["step"] == summary["steps"]
