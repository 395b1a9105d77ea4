"""Snapshot tests of the dashboard's layout (pytest-textual-snapshot).

The app runs with a FAKE trainer that hands over a fixed sequence of events
(fixed times, fixed numbers) and a fake sampler with a fixed machine (two
GPUs), so every pixel is reproducible: the clock is frozen by the run's own
start/end (or pause) times, and the log's time stamps are printed in UTC.

Regenerate after an intended layout change with
    pytest tests/test_dashboard_snapshots.py --snapshot-update
and look at the SVGs (tests/__snapshots__/test_dashboard_snapshots/).
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from dashboard_helpers import FakeSampler, FakeTrainer, log_text, status_text, two_gpu_snapshot, until
from tuitrain.tui.source import InProcessRun
from tuitrain.engine import events as ev
from tuitrain.tui.app import TuitrainApp

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
STEPS_PER_EPOCH = 100
EPOCHS = 3
BASE_LR = 0.01
LR_CHANGE_STEP = 150
NEW_LR = 0.003
SAVE_STEP = 200

CONFIG = {"preset": "circles", "epochs": EPOCHS, "lr": BASE_LR, "batch_size": 16, "optimizer": "adam",
          "scheduler": "cosine", "patience": 5, "device": "cuda:0", "seed": 0}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Log time stamps in UTC, whatever the machine's zone; restored afterwards."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _schedule(step: int) -> float:
    return BASE_LR * 0.5 * (1 + math.cos(math.pi * step / (STEPS_PER_EPOCH * EPOCHS)))


def _loss(step: int) -> float:
    return round(0.05 + 0.65 * math.exp(-step / 70) + 0.04 * math.sin(step * 0.7), 6)


def run_events(*, until_step: int | None = None, end: str | None = "finished") -> list[ev.Event]:
    """A whole 3-epoch run as the engine reports it; cut at `until_step` (then paused) when given."""
    last = until_step if until_step is not None else STEPS_PER_EPOCH * EPOCHS
    out: list[ev.Event] = [
        ev.RunStarted(0, T0, run_dir="runs/circles-demo", preset="circles", task="classification", metric="acc",
                      device="cuda:0", device_name="NVIDIA Fake A100", config=CONFIG, epoch=0,
                      steps_per_epoch=STEPS_PER_EPOCH, total_steps=STEPS_PER_EPOCH * EPOCHS, train_size=2000,
                      val_size=500, parameters=1_218, amp="bfloat16"),
        ev.SchedulePreview(0, T0 + 0.5, steps=list(range(0, 301, 10)),
                           lrs=[_schedule(s) for s in range(0, 301, 10)], multiplier=1.0),
    ]
    multiplier = 1.0
    best = None
    t = T0 + 1.0
    for first in range(1, last + 1, 25):
        steps = list(range(first, min(first + 25, last + 1)))
        if first == LR_CHANGE_STEP + 1:
            old = _schedule(LR_CHANGE_STEP)
            multiplier = NEW_LR / old
            out.append(ev.LRChanged(LR_CHANGE_STEP, t, old_lr=old, new_lr=NEW_LR, multiplier=multiplier))
            out.append(ev.SchedulePreview(LR_CHANGE_STEP, t, steps=list(range(150, 301, 10)),
                                          lrs=[_schedule(s) * multiplier for s in range(150, 301, 10)],
                                          multiplier=multiplier))
        if first == SAVE_STEP + 1:
            out.append(ev.CheckpointSaved(SAVE_STEP, t + 0.2, path="runs/circles-demo/checkpoints/step-200.pt",
                                          bytes=31_337, reason="manual"))
        t += 7.5
        epoch = (steps[0] - 1) // STEPS_PER_EPOCH + 1
        out.append(ev.StepStats(
            steps[-1], t, epoch=epoch, steps=steps, loss=[_loss(s) for s in steps],
            lr=[_schedule(s - 1) * multiplier for s in steps], grad_norm=None,
            epoch_step=steps[-1] - (epoch - 1) * STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH,
            steps_per_sec=312.0, samples_per_sec=4992.0))
        if steps[-1] % STEPS_PER_EPOCH == 0:
            e = steps[-1] // STEPS_PER_EPOCH
            val = [0.52, 0.31, 0.24][e - 1]
            improved = best is None or val < best
            best = val if improved else best
            out.append(ev.EvalDone(steps[-1], t + 0.3, epoch=e, train_loss=[0.61, 0.36, 0.27][e - 1],
                                   train_metric=[0.71, 0.86, 0.91][e - 1], val_loss=val,
                                   val_metric=[0.78, 0.89, 0.93][e - 1], metric="acc",
                                   lr=_schedule(steps[-1]) * multiplier, best_val_loss=best, best_epoch=e,
                                   improved=improved, patience_used=0, patience=5, epoch_end=True))
    if until_step is not None:
        out.append(ev.Paused(last, t + 1.0, reason="user"))
    if end is not None:
        summary = {"status": end, "reason": "completed 3 epochs", "steps": last, "steps_per_sec": 312.0,
                   "signal": None}
        out.append(ev.CheckpointSaved(last, t + 1.0, path="runs/circles-demo/checkpoints/latest.pt",
                                      bytes=31_337, reason="end"))
        out.append(ev.RunEnded(last, t + 1.5, status=end, summary=summary))
    return out


def make_app(events: list[ev.Event]) -> tuple[TuitrainApp, FakeSampler]:
    sampler = FakeSampler(two_gpu_snapshot())
    return TuitrainApp(InProcessRun(FakeTrainer(events)), sampler=sampler), sampler


def settled(app: TuitrainApp, sampler: FakeSampler, word: str, last_log: str):
    """run_before: wait until every event is drawn (status word, last log line, a system sample)."""
    async def wait(pilot: Any) -> None:
        await until(pilot, lambda: word in status_text(app) and last_log in log_text(app)
                    and app.source_done.is_set() and sampler.reads >= 2, f"{word} and the whole log on screen")
        start = sampler.reads
        await until(pilot, lambda: sampler.reads >= start + 2, "two more refreshes")  # plots drawn after the end
        await pilot.pause()
    return wait


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_finished_run(snap_compare, utc, size: tuple[int, int]) -> None:
    app, sampler = make_app(run_events())
    assert snap_compare(app, terminal_size=size, run_before=settled(app, sampler, "FINISHED", "press q to quit"))
    assert app.state.status == "FINISHED" and app.state.step == 300


def test_paused_run_with_the_lr_dialog_showing_an_error_120x40(snap_compare, utc) -> None:
    """A live (paused) run: steering keys enabled in the footer, the dialog over the dashboard."""
    app, sampler = make_app(run_events(until_step=225, end=None))
    wait = settled(app, sampler, "PAUSED", "paused at step 225")

    async def run_before(pilot: Any) -> None:
        from tuitrain.tui.screens.lr_dialog import LRDialog

        await wait(pilot)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
        await pilot.press(*"abc", "enter")
        await until(pilot, lambda: app.screen.query_one("#lr-message").has_class("-error"), "the error")

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


# -- seeing the model learn: the boundary panel and the health view ------------------------------

def insight_events() -> list[ev.Event]:
    """The finished run, plus what a 2-D preset with insights sends: boundary, layer stats, a hint."""
    from dashboard_helpers import boundary_grid, boundary_points, layer_stats, lr_hint

    out: list[ev.Event] = []
    for event in run_events():
        out.append(event)
        if isinstance(event, ev.RunStarted):
            out.append(boundary_points(0, event.t))
            out.append(boundary_grid(0, event.t, epoch=1, epoch_end=False, radius_scale=0.4))
        elif isinstance(event, ev.StepStats):
            # The gradient norm falls, then grows again near the end (what the hint is about).
            scale = 1.0 + 3.0 * max(0, event.step - 200) / 100 - 0.6 * min(event.step, 200) / 200
            growth = 4.1 if event.step > 200 else None
            out.append(layer_stats(event.step, event.t, scale=scale, flagged="net.2.weight" if growth else None,
                                   growth=growth))
            if event.step == 250:
                out.append(lr_hint(event.step, event.t + 0.1))
        elif isinstance(event, ev.EvalDone) and event.epoch_end:
            out.append(boundary_grid(event.step, event.t, epoch=event.epoch, epoch_end=True,
                                     radius_scale=[0.7, 0.95, 1.0][event.epoch - 1]))
    return out


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_boundary_and_hint(snap_compare, utc, size: tuple[int, int]) -> None:
    """The decision boundary next to the loss (instead of accuracy when narrow), the hint bar on top."""
    app, sampler = make_app(insight_events())
    wait = settled(app, sampler, "FINISHED", "press q to quit")
    seen: dict[str, Any] = {}

    async def run_before(pilot: Any) -> None:
        from test_dashboard_newuser import _plot_rows, footer_row

        await wait(pilot)
        seen["rows"], seen["footer"] = _plot_rows(app), footer_row(app)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    assert app.state.boundary_grid is not None and app.state.boundary_grid.epoch == 3
    # Even at the promised minimum, with the hint bar taking a row, the loss plot keeps 8 rows of plot
    # and the footer ends with its last key, uncut.
    assert seen["rows"] >= 8, seen
    assert seen["footer"].rstrip().endswith("^p palette" if size == (120, 40) else "? Help"), seen


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_health_view(snap_compare, utc, size: tuple[int, int]) -> None:
    """h: gradient norm and the layer table (with the flagged tensor) in the middle row."""
    app, sampler = make_app(insight_events())
    wait = settled(app, sampler, "FINISHED", "press q to quit")

    async def run_before(pilot: Any) -> None:
        from tuitrain.tui.widgets.grad_norm_plot import GradNormPlot
        from tuitrain.tui.widgets.layer_table import LayerTable

        await wait(pilot)
        await pilot.press("h")
        plot = app.query_one(GradNormPlot)
        await until(pilot, lambda: app.query_one(LayerTable).row_count == 4, "the layer table")
        await until(pilot, lambda: not plot.display or 0 < plot.size.width == plot.drawn_width,
                    "the gradient norm drawn at its width (wide terminals; narrow ones show the table alone)")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
