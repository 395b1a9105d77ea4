"""The dashboard: a Textual app that shows a run and steers it by keys.

It drives one seam, a run source (tui/source.py): the run this dashboard
started in a child process, a run being watched or replayed, or the engine in
a worker thread here (`--in-process`). Data flow (DESIGN.md): keys -> commands
-> source; source -> a timer here (4 Hz) -> DashboardState -> widgets, inside
batch_update(). Plots redraw only when their data changed, at most once a
second. The keys are written once, in tui/keys.py.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterable

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from tuitrain.engine import events as ev
from tuitrain.engine.commands import SaveCheckpoint, SetLR, Stop, TogglePause
from tuitrain.tui import keys
from tuitrain.tui.history import DEFAULT_SMOOTHING, MAX_SMOOTHING
from tuitrain.tui.screens.help_screen import HelpScreen
from tuitrain.tui.screens.lr_dialog import LRDialog
from tuitrain.tui.source import RunSource
from tuitrain.tui.state import DashboardState, LogLine
from tuitrain.tui.system import SystemSampler
from tuitrain.tui.widgets.boundary_panel import BoundaryPanel
from tuitrain.tui.widgets.event_log import EventLog
from tuitrain.tui.widgets.grad_norm_plot import GradNormPlot
from tuitrain.tui.widgets.hint_bar import HintBar
from tuitrain.tui.widgets.layer_table import LayerTable
from tuitrain.tui.widgets.loss_plot import LossPlot
from tuitrain.tui.widgets.lr_plot import LRPlot
from tuitrain.tui.widgets.metric_plot import MetricPlot
from tuitrain.tui.widgets.progress_panel import ProgressPanel
from tuitrain.tui.widgets.status_bar import StatusBar
from tuitrain.tui.widgets.system_panel import SystemPanel

#: Seconds between progress-panel repaints (the step counter moves every tick).
PROGRESS_INTERVAL = 0.5
#: Seconds between LR-plot redraws while only the "used" curve grows.
LR_PLOT_INTERVAL = 3.0
#: Seconds between layer-table updates (the engine sends stats every log interval).
LAYERS_INTERVAL = 1.0

#: After a key sent a command: drain this often, for this long (the answer is on its way).
HURRY_INTERVAL, HURRY_SECONDS = 0.02, 1.0

#: The smallest terminal the dashboard draws in (columns, rows); below it, a one-line notice.
MIN_SIZE = (80, 24)

#: Below this width the footer is compact (one space between keys), so that every key fits.
FOOTER_COMPACT_BELOW = 120

STEERING = keys.STEERING


def mouse_wanted(env: dict[str, str] | None = None) -> bool:
    """No mouse tracking under GNU screen: with it on, screen holds a lone Esc back and glues it to the
    next key (Esc would not close a dialog, and the key after it would be typed into it)."""
    env = os.environ if env is None else env
    return not (env.get("STY") or env.get("TERM", "").startswith("screen"))


class TuitrainApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "tuitrain"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-tiny"), (20, "-short"), (30, "-tall")]
    BINDINGS = keys.bindings()

    def __init__(self, source: RunSource, *, refresh_hz: float = 4.0, plot_interval: float = 1.0,
                 sampler: SystemSampler | None = None) -> None:
        super().__init__()
        self.source = source
        self.state = DashboardState()
        if source.phase is not None:
            self.state.status = "STARTING"  # until the run's first event: the status bar says what it does
        self.sampler = sampler if sampler is not None else SystemSampler()
        self.refresh_hz = refresh_hz
        self.plot_interval = plot_interval
        self.smoothing = DEFAULT_SMOOTHING
        self.log_scale = False
        self.exit_code: int | None = None
        self.source_done: threading.Event = source.done
        """Set when the source's run() returned (the engine ended, or the run's record did)."""
        self.last_end: ev.RunEnded | None = None
        """The run's RunEnded, once seen: its final lines go to the shell after the dashboard closes."""
        self._quit_requested = False
        self._last_plot = 0.0
        self._last_lr_plot = 0.0
        self._last_progress = 0.0
        self._progress_dirty = False
        self._plots_dirty: set[str] = set()
        self._snapshot: Any = None
        self._ended_seen = False
        self._bindings_status = self.state.status
        self.show_boundary = True
        """The boundary panel's toggle (b); the panel needs BoundaryPoints too."""
        self.show_health = False
        """The middle row shows layer health (h) instead of LR and system."""
        self._last_layers = 0.0
        self._layers_dirty = False
        self._steerable = False
        self._painted = False
        self._hurry_until = 0.0

    # -- layout ----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status-bar")
        yield HintBar(id="hint-bar")
        with Horizontal(id="top"):
            yield LossPlot(id="loss-plot")
            yield MetricPlot(id="metric-plot")
            yield BoundaryPanel(id="boundary-panel")
        with Horizontal(id="middle"):
            yield LRPlot(id="lr-plot")
            yield SystemPanel(id="system-panel")
            yield GradNormPlot(id="grad-norm-plot")
            yield LayerTable(id="layer-table")
            yield ProgressPanel(id="progress-panel")
        yield EventLog(id="event-log")
        yield Static("", id="too-small", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        # In 256 colours a translucent modal backdrop blends the boundary's and the plots' colours into
        # garish or invisible ones: app.tcss dims behind dialogs only in truecolor.
        self.set_class(self.console.color_system != "truecolor", "-few-colours")
        self._compact_footer(self.size.width)
        self._check_size(self.size.width, self.size.height)
        self.sampler.start()
        self.run_source()
        self.set_interval(1 / self.refresh_hz, self.drain)

    def on_resize(self, event: events.Resize) -> None:
        self._compact_footer(event.size.width)
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, width: int, height: int) -> None:
        """Below 80x24 the panels would garble: say so instead (the keys still work)."""
        too_small = width < MIN_SIZE[0] or height < MIN_SIZE[1]
        screen = self.screen_stack[0] if self.screen_stack else self.screen
        if too_small:
            self.query_one("#too-small", Static).update(
                f"terminal too small (need {MIN_SIZE[0]}x{MIN_SIZE[1]}, this one is {width}x{height})\n"
                "q quits, ? lists the keys")
        screen.set_class(too_small, "-too-small")

    def _compact_footer(self, width: int) -> None:
        """Textual's compact footer below the wide breakpoint, so that the keys fit in 80 columns.

        (A reactive, not a tcss rule: the footer keys size themselves from it.)
        """
        compact = width < FOOTER_COMPACT_BELOW
        footer = self.query_one(Footer)
        if footer.compact != compact:
            footer.compact = compact

    def on_unmount(self) -> None:
        # However the app closes (an error in the UI, say), the source is told: an in-process run
        # stops and saves (Textual waits for its worker thread), a followed one stops following.
        self.source.close()

    # -- the source ---------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="source", name="source")
    def run_source(self) -> Any:
        return self.source.run()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "source" or event.state != WorkerState.ERROR:
            return
        # Sources report the run's failures as events; reaching here is a bug in tuitrain.
        error = event.worker.error
        self.state.status, self.state.end_status = "FAILED", "failed"
        self.state.log.append(LogLine(time.time(), "error", f"internal error: {type(error).__name__}: {error}"))
        self.state.dirty.add("status")
        self.refresh_bindings()

    def drain(self) -> None:
        """Timer: take every pending event, update what changed, in one batch."""
        if not self.is_running:
            return  # shutting down: the widgets may be gone
        source, state = self.source, self.state
        events = source.drain()
        if events:
            state.apply_all(events)
            ends = [e for e in events if isinstance(e, ev.RunEnded)]
            if ends:
                self.last_end = ends[-1]
        state.log.extend(source.take_notes())
        state.dirty |= source.drain_overlays()
        if source.failed_start is not None or source.unrecorded is not None:
            # The run ended before it could be shown, or cannot be recorded: the launcher says why.
            self._finish(source.failed_start or 0)
            return
        phase = source.phase
        if phase is not None and state.running and state.status in ("STARTING", "RUNNING"):
            state.status, state.phase = "STARTING", phase
        elif state.status == "STARTING":
            state.status, state.phase = "RUNNING", None
        snapshot = self.sampler.latest()
        dirty = state.dirty
        state.dirty = set()
        self._plots_dirty |= dirty & {"loss", "metric", "lr", "plan", "boundary", "grad"}
        self._progress_dirty |= "progress" in dirty
        self._layers_dirty |= "layers" in dirty
        now = time.monotonic()
        ended = not state.running
        with self.batch_update():
            self.query_one(StatusBar).show(state)  # repaints only when the second or the status changes
            if self._progress_dirty and (now - self._last_progress >= PROGRESS_INTERVAL or ended):
                self.query_one(ProgressPanel).show(state)
                self._progress_dirty, self._last_progress = False, now
            lines = state.take_log()
            if lines:
                self.query_one(EventLog).add(lines)
            if snapshot is not self._snapshot or "process" in dirty:
                self._snapshot = snapshot
                self.query_one(SystemPanel).show(snapshot, state.process)
            if "hint" in dirty:
                self.query_one(HintBar).show(state.hint)
            if "boundary-ready" in dirty:
                self._apply_views()
                self.refresh_bindings()  # b is no longer greyed out
            if self._layers_dirty and self.show_health and (now - self._last_layers >= LAYERS_INTERVAL or ended):
                self.query_one(LayerTable).show(state.layers)
                self._layers_dirty, self._last_layers = False, now
            if self._plots_dirty and (now - self._last_plot >= self.plot_interval or ended
                                      or self._first_data(state)):
                self._replot(now, force=ended)
                self._last_plot = now
        if not self._painted and len(state.loss):
            self._painted = True
            self.call_after_refresh(source.painted)  # painted: a reader may go full speed
        if not state.running and not self._ended_seen:
            self._ended_seen = True
            if state.end_signal and source.exit_with_run:
                self._finish(source.exit_status(state))
        if self._quit_requested and not state.running:
            self._finish(source.exit_status(state))
        steerable = source.steerable
        if state.status != self._bindings_status or steerable != self._steerable:
            # The Footer recomposes on refresh_bindings: only when the status word or steering changes.
            self._bindings_status, self._steerable = state.status, steerable
            self.refresh_bindings()

    def _first_data(self, state: DashboardState) -> bool:
        """A plot still says "waiting" and its data has arrived: draw now, not a plot interval later
        (a short run would otherwise say "waiting for the first steps" for its first 500)."""
        loss, lr = self.query_one(LossPlot), self.query_one(LRPlot)
        return ((len(state.loss) > 0 and loss.waiting and loss.display)
                or (state.lr is not None and lr.waiting and lr.display))

    def _replot(self, now: float, *, force: bool = False) -> None:
        state, dirty = self.state, self._plots_dirty
        if "loss" in dirty:
            self.query_one(LossPlot).replot(state, smoothing=self.smoothing, log_scale=self.log_scale,
                                            overlays=self.overlays())
        if "metric" in dirty:
            self.query_one(MetricPlot).replot(state, overlays=self.overlays())
        # The LR curve moves slowly; redraw it at once only when the plan changed.
        lr_plot = self.query_one(LRPlot)
        lr_due = ("plan" in dirty or now - self._last_lr_plot >= LR_PLOT_INTERVAL or force
                  or (lr_plot.waiting and lr_plot.display))
        if "lr" in dirty and lr_due or "plan" in dirty:
            self.query_one(LRPlot).replot(state)
            self._last_lr_plot = now
            dirty -= {"lr", "plan"}
        # Hidden panels are not drawn; what they missed is drawn when they are shown.
        if "boundary" in dirty and self._boundary_visible:
            self.query_one(BoundaryPanel).show(state.boundary_points, state.boundary_grid, running=state.running)
            dirty.discard("boundary")
        if "grad" in dirty and self.show_health:
            self.query_one(GradNormPlot).replot(state, clip=self._grad_clip())
            dirty.discard("grad")
        self._plots_dirty = dirty & {"lr", "boundary", "grad"}

    def overlays(self) -> list[tuple[str, DashboardState]]:
        """Runs drawn together on the loss and metric plots (`tuitrain watch a b`)."""
        return self.source.overlays(self.state)

    @property
    def _boundary_visible(self) -> bool:
        return self.show_boundary and self.state.boundary_points is not None

    def _grad_clip(self) -> float | None:
        clip = self.state.config.get("grad_clip")
        return float(clip) if isinstance(clip, (int, float)) and clip > 0 else None

    def _apply_views(self) -> None:
        """The b and h toggles are classes on the main screen; app.tcss lays them out."""
        screen = self.screen_stack[0] if self.screen_stack else self.screen
        screen.set_class(self._boundary_visible, "-boundary")
        screen.set_class(self.show_health, "-health")

    def _finish(self, code: int) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = code
        self.sampler.stop()
        self.exit(code, return_code=code)

    # -- keys ----------------------------------------------------------------------
    def run(self, *args: Any, mouse: bool | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """App.run, with the mouse off where it breaks the keyboard (mouse_wanted)."""
        return super().run(*args, mouse=mouse_wanted() if mouse is None else mouse, **kwargs)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        offered = self.source.offered()
        if keys.action_name(action) not in offered and action != "quit":
            return False  # not a key of this viewer (q's other meaning, d in watch)
        paused = self.state.status == "PAUSED" and self.state.running
        if action == "resume" and not paused:
            return False  # hidden: p shows as Pause
        if action == "toggle_pause" and paused:
            return False  # hidden: p shows as Resume
        if action in STEERING and not (self.state.running and self.source.steerable):
            return None  # shown greyed out: nothing to steer (ended, starting, read-only)
        if action == "toggle_boundary" and self.state.boundary_points is None:
            return None  # not a 2-D preset: there is no boundary to show
        return True

    def _send(self, command: Any) -> None:
        """Send, then drain at 50 Hz for a moment: the run's answer shows within tens of ms, not a tick later."""
        self.source.send(command)
        hurrying = self._hurry_until > time.monotonic()
        self._hurry_until = time.monotonic() + HURRY_SECONDS
        if not hurrying:
            self.set_timer(HURRY_INTERVAL, self._hurry)

    def _hurry(self) -> None:
        if not self.is_running:
            return
        if self.source.pending():
            self.drain()
        if time.monotonic() < self._hurry_until:
            self.set_timer(HURRY_INTERVAL, self._hurry)

    def action_toggle_pause(self) -> None:
        self._send(TogglePause())

    def action_resume(self) -> None:
        """p while PAUSED: a toggle too, so that p pressed twice quickly still means pause-resume."""
        self._send(TogglePause())

    def action_set_lr(self) -> None:
        def apply(value: float | None) -> None:
            if value is None:
                return
            if self.state.running:
                self._send(SetLR(value))
            else:
                self.notify("The run has ended; the learning rate was not changed.", severity="warning")

        self.push_screen(LRDialog(self.state.lr), apply)

    def action_save(self) -> None:
        self._send(SaveCheckpoint())

    def action_stop(self) -> None:
        self._send(Stop(reason=self.source.stop_reason()))

    def action_detach(self) -> None:
        """d: the run goes on without this dashboard (how depends on the source), and the shell returns."""
        source = self.source
        if not source.can_detach or not self.state.running or source.detached or not source.steerable:
            return
        source.detach()
        if source.quit_on_detach:
            self._finish(0)

    def action_help_quit(self) -> None:
        """ctrl+c: close the dialog on top; on the dashboard, point at the key that quits safely."""
        if len(self.screen_stack) > 1:
            self.screen.dismiss(None)
            return
        if self.source.quit_stops_run:
            self.notify("Press q to quit (a running training is stopped and saved first).", markup=False)
        elif self.source.read_only:
            self.notify("Press q to close this viewer (the run keeps training).", markup=False)
        else:
            self.notify("Press q to close this viewer (the run keeps training); x stops the run.", markup=False)

    async def action_quit(self) -> None:
        """ctrl+q (Textual's own quit key) leaves the same safe way as q."""
        if self.source.quit_stops_run:
            self.action_quit_run()
        else:
            self.action_leave()

    def action_leave(self) -> None:
        """q where leaving never stops the run (tuitrain watch)."""
        self.source.close()
        self._finish(self.source.exit_status(self.state))

    def action_quit_run(self) -> None:
        source = self.source
        if source.done.is_set():
            self.drain()  # the run ended: take its last events before choosing the exit status
        if self.state.running and not source.done.is_set() and source.steerable:
            if not self._quit_requested:
                self._quit_requested = True
                self.state.log.append(LogLine(time.time(), "action", "quitting: stopping and saving first"))
                self._send(Stop(reason=source.quit_reason()))
            return
        self._finish(source.exit_status(self.state))

    def action_smoothing(self, delta: float) -> None:
        self.smoothing = min(MAX_SMOOTHING, max(0.0, round(self.smoothing + delta, 2)))
        self.state.dirty.add("loss")
        self._last_plot = 0.0

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.state.dirty.add("loss")
        self._last_plot = 0.0

    def action_help(self) -> None:
        source = self.source
        offered = source.offered()
        if source.read_only:
            offered = offered - set(STEERING)
        rows = keys.help_rows(offered)
        if source.read_only:
            rows.append(("", "read-only: " + source.read_only_reason()))
        self.push_screen(HelpScreen(rows, title=source.help_title))

    def action_toggle_boundary(self) -> None:
        if self.state.boundary_points is None:
            return
        self.show_boundary = not self.show_boundary
        self._apply_views()
        if self.show_boundary:  # draw what arrived while it was hidden, now
            self.query_one(BoundaryPanel).show(self.state.boundary_points, self.state.boundary_grid,
                                               running=self.state.running)
            self._plots_dirty.discard("boundary")

    def action_toggle_health(self) -> None:
        self.show_health = not self.show_health
        self._apply_views()
        if self.show_health:
            self.query_one(LayerTable).show(self.state.layers)
            self._layers_dirty, self._last_layers = False, time.monotonic()
            self._plots_dirty.discard("grad")
            # After the layout pass: the plot thins its series to the width it will have.
            self.call_after_refresh(lambda: self.query_one(GradNormPlot).replot(self.state, clip=self._grad_clip()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Only tuitrain's commands, once each, from the keys table: Textual's own (a second Quit and Keys,
        Maximize, Screenshot, Theme) do nothing useful here. Keys greyed out now are left out."""
        for key, title, text in keys.palette_entries(self.source.offered()):
            name = keys.action_name(key.action)
            if name == "toggle_pause":  # one entry for p, whichever of its two meanings is showing
                allowed = self.state.running and self.source.steerable
            else:
                allowed = self.check_action(name, ()) is True
            if not allowed:
                continue
            parameters = tuple(float(a) for a in key.action[len(name) + 1:-1].split(",")) if "(" in key.action else ()
            method = getattr(self, f"action_{name}")
            yield SystemCommand(title, text, (lambda m=method, p=parameters: m(*p)))
