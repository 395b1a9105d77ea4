"""Seeing the model learn: the boundary panel (b), the health view (h), hints, samples, extras.

Most tests drive the real TuitrainApp with a FakeTrainer whose event buffer
the test fills, before and during the run, exactly as the engine thread
would; one runs the real engine with `boundary=True`. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

from pathlib import Path

from rich.segment import Segment

from dashboard_helpers import (FakeSampler, FakeTrainer, boundary_grid, boundary_points, dashboard, layer_stats,
                               log_text, long_cfg, long_preset, lr_hint, progress_text, run_async, run_started,
                               ticks, until, wait_running, widget_text)
from tuitrain.engine import events as ev
from tuitrain.engine.trainer import Trainer
from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.boundary_panel import BoundaryPanel
from tuitrain.tui.widgets.grad_norm_plot import GradNormPlot
from tuitrain.tui.widgets.hint_bar import HintBar
from tuitrain.tui.widgets.layer_table import LayerTable, fmt_norm, fmt_sci
from tuitrain.tui.widgets.lr_plot import LRPlot
from tuitrain.tui.widgets.metric_plot import MetricPlot
from tuitrain.tui.widgets.progress_panel import ProgressPanel
from tuitrain.tui.widgets.system_panel import SystemPanel

T0 = 1_700_000_000.0


def halves(x: float, y: float) -> int:
    """Class 0 left of x = 0, class 1 right of it."""
    return 0 if x < 0 else 1


def _footer_key(app, key: str):
    from textual.widgets._footer import FooterKey

    return next((k for k in app.query(FooterKey) if k.key == key), None)  # None while it recomposes


# -- b: the decision boundary ---------------------------------------------------------------

def test_b_toggles_the_boundary_panel_and_a_new_grid_is_drawn_live() -> None:
    trainer = FakeTrainer([run_started(T0), boundary_points(0, T0),
                           boundary_grid(0, T0, epoch=1, epoch_end=False, radius_scale=0.5)])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            panel = app.query_one(BoundaryPanel)
            await until(pilot, lambda: panel.display and panel.border_title == "boundary · live · ep 1",
                        "the boundary panel with the first grid")
            assert app.check_action("toggle_boundary", ()) is True
            await until(pilot, lambda: (k := _footer_key(app, "b")) is not None and not k.has_class("-disabled"),
                        "b enabled in the footer")
            # Wide: next to the loss and the accuracy plots.
            assert app.query_one(MetricPlot).display
            assert panel.region.y == app.query_one(MetricPlot).region.y
            assert panel.region.x > app.query_one(MetricPlot).region.x

            await pilot.press("b")
            await until(pilot, lambda: not panel.display, "b to hide the panel")
            assert app.show_boundary is False
            # A grid that arrives while hidden is not drawn, and is drawn at once when shown again.
            trainer.events.put(boundary_grid(100, T0 + 5, epoch=1, epoch_end=True))
            await until(pilot, lambda: app.state.boundary_grid is not None and app.state.boundary_grid.epoch_end,
                        "the new grid in the state")
            await ticks(pilot, sampler, 2)
            assert panel.border_title == "boundary · live · ep 1"
            await pilot.press("b")
            await until(pilot, lambda: panel.display and panel.border_title == "boundary · epoch 1",
                        "b to show the panel with the latest grid")
            assert app.show_boundary is True
            assert not trainer.commands.pending()  # a view key: nothing was sent to the engine

    run_async(body)


def test_without_boundary_points_the_panel_is_absent_and_b_is_disabled() -> None:
    trainer = FakeTrainer([run_started(T0)])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: app.state.preset == "circles", "the run started")
            await ticks(pilot, sampler, 2)
            panel = app.query_one(BoundaryPanel)
            assert not panel.display
            assert app.check_action("toggle_boundary", ()) is None
            await until(pilot, lambda: (k := _footer_key(app, "b")) is not None and k.has_class("-disabled"),
                        "b greyed out in the footer")
            assert "Toggle decision boundary" not in {c.title for c in app.get_system_commands(app.screen)}
            await pilot.press("b")
            await ticks(pilot, sampler, 1)
            assert not panel.display and app.show_boundary is True  # the key did nothing
            assert app.query_one(MetricPlot).display

    run_async(body)


def test_narrow_the_boundary_takes_the_place_of_the_metric_plot() -> None:
    trainer = FakeTrainer([run_started(T0), boundary_points(0, T0), boundary_grid(0, T0, epoch=1, epoch_end=False)])

    async def body() -> None:
        async with dashboard(trainer, size=(80, 24)) as (app, pilot, sampler):  # type: ignore[arg-type]
            panel = app.query_one(BoundaryPanel)
            await until(pilot, lambda: panel.display and panel.size.width > 10, "the boundary panel")
            assert not app.query_one(MetricPlot).display
            await pilot.press("b")
            await until(pilot, lambda: not panel.display, "b to hide the panel")
            assert not app.query_one(MetricPlot).display  # narrow: the loss plot alone

    run_async(body)


def _cells(panel: BoundaryPanel, y: int) -> list[tuple[str, Segment]]:
    """(character, its segment) for every column of line y."""
    return [(ch, seg) for seg in panel.render_line(y) for ch in seg.text]


def test_the_panel_draws_each_class_in_its_colour_and_a_point_on_top() -> None:
    # One validation point of class 0 deep in the region predicted as class 1: a mistake to see.
    points = ev.BoundaryPoints(0, T0, x_range=[-1.5, 1.5], y_range=[-1.5, 1.5], cols=32, rows=24, classes=2,
                               points=[[1.0, 0.0, 0]])
    trainer = FakeTrainer([run_started(T0), points,
                           boundary_grid(0, T0, epoch=2, epoch_end=True, label_of=halves)])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            panel = app.query_one(BoundaryPanel)
            await until(pilot, lambda: panel.border_title == "boundary · epoch 2" and panel.size.width > 10,
                        "the grid drawn")
            region0 = panel.get_component_rich_style("boundary-panel--region-0", partial=True).color
            region1 = panel.get_component_rich_style("boundary-panel--region-1", partial=True).color
            point0 = panel.get_component_rich_style("boundary-panel--point-0", partial=True).color
            assert region0 is not None and region1 is not None and region0 != region1
            width, height = panel.size
            for y in range(height):
                line = panel.render_line(y)
                assert line.cell_length == width
            top = _cells(panel, 0)
            drawn = [(ch, seg) for ch, seg in top if seg.style is not None and seg.style.bgcolor is not None]
            assert drawn, "the picture is empty"
            # The left of the picture is class 0, the right class 1 (one colour per cell: a blank on it).
            assert drawn[0][1].style.bgcolor == region0 and drawn[0][0] == " "
            assert drawn[-1][1].style.bgcolor == region1 and drawn[-1][0] == " "
            # The point: its glyph in the bright class-0 colour on the class-1 region.
            marks = [(y, ch, seg) for y in range(height) for ch, seg in _cells(panel, y) if ch == "•"]
            assert len(marks) == 1
            y, ch, seg = marks[0]
            assert seg.style.color == point0 and seg.style.bgcolor == region1
            assert abs(y - height / 2) <= 1.5  # y = 0 is the middle of the extent

    run_async(body)


def test_the_boundary_is_rebuilt_only_when_a_new_grid_arrives() -> None:
    trainer = FakeTrainer([run_started(T0), lr_hint(0, T0), boundary_points(0, T0),
                           boundary_grid(0, T0, epoch=1, epoch_end=False)])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            panel = app.query_one(BoundaryPanel)
            builds = []
            build = panel._build
            panel._build = lambda w, h: builds.append((w, h)) or build(w, h)  # type: ignore[method-assign]
            await until(pilot, lambda: panel.border_title == "boundary · live · ep 1", "the first grid")
            await pilot.pause()
            settled = len(builds)
            # Other events keep arriving (steps, layer stats): the panel is not rebuilt for them.
            trainer.events.put(ev.StepStats(5, T0 + 1, epoch=1, steps=[1, 2, 3, 4, 5], loss=[0.7] * 5,
                                            lr=[0.01] * 5, grad_norm=None, epoch_step=5, steps_per_epoch=100,
                                            steps_per_sec=100.0, samples_per_sec=1600.0))
            trainer.events.put(layer_stats(5, T0 + 1))
            await until(pilot, lambda: app.state.step == 5, "the steps drained")
            await ticks(pilot, sampler, 6)
            await pilot.pause()
            assert len(builds) == settled
            trainer.events.put(boundary_grid(5, T0 + 2, epoch=1, epoch_end=False, radius_scale=0.5))
            await until(pilot, lambda: len(builds) > settled, "a rebuild for the new grid")

    run_async(body)


# -- h: layer health --------------------------------------------------------------------------

def _row_texts(table: LayerTable) -> list[list[str]]:
    return [[str(getattr(c, "plain", c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


def test_h_switches_the_middle_row_to_layer_health_and_back() -> None:
    trainer = FakeTrainer([run_started(T0, grad_clip=1.0),
                           layer_stats(10, T0 + 1, flagged=None, growth=None),
                           layer_stats(20, T0 + 2, scale=4.1)])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: app.state.layers is not None and app.state.layers.step == 20, "layer stats")
            table, plot = app.query_one(LayerTable), app.query_one(GradNormPlot)
            assert not table.display and not plot.display and app.query_one(LRPlot).display
            assert table.row_count == 0  # not drawn while hidden
            assert len(app.state.total_grad_norm) == 2

            await pilot.press("h")
            await until(pilot, lambda: table.display and table.row_count == 4, "the layer table")
            assert plot.display
            assert not app.query_one(LRPlot).display and not app.query_one(SystemPanel).display
            rows = _row_texts(table)
            # Grouped by module: the name once, then the tensors under it.
            assert [r[0] for r in rows] == ["net.0", "", "net.2", ""]
            assert [r[1] for r in rows] == ["weight", "bias", "weight", "bias"]
            assert [r[2] for r in rows] == ["16×2", "16", "2×16", "2"]
            flagged = [r for r in rows if r[-1]]
            assert len(flagged) == 1 and flagged[0][1] == "weight" and flagged[0][-1] == "▲ x4.1"
            assert rows[2][-1] == "▲ x4.1"  # net.2.weight
            assert rows[0][5] == "1.2e-3"  # update/weight ratio of net.0.weight
            assert table.border_title == "layer health · step 20"

            # A later snapshot updates the cells in place (the flag moved off).
            trainer.events.put(layer_stats(30, T0 + 3, flagged=None, growth=None, scale=0.5))
            await until(pilot, lambda: _row_texts(table)[2][-1] == "", "the flag cleared", timeout=10)
            assert table.border_title == "layer health · step 30"
            assert _row_texts(table)[0][4] == fmt_norm(0.0452 * 0.5)

            await pilot.press("h")
            await until(pilot, lambda: not table.display and app.query_one(LRPlot).display, "h to switch back")
            assert app.query_one(ProgressPanel).display
            assert not trainer.commands.pending()

    run_async(body)


def test_h_at_80x24_shows_the_table_in_place_of_the_progress() -> None:
    trainer = FakeTrainer([run_started(T0), layer_stats(20, T0 + 2)])

    async def body() -> None:
        async with dashboard(trainer, size=(80, 24)) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: app.state.layers is not None, "layer stats")
            assert app.query_one(ProgressPanel).display
            await pilot.press("h")
            table = app.query_one(LayerTable)
            await until(pilot, lambda: table.display and table.row_count == 4, "the layer table")
            assert not app.query_one(ProgressPanel).display and not app.query_one(GradNormPlot).display
            assert table.size.width >= 60  # the whole row: every column fits

    run_async(body)


def test_the_gradient_norm_series_is_bounded_and_skips_repeated_steps() -> None:
    state = DashboardState()
    for step in range(1, 20_001):
        state.apply(layer_stats(step, T0 + step))
    state.apply(layer_stats(20_000, T0 + 30_000))  # the same step again (an eval after a flush)
    assert len(state.total_grad_norm) == 20_000
    assert state.total_grad_norm.buckets <= state.total_grad_norm.capacity < 20_000
    assert state.layers is not None and state.layers.step == 20_000


def test_number_formats() -> None:
    assert fmt_sci(0.0012) == "1.2e-3" and fmt_sci(None) == "–" and fmt_sci(float("nan")) == "nan"
    assert fmt_sci(0.0) == "0" and fmt_sci(35000.0) == "3.5e4"
    assert fmt_norm(3.214) == "3.21" and fmt_norm(1e-5) == "1.0e-5" and fmt_norm(float("inf")) == "inf"


# -- hints, samples, extras ---------------------------------------------------------------------

def test_a_hint_shows_in_the_log_and_the_hint_bar() -> None:
    trainer = FakeTrainer([run_started(T0)])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            bar = app.query_one(HintBar)
            await until(pilot, lambda: app.state.preset == "circles", "the run started")
            await ticks(pilot, sampler, 2)
            assert not bar.display  # no hint: no bar

            trainer.events.put(lr_hint(40, T0 + 4))
            await until(pilot, lambda: bar.display and bar.region.height == 1, "the hint bar")
            assert bar.has_class("-warning")
            text = widget_text(bar)
            assert "the loss is rising" in text and "lower the learning rate" in text
            log = log_text(app)
            assert "hint: the loss is rising" in log
            assert "loss 0.31 -> 0.58 over the last 40 steps" in log  # the evidence
            assert "lower the learning rate (l), e.g. to 3e-3" in log  # the remedy

            # The latest hint replaces the previous one, coloured by its severity.
            trainer.events.put(ev.Hint(60, T0 + 6, rule="input_bound", message="the GPU waits for data 62% of the time",
                                       evidence="data wait 0.62 of step time", remedy="raise --num-workers",
                                       severity="info"))
            await until(pilot, lambda: "GPU waits" in widget_text(bar), "the second hint in the bar")
            assert bar.has_class("-info") and not bar.has_class("-warning")
            assert "lower the learning rate" not in widget_text(bar)

    run_async(body)


def test_samples_go_to_the_log_and_eval_extras_to_the_progress_panel() -> None:
    extras = {"train_ppl": 5.4321, "val_ppl": 6.1234}
    trainer = FakeTrainer([
        run_started(T0),
        ev.EvalDone(100, T0 + 10, epoch=1, train_loss=1.69, train_metric=0.41, val_loss=1.81, val_metric=0.38,
                    metric="acc", lr=0.01, best_val_loss=1.81, best_epoch=1, improved=True, patience_used=0,
                    patience=None, epoch_end=True, extras=extras),
        ev.Sample(100, T0 + 10.1, epoch=1, text="ROMEO:\nWhat light through yonder"),
    ])

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: 'sample (epoch 1): "ROMEO: ⏎ What light through yonder"' in log_text(app),
                        "the sample in the log")
            await until(pilot, lambda: "val ppl 6.123" in progress_text(app), "the extras in the progress panel")
            assert "train ppl 5.432" in progress_text(app)

    run_async(body)


# -- the real engine --------------------------------------------------------------------------

def test_the_real_engine_with_boundary_draws_live_grids(tmp_path: Path) -> None:
    trainer = Trainer(long_cfg(), long_preset(), tmp_path / "run", boundary=True)

    async def body() -> None:
        async with dashboard(trainer, FakeSampler()) as (app, pilot, sampler):
            await wait_running(pilot, app, tmp_path / "run")
            panel = app.query_one(BoundaryPanel)
            await until(pilot, lambda: app.state.boundary_grid is not None and panel.display
                        and panel.border_title.startswith("boundary · live"), "a live grid from the engine")
            grid = app.state.boundary_grid
            assert grid is not None and len(grid.cells) == grid.rows * grid.cols
            assert app.check_action("toggle_boundary", ()) is True

    run_async(body)


def test_log_scale_plots_survive_a_resize() -> None:
    """plotext's own log scale took the log again on a repaint without new data (a resize) and crashed."""
    steps = list(range(1, 201))
    events: list[ev.Event] = [run_started(T0)]
    for first in range(1, 201, 50):
        chunk = steps[first - 1:first + 49]
        events.append(ev.StepStats(chunk[-1], T0 + first, epoch=1, steps=chunk, loss=[1.0 / s for s in chunk],
                                   lr=[0.01] * len(chunk), grad_norm=None, epoch_step=chunk[-1],
                                   steps_per_epoch=300, steps_per_sec=100.0, samples_per_sec=1600.0))
        events.append(layer_stats(chunk[-1], T0 + first, scale=first / 10))
    trainer = FakeTrainer(events)

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):  # type: ignore[arg-type]
            await until(pilot, lambda: app.state.step == 200, "the steps drained")
            await pilot.press("h", "y")
            await ticks(pilot, sampler, 6)  # the plots redrawn in log scale (at most 1 Hz)
            for size in ((100, 30), (80, 24), (120, 40)):
                await pilot.resize_terminal(*size)
                await ticks(pilot, sampler, 2)
                await pilot.pause()
                assert app.is_running and app.return_code is None
            assert app.log_scale and app.show_health

    run_async(body)
