"""What a new user hit (issue 10, the dashboard's items) and user text shown literally (hardening 5).

Pilot tests on a fake trainer (fixed events, no engine) assert what the user
sees: the footer's keys, the plots' rows and titles, the dialogs' answers and
the commands that reach the run; the GNU screen test runs the installed
`tuitrain` in a real `screen` (inside a private tmux, as the tmux tests do).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from dashboard_helpers import (FakeSampler, FakeTrainer, dashboard, layer_stats, log_text, progress_text,
                               run_async, run_started, screen_text, status_text, ticks, until, widget_text)
from tuitrain.tui.source import InProcessRun
from tuitrain.engine import events as ev
from tuitrain.engine.commands import SetLR
from tuitrain.tui.app import mouse_wanted
from tuitrain.tui.screens.help_screen import HelpScreen
from tuitrain.tui.screens.lr_dialog import LRDialog
from tuitrain.tui.widgets.plot_base import log_ticks, nice_ticks

T0 = 1_700_000_000.0


def steps(first: int, last: int, t: float, *, rate: float = 300.0, epoch: int = 1,
          steps_per_epoch: int = 100) -> ev.StepStats:
    """A flush of steps first..last with a falling loss at LR 0.01."""
    span = list(range(first, last + 1))
    return ev.StepStats(last, t, epoch=epoch, steps=span, loss=[0.7 / (1 + s / 30) for s in span],
                        lr=[0.01] * len(span), grad_norm=None, epoch_step=last - (epoch - 1) * steps_per_epoch,
                        steps_per_epoch=steps_per_epoch, steps_per_sec=rate, samples_per_sec=rate * 16)


def preview(t: float = T0) -> ev.SchedulePreview:
    return ev.SchedulePreview(0, t, steps=[0, 300], lrs=[0.01, 0.01], multiplier=1.0)


def ended(step: int, t: float, *, status: str = "finished", **summary: Any) -> ev.RunEnded:
    base = {"status": status, "reason": "completed 3 epochs", "steps": step, "steps_per_sec": 300.0,
            "signal": None}
    base.update(summary)
    return ev.RunEnded(step, t, status=status, summary=base)


def taken(trainer: FakeTrainer) -> list[Any]:
    """Every command the app sent since the last look."""
    out = []
    while (command := trainer.commands.get_nowait()) is not None:
        out.append(command)
    return out


def lines_of(app: Any) -> list[str]:
    """The screen as the user sees it, one string a row."""
    return ["".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()]


def footer_row(app: Any) -> str:
    return lines_of(app)[-1]


# -- hardening 5: user text is never markup ------------------------------------------------------

@pytest.mark.parametrize("typed", ["[/]", "1e-3[/]", "[bold]0.1"])
def test_markup_typed_into_the_lr_dialog_is_an_error_message_not_a_crash(typed: str) -> None:
    trainer = FakeTrainer([run_started(T0), preview()])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await ticks(pilot, sampler, 2)
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            await pilot.press(*typed, "enter")
            message = app.screen.query_one("#lr-message")
            await until(pilot, lambda: message.has_class("-error"), "the error")
            assert widget_text(message) == f"not a number: {typed!r}"  # shown literally, brackets and all
            await ticks(pilot, sampler, 2)
            assert app.is_running and isinstance(app.screen, LRDialog) and not trainer.commands.pending()

    run_async(body)


def test_preset_and_layer_names_with_brackets_are_shown_as_written() -> None:
    start = run_started(T0)
    start = ev.RunStarted(**{**start.__dict__, "preset": "[b]mine[/]", "run_dir": "runs/[red]x[/]"})
    stats = layer_stats(20, T0 + 2)
    stats = ev.LayerStats(**{**stats.__dict__, "names": ["[/].weight", "[b]x[/b].bias", "net.2.weight",
                                                        "net.2.bias"]})
    trainer = FakeTrainer([start, stats])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: "[b]mine[/]" in status_text(app), "the preset's name in the status bar")
            assert "runs/[red]x[/]" in log_text(app)
            await pilot.press("h")
            await until(pilot, lambda: "[b]x[/b]" in "\n".join(lines_of(app)), "the module names in the table")
            assert "[/]" in "\n".join(lines_of(app)) and app.is_running

    run_async(body)


# -- 3: GNU screen -------------------------------------------------------------------------------------

def test_no_mouse_tracking_under_gnu_screen() -> None:
    assert mouse_wanted({"TERM": "xterm-256color"}) is True
    assert mouse_wanted({"TERM": "tmux-256color"}) is True
    assert mouse_wanted({"TERM": "xterm-256color", "STY": "1234.pts-0.host"}) is False
    assert mouse_wanted({"TERM": "screen-256color"}) is False
    assert mouse_wanted({"TERM": "screen.xterm-256color"}) is False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("screen") is None, reason="GNU screen is not installed (apt-get install screen)")
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.skipif(sys.platform != "linux", reason="a real terminal")
def test_in_gnu_screen_esc_closes_the_help_and_the_next_key_acts(tmp_path: Path) -> None:
    """screen, with mouse tracking on, held a lone Esc back and glued it to the next key."""
    from test_dashboard_tmux import DEADLINE, START_DEADLINE, Tmux, script

    screendir = tmp_path / "screens"
    screendir.mkdir(mode=0o700)
    inner = tmp_path / "inner.sh"
    inner.write_text(script(tmp_path, "--preset", "circles", "--epochs", "2000", "--run-dir", "R"))
    tmux = Tmux(tmp_path, f"export SCREENDIR={screendir}\nexec screen -q -S wt sh {inner}\n")
    try:
        tmux.wait_screen(lambda s: " RUNNING " in s and "total" in s, "the dashboard in screen", START_DEADLINE)
        tmux.keys("?")
        tmux.wait_text("tuitrain keys")
        tmux.keys("Escape")
        tmux.wait_screen(lambda s: "tuitrain keys" not in s, "Esc to close the help")
        tmux.keys("p")
        tmux.wait_text(" PAUSED ", DEADLINE)
        # The LR dialog too: Esc cancels, and q after it quits (it is not typed into the field).
        tmux.keys("l")
        tmux.wait_text("Set the learning rate")
        tmux.keys("Escape")
        tmux.wait_screen(lambda s: "Set the learning rate" not in s, "Esc to close the LR dialog")
        tmux.keys("q")
        tmux.wait_text("EXIT=0", DEADLINE)
    finally:
        tmux.kill()
        os.system(f"SCREENDIR={screendir} screen -X -S wt quit >/dev/null 2>&1")  # noqa: S605 (if still up)
    assert (tmp_path / "R" / "summary.json").exists()


def test_ctrl_c_also_closes_the_help_and_the_lr_dialog() -> None:
    trainer = FakeTrainer([run_started(T0), preview()])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
            await pilot.press("ctrl+c")
            await until(pilot, lambda: not isinstance(app.screen, HelpScreen), "ctrl+c to close the help")
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            await pilot.press(*"0.5", "ctrl+c")
            await until(pilot, lambda: not isinstance(app.screen, LRDialog), "ctrl+c to close the dialog")
            assert app.is_running and not trainer.commands.pending()

    run_async(body)


# -- 4: 80x24 -------------------------------------------------------------------------------------------

def _plot_rows(app: Any) -> int:
    """Rows of the loss plot that hold data: those with the y axis (┤ or │) in the axis columns."""
    from tuitrain.tui.widgets.loss_plot import LossPlot

    region = app.query_one(LossPlot).content_region
    rows = lines_of(app)[region.y:region.y + region.height]
    return sum(1 for row in rows if any(ch in "┤│" for ch in row[region.x:region.x + 8]))


@pytest.mark.parametrize("with_hint", [True, False], ids=["hint", "no-hint"])
def test_at_80x24_the_loss_plot_has_8_rows_and_the_footer_and_log_are_not_cut(with_hint: bool) -> None:
    from dashboard_helpers import lr_hint

    events = [run_started(T0), preview()] + [steps(i, i + 24, T0 + i, epoch=1 + (i - 1) // 100)
                                             for i in range(1, 300, 25)]
    if with_hint:
        events.append(lr_hint(250, T0 + 250))
    trainer = FakeTrainer(events)

    async def body() -> None:
        async with dashboard(trainer, size=(80, 24)) as (app, pilot, sampler):  # type: ignore[arg-type]
            from tuitrain.tui.widgets.loss_plot import LossPlot

            await until(pilot, lambda: app.state.step == 300 and not app.query_one(LossPlot).waiting, "the plot")
            await ticks(pilot, sampler, 2)
            assert _plot_rows(app) >= 8, "\n".join(lines_of(app))
            footer = footer_row(app)
            for key in ("p Pause", "l LR", "s Save", "x Stop", "d Detach", "q Quit", "y Log", "? Help"):
                assert key in footer, footer
            assert footer.rstrip().endswith("? Help"), f"the footer is cut: {footer!r}"

    run_async(body)


def test_the_log_wraps_at_its_own_width_without_losing_characters() -> None:
    # Enough entries for the scrollbar; each longer than a line, with numbers that must stay whole.
    reason = "the value 1,218 is out of range for 12,345 steps and 1,000,000 samples, try 0.001234 instead"
    trainer = FakeTrainer([run_started(T0)] + [ev.CommandRejected(i, T0 + i, command="set_lr", reason=reason)
                                               for i in range(12)])

    async def body() -> None:
        async with dashboard(trainer, size=(80, 30)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: "run dir" in log_text(app), "the log")
            await ticks(pilot, sampler, 2)
            from tuitrain.tui.widgets.event_log import EventLog

            log = app.query_one(EventLog)
            region = log.content_region
            rows = [row[region.x:region.right].rstrip().rstrip("▁▂▃▄▅▆▇█").strip()
                    for row in lines_of(app)[region.y:region.bottom]]
            shown = " ".join(r for r in rows if r)
            entries = " ".join(" ".join(e.split()) for e in log.entries)
            assert "1,218" in shown and shown in entries, (rows, entries)  # what wrapped lost nothing

    run_async(body)


def test_below_80x24_it_says_terminal_too_small_and_comes_back() -> None:
    trainer = FakeTrainer([run_started(T0), preview(), steps(1, 25, T0 + 1)])

    async def body() -> None:
        async with dashboard(trainer, size=(80, 24)) as (app, pilot, sampler):  # type: ignore[arg-type]
            from tuitrain.tui.widgets.loss_plot import LossPlot

            await ticks(pilot, sampler, 2)
            assert "terminal too small" not in "\n".join(lines_of(app))
            for size in ((79, 24), (80, 23), (40, 10)):
                await pilot.resize_terminal(*size)
                await until(pilot, lambda: "terminal too small (need 80x24" in "\n".join(lines_of(app)),
                            f"the notice at {size}")
                assert not app.query_one("#top").display and " RUNNING " in lines_of(app)[0]
            await pilot.resize_terminal(80, 24)
            await until(pilot, lambda: app.query_one("#top").display and app.query_one(LossPlot).size.height > 8
                        and "terminal too small" not in "\n".join(lines_of(app)), "the dashboard again")

    run_async(body)


# -- 5: a run over in seconds suggests a longer one ------------------------------------------------------

def test_a_run_finished_in_seconds_suggests_a_longer_one_to_try_the_keys() -> None:
    trainer = FakeTrainer([run_started(T0, epochs=30), preview(), steps(1, 100, T0 + 1.5),
                           ended(3000, T0 + 3.0)])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: "press q to quit" in log_text(app), "the end")
            await ticks(pilot, sampler, 2)
            log = log_text(app)
            assert "tuitrain --preset circles --epochs 500" in log, log  # ~a minute: 30 epochs x 60 s / 3 s
            assert "tuitrain --resume runs/fake --epochs 500" in log  # constant LR: --epochs may change
            assert "tuitrain --preset circles" in "\n".join(lines_of(app)[:3])  # and in the hint bar

    run_async(body)


def test_a_long_run_or_a_fixed_length_schedule_gets_no_or_a_fresh_run_tip() -> None:
    from tuitrain.tui.state import DashboardState

    long_run = DashboardState()
    long_run.apply_all([run_started(T0), ended(300, T0 + 92.0)])
    assert "tip:" not in "\n".join(line.text for line in long_run.log) and long_run.hint is None
    cosine = DashboardState()
    start = run_started(T0)
    cosine.apply_all([ev.RunStarted(**{**start.__dict__, "config": {"epochs": 3, "scheduler": "cosine"}}),
                      ended(300, T0 + 2.0)])
    tip = cosine.longer_run_tip() or ""
    assert "--preset circles --epochs" in tip and "--resume" not in tip  # cosine's plan is fixed


# -- 12: the first data is drawn at once ------------------------------------------------------------------

def test_the_first_steps_and_the_lr_are_drawn_without_waiting_for_the_plot_interval() -> None:
    trainer = FakeTrainer([run_started(T0), preview()])

    async def body() -> None:
        from tuitrain.tui.app import TuitrainApp
        from tuitrain.tui.widgets.loss_plot import LossPlot
        from tuitrain.tui.widgets.lr_plot import LRPlot

        sampler = FakeSampler()
        app = TuitrainApp(InProcessRun(trainer), sampler=sampler, plot_interval=3600)
        async with app.run_test(size=(120, 40)) as pilot:
            await ticks(pilot, sampler, 3)
            lr_title = str(app.query_one(LRPlot).border_title)
            assert "1.00e-02" in lr_title and "?" not in lr_title  # known before the first flush
            assert "waiting" in str(app.query_one(LossPlot).border_title)
            trainer.events.put(steps(1, 25, T0 + 0.3))
            await until(pilot, lambda: not app.query_one(LossPlot).waiting, "the first steps drawn")
            assert "waiting" not in str(app.query_one(LossPlot).border_title)
            app.exit()

    run_async(body)


# -- 13, 14, 15: legends off the data, round ticks, log labels ----------------------------------------------

def test_legends_are_in_the_titles_not_on_the_data() -> None:
    events = [run_started(T0), preview()] + [steps(i, i + 24, T0 + i) for i in range(1, 100, 25)]
    events.append(ev.EvalDone(100, T0 + 100, epoch=1, train_loss=0.3, train_metric=0.9, val_loss=0.25,
                              val_metric=0.92, metric="acc", lr=0.01, best_val_loss=0.25, best_epoch=1,
                              improved=True, patience_used=0, patience=5, epoch_end=True))
    trainer = FakeTrainer(events)

    async def body() -> None:
        from tuitrain.tui.widgets.loss_plot import LossPlot
        from tuitrain.tui.widgets.lr_plot import LRPlot
        from tuitrain.tui.widgets.metric_plot import MetricPlot

        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: len(app.state.val_metric.points()) == 1
                        and "val" in str(app.query_one(MetricPlot).border_title), "the plots")
            await ticks(pilot, sampler, 2)
            rows = lines_of(app)
            for plot, labels in ((LossPlot, ("train", "smoothed", "val")), (MetricPlot, ("train", "val")),
                                 (LRPlot, ("plan", "used"))):
                widget = app.query_one(plot)
                title = str(widget.border_title)
                region = widget.content_region
                inside = "\n".join(r[region.x:region.right] for r in rows[region.y:region.bottom])
                for label in labels:
                    assert label in title, (plot, title)
                    assert label not in inside, (plot, inside)

    run_async(body)


def test_axis_ticks_are_round_and_evenly_spaced() -> None:
    for lo, hi in ((1, 250_000), (2, 300), (0, 37), (150, 3750)):
        ticks_ = nice_ticks(lo, hi, 4)
        assert len(ticks_) >= 2 and all(lo <= t <= hi for t in ticks_)
        gaps = {round(b - a, 9) for a, b in zip(ticks_, ticks_[1:])}
        assert len(gaps) == 1, ticks_
        step = gaps.pop()
        assert all(abs(t / step - round(t / step)) < 1e-9 for t in ticks_)
    assert nice_ticks(1, 250_000, 4) == [50_000, 100_000, 150_000, 200_000, 250_000]


@pytest.mark.parametrize("lo, hi", [(0.0112, 0.72), (0.3, 0.7), (0.001, 1.5), (0.05, 0.06), (1e-4, 10.0)])
def test_log_ticks_give_two_or_more_labels_inside_the_range(lo: float, hi: float) -> None:
    values = log_ticks(lo, hi)
    assert len(values) >= 2, values
    assert all(lo * 0.999 <= v <= hi * 1.001 for v in values), values


def test_log_scale_labels_stay_off_the_corner_and_the_title_row() -> None:
    events = [run_started(T0), preview()] + [steps(i, i + 24, T0 + i) for i in range(1, 300, 25)]
    trainer = FakeTrainer(events)

    async def body() -> None:
        from tuitrain.tui.widgets.loss_plot import LossPlot

        async with dashboard(trainer, size=(80, 24)) as (app, pilot, sampler):  # type: ignore[arg-type]
            plot = app.query_one(LossPlot)
            await until(pilot, lambda: not plot.waiting, "the plot")
            await pilot.press("y")
            await until(pilot, lambda: "log" in str(plot.border_title), "the log scale")
            await ticks(pilot, sampler, 2)
            region = plot.content_region
            rows = [r[region.x:region.right] for r in lines_of(app)[region.y:region.bottom]]
            labels = [r.split("┤")[0].strip() for r in rows if "┤" in r]
            assert len([x for x in labels if x]) >= 2, rows
            corner = next(r for r in rows if "└" in r)
            assert not any(ch.isdigit() for ch in corner.split("└")[0]), corner  # no label on the x axis row
            top_border = lines_of(app)[region.y - 1]
            assert not any(ch.isdigit() for ch in top_border[region.x:region.x + 6]), top_border

    run_async(body)


# -- 16: the footer ---------------------------------------------------------------------------------------

def test_the_footer_says_resume_while_paused_shows_d_and_greys_keys_clearly() -> None:
    trainer = FakeTrainer([run_started(T0), preview(), steps(1, 25, T0 + 1), ev.Paused(25, T0 + 2, reason="user")])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: app.state.status == "PAUSED" and "Resume" in footer_row(app), "p Resume")
            footer = footer_row(app)
            assert "p Resume" in footer and "Pause" not in footer and "d Detach" in footer
            await pilot.press("p")
            assert [type(c).__name__ for c in taken(trainer)] == ["TogglePause"]
            trainer.events.put(ev.Resumed(25, T0 + 3, paused_seconds=1.0))
            await until(pilot, lambda: "p Pause" in footer_row(app), "p Pause again")
            trainer.events.put(ended(25, T0 + 4, status="stopped"))
            await until(pilot, lambda: app.state.status == "STOPPED", "STOPPED")
            await ticks(pilot, sampler, 2)
            from textual.widgets._footer import FooterKey

            def brightness(key: str) -> float:
                widget = next(k for k in app.query(FooterKey) if k.key == key)
                colour = widget.get_component_rich_style("footer-key--description").color
                triplet = colour.get_truecolor()
                return (triplet.red + triplet.green + triplet.blue) / 3

            assert brightness("p") < 0.6 * brightness("q")  # greyed (nothing to pause) vs live (quit)

    run_async(body)


# -- 17: the palette ----------------------------------------------------------------------------------------

def test_the_command_palette_has_only_our_commands_once_each() -> None:
    trainer = FakeTrainer([run_started(T0), preview()])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await ticks(pilot, sampler, 2)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert len(titles) == len(set(titles)), titles
            for foreign in ("Quit", "Maximize", "Screenshot", "Theme", "Change theme", "Show keys and help panel"):
                assert foreign not in titles
            assert titles.count("Keys") == 1 and "Quit tuitrain" in titles and "Detach" in titles

    run_async(body)


# -- 18: help ----------------------------------------------------------------------------------------------

def test_help_fits_80x24_and_wraps_under_the_text_not_the_key() -> None:
    trainer = FakeTrainer([run_started(T0)])

    async def body() -> None:
        async with dashboard(trainer, size=(80, 24)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
            await ticks(pilot, sampler, 2)
            box = app.screen.query_one("#help")
            assert box.region.width <= 80 and box.region.right <= 80
            rows = lines_of(app)
            text_col = next(r.index("pause / resume") for r in rows if "pause / resume" in r)
            wrapped = [r for r in rows if "(tuitrain watch RUN_DIR re-attaches)" in r]
            assert wrapped, "\n".join(rows)
            row = wrapped[0]
            assert row.index("(tuitrain") == text_col, "\n".join(rows)  # a hanging indent
            assert "ctrl+p" in screen_text(app.screen)

    run_async(body)


# -- 19: dialogs in 256 colours -----------------------------------------------------------------------------

@pytest.mark.parametrize("colorterm, dimmed", [("truecolor", True), ("", False)])
def test_the_dashboard_behind_a_dialog_is_dimmed_only_in_truecolor(monkeypatch: pytest.MonkeyPatch,
                                                                   colorterm: str, dimmed: bool) -> None:
    monkeypatch.setenv("COLORTERM", colorterm)
    monkeypatch.setenv("TERM", "xterm-256color")
    trainer = FakeTrainer([run_started(T0), preview()])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            assert (app.screen.styles.background.a > 0) is dimmed

    run_async(body)


# -- 20: numbers -------------------------------------------------------------------------------------------

def test_a_finished_run_shows_its_own_rate_and_grouped_step_counts() -> None:
    trainer = FakeTrainer([run_started(T0, epochs=30, steps_per_epoch=125), preview(),
                           steps(3726, 3750, T0 + 60, rate=118.0, epoch=30, steps_per_epoch=125),
                           ended(3750, T0 + 61, steps_per_sec=1238.4, samples_per_sec=19814.0)])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: "press q to quit" in log_text(app), "the end")
            await until(pilot, lambda: "1,238 steps/s" in progress_text(app), "the run's own rate")
            assert "118 steps/s" not in progress_text(app)
            assert "3,750 steps, 1,238 steps/s" in log_text(app)

    run_async(body)


# -- 21: a huge LR asks first -------------------------------------------------------------------------------

def test_an_lr_above_100x_the_current_one_asks_for_a_second_enter() -> None:
    trainer = FakeTrainer([run_started(T0), preview(), steps(1, 25, T0 + 1)])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: app.state.lr == pytest.approx(0.01), "the LR")
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            dialog = app.screen
            await pilot.press(*"1e9", "enter")
            message = dialog.query_one("#lr-message")
            await until(pilot, lambda: message.has_class("-confirm"), "the question")
            assert "1e+11x" in widget_text(message) and "Enter again" in widget_text(message)
            assert app.screen is dialog and not trainer.commands.pending()
            # Editing the value asks again for the new one; Enter twice applies it.
            await pilot.press("backspace", "8", "enter")
            await until(pilot, lambda: "1e+08" in widget_text(message), "the question for 1e8")
            assert app.screen is dialog and not trainer.commands.pending()
            await pilot.press("enter")
            await until(pilot, lambda: not isinstance(app.screen, LRDialog), "the dialog to close")
            commands = taken(trainer)
            assert len(commands) == 1 and isinstance(commands[0], SetLR) and commands[0].lr == 1e8
            # 50x is applied at once.
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog again")
            await pilot.press(*"0.5", "enter")
            await until(pilot, lambda: not isinstance(app.screen, LRDialog), "0.5 applied")
            assert [c.lr for c in taken(trainer)] == [0.5]

    run_async(body)


def test_a_constant_lr_or_loss_is_labelled_with_its_value_not_float_noise() -> None:
    """A user's loop with a fixed LR and no plan (and a loss that does not move): one clean label."""
    flat = [ev.StepStats(i + 24, T0 + i, epoch=1, steps=list(range(i, i + 25)), loss=[1.0] * 25, lr=[0.1] * 25,
                         grad_norm=None, epoch_step=i + 24, steps_per_epoch=200, steps_per_sec=100.0,
                         samples_per_sec=0.0) for i in range(1, 100, 25)]
    trainer = FakeTrainer([run_started(T0), *flat])

    async def body() -> None:
        from tuitrain.tui.app import TuitrainApp
        from tuitrain.tui.widgets.loss_plot import LossPlot
        from tuitrain.tui.widgets.lr_plot import LRPlot

        sampler = FakeSampler()
        app = TuitrainApp(InProcessRun(trainer), sampler=sampler)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.state.step == 100 and not app.query_one(LRPlot).waiting, "the steps")
            await ticks(pilot, sampler, 2)
            for plot, label in ((LRPlot, "0.1"), (LossPlot, "1")):
                text = widget_text(app.query_one(plot))
                assert f"{label}┤" in text.replace(" ", ""), text
                assert "0000000" not in text and "9999999" not in text, text
            app.exit()

    run_async(body)
