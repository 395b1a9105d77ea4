"""The live dashboard: a Textual app that trains in a thread worker and steers by keys.

Data flow (DESIGN.md): keys -> commands -> engine thread; engine -> bounded
EventBuffer -> a timer here (4 Hz) -> DashboardState -> widgets, inside
batch_update(). The engine never touches the UI; plots redraw only when
their data changed, at most once a second.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from tuitrain.engine.commands import SaveCheckpoint, SetLR, Stop, TogglePause
from tuitrain.tui.screens.help_screen import HelpScreen
from tuitrain.tui.screens.lr_dialog import LRDialog
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

if TYPE_CHECKING:
    from tuitrain.engine.trainer import Trainer
    from tuitrain.tui.cli import PreparedRun, SignalRelay

#: Seconds between progress-panel repaints (the step counter moves every tick).
PROGRESS_INTERVAL = 0.5
#: Seconds between LR-plot redraws while only the "used" curve grows.
LR_PLOT_INTERVAL = 3.0
#: Seconds between layer-table updates (the engine sends stats every log interval).
LAYERS_INTERVAL = 1.0

#: The footer shows [ and ] as one entry: "[] Smooth".
SMOOTHING = Binding.Group("Smooth", compact=True)

#: The smallest terminal the dashboard draws in (columns, rows); below it, a one-line notice.
MIN_SIZE = (80, 24)

#: Below this width the footer is compact (one space between keys), so that every key fits.
FOOTER_COMPACT_BELOW = 120

#: Actions that steer a live run; greyed out once it has ended.
STEERING = ("toggle_pause", "resume", "set_lr", "save", "stop", "detach")


def mouse_wanted(env: dict[str, str] | None = None) -> bool:
    """No mouse tracking under GNU screen: with it on, screen holds a lone Esc back and glues it to the
    next key (Esc would not close a dialog, and the key after it would be typed into it)."""
    env = os.environ if env is None else env
    return not (env.get("STY") or env.get("TERM", "").startswith("screen"))


class TuitrainApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "tuitrain"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    #: The app exits with the run's signal status (128+N) when the run is interrupted;
    #: `tuitrain watch` (tui/watch.py) stays open instead.
    EXIT_WITH_RUN = True
    VERTICAL_BREAKPOINTS = [(0, "-tiny"), (20, "-short"), (30, "-tall")]
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause", id="pause", tooltip="pause training at the next step"),
        # The same key while PAUSED: the footer says what p does now (check_action shows one of the two).
        Binding("p", "resume", "Resume", id="resume", tooltip="resume training"),
        Binding("l", "set_lr", "LR", id="set-lr", tooltip="set the learning rate"),
        Binding("s", "save", "Save", id="save", tooltip="save a checkpoint now"),
        Binding("x", "stop", "Stop", id="stop", tooltip="stop early: evaluate, save, keep the dashboard"),
        Binding("d", "detach", "Detach", id="detach",
                tooltip="save, keep training in the background, return the shell (tuitrain watch RUN_DIR)"),
        Binding("q", "quit_run", "Quit", id="quit", tooltip="quit (stops and saves first)"),
        Binding("b", "toggle_boundary", "Boundary", id="boundary",
                tooltip="show or hide the decision boundary (2-D presets)"),
        Binding("h", "toggle_health", "Health", id="health",
                tooltip="layer health: gradient norm and per-layer table instead of LR and system"),
        Binding("y", "toggle_log", "Log", id="log-scale", tooltip="log scale for the loss"),
        Binding("question_mark", "help", "Help", id="help"),
        # Hidden from the footer below 100 columns (app.tcss: it would not fit); in the help and the palette.
        Binding("left_square_bracket", "smoothing(-0.1)", "Smooth-", id="smooth-less", group=SMOOTHING),
        Binding("right_square_bracket", "smoothing(0.1)", "Smooth+", id="smooth-more", group=SMOOTHING),
        # ctrl+c closes a dialog (help, LR, palette), wherever the focus is: a second way out where Esc
        # is unreliable (GNU screen glues a lone Esc to the next key); on the dashboard it points at q.
        Binding("ctrl+c", "help_quit", show=False, priority=True, id="close-or-help-quit"),
    ]

    def __init__(self, trainer: "Trainer", *, refresh_hz: float = 4.0, plot_interval: float = 1.0,
                 sampler: SystemSampler | None = None) -> None:
        super().__init__()
        self.trainer = trainer
        self.state = DashboardState()
        self.sampler = sampler if sampler is not None else SystemSampler()
        self.refresh_hz = refresh_hz
        self.plot_interval = plot_interval
        self.smoothing = 0.6
        self.log_scale = False
        self.exit_code: int | None = None
        self.engine_done = threading.Event()
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
        self.detach_requested = False
        """d was pressed: the run saves and ends here, then run_app resumes it in the background."""

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
        self.run_engine()
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
        # However the app closes (an error in the UI, say), a live run is told to
        # stop and save: Textual waits for the engine's worker thread before
        # app.run() returns, so the run must end for the process to end.
        if not self.engine_done.is_set():
            self.trainer.commands.put(Stop(reason="the dashboard closed"))

    # -- the engine ---------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="engine", name="engine")
    def run_engine(self) -> Any:
        try:
            return self.trainer.run()
        finally:
            self.engine_done.set()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "engine" or event.state != WorkerState.ERROR:
            return
        # Trainer.run() reports failures itself; reaching here is a bug in tuitrain.
        error = event.worker.error
        self.state.status, self.state.end_status = "FAILED", "failed"
        self.state.log.append(LogLine(time.time(), "error", f"internal error: {type(error).__name__}: {error}"))
        self.state.dirty.add("status")
        self.refresh_bindings()

    def drain(self) -> None:
        """Timer: take every pending event, update what changed, in one batch."""
        if not self.is_running:
            return  # shutting down: the widgets may be gone
        events = self.trainer.events.drain()
        state = self.state
        if events:
            state.apply_all(events)
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
        if not state.running and not self._ended_seen:
            self._ended_seen = True
            if state.end_signal and self.EXIT_WITH_RUN:
                self._finish(128 + int(state.end_signal))
        if self._quit_requested and not state.running:
            self._finish(self._exit_code_for_end())
        if state.status != self._bindings_status:
            # The Footer recomposes on refresh_bindings: only when the status word changes.
            self._bindings_status = state.status
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
        """Runs drawn together on the loss and metric plots (`tuitrain watch a b`); none here."""
        return []

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

    def _exit_code_for_end(self) -> int:
        if self.state.end_signal:
            return 128 + int(self.state.end_signal)
        return 1 if self.state.end_status == "failed" else 0

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
        paused = self.state.status == "PAUSED" and self.state.running
        if action == "resume" and not paused:
            return False  # hidden: p shows as Pause
        if action == "toggle_pause" and paused:
            return False  # hidden: p shows as Resume
        if action in STEERING and not self.state.running:
            return None  # shown greyed out: nothing to steer after the run ended
        if action == "toggle_boundary" and self.state.boundary_points is None:
            return None  # not a 2-D preset: there is no boundary to show
        return True

    def action_toggle_pause(self) -> None:
        self.trainer.commands.put(TogglePause())

    def action_resume(self) -> None:
        """p while PAUSED: a toggle too, so that p pressed twice quickly still means pause-resume."""
        self.trainer.commands.put(TogglePause())

    def action_set_lr(self) -> None:
        def apply(value: float | None) -> None:
            if value is None:
                return
            if self.state.running:
                self.trainer.commands.put(SetLR(value))
            else:
                self.notify("The run has ended; the learning rate was not changed.", severity="warning")

        self.push_screen(LRDialog(self.state.lr), apply)

    def action_save(self) -> None:
        self.trainer.commands.put(SaveCheckpoint())

    def action_stop(self) -> None:
        self.trainer.commands.put(Stop(reason="stopped from the dashboard"))

    def action_detach(self) -> None:
        """Save at this step (no evaluation, like SIGHUP) and end; run_app continues the run in the background."""
        if not self.state.running or self.detach_requested:
            return
        from tuitrain.tui.detach import DETACH_SIGNAL

        self.detach_requested = True
        self.state.log.append(LogLine(time.time(), "action",
                                      "detaching: saving a checkpoint, then training continues in the background"))
        self.trainer.commands.put(Stop(reason="detached from the dashboard", signal=DETACH_SIGNAL))

    def action_help_quit(self) -> None:
        """ctrl+c: close the dialog on top; on the dashboard, point at the key that quits safely."""
        if len(self.screen_stack) > 1:
            self.screen.dismiss(None)
            return
        self.notify("Press q to quit (a running training is stopped and saved first).", markup=False)

    async def action_quit(self) -> None:
        """ctrl+q (Textual's own quit key) quits the same safe way as q."""
        self.action_quit_run()

    def action_quit_run(self) -> None:
        if self.engine_done.is_set():
            self.drain()  # the run ended: take its last events before choosing the exit status
        if self.state.running and not self.engine_done.is_set():
            if not self._quit_requested:
                self._quit_requested = True
                self.state.log.append(LogLine(time.time(), "action", "quitting: stopping and saving first"))
                self.trainer.commands.put(Stop(reason="quit from the dashboard"))
            return
        self._finish(self._exit_code_for_end())

    def action_smoothing(self, delta: float) -> None:
        self.smoothing = min(0.99, max(0.0, round(self.smoothing + delta, 2)))
        self.state.dirty.add("loss")
        self._last_plot = 0.0

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.state.dirty.add("loss")
        self._last_plot = 0.0

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

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
        """Only tuitrain's commands, once each: Textual's own (a second Quit and Keys, Maximize,
        Screenshot, Theme) do nothing useful here."""
        running = self.state.running
        if running:
            yield SystemCommand("Pause / resume training", "p: pause or resume at the next step",
                                self.action_toggle_pause)
            yield SystemCommand("Set learning rate", "l: a new LR from now on (scales the schedule)",
                                self.action_set_lr)
            yield SystemCommand("Save checkpoint now", "s: write checkpoints/step-<N>.pt", self.action_save)
            yield SystemCommand("Stop early", "x: finish the step, evaluate, save", self.action_stop)
            yield SystemCommand("Detach", "d: keep training in the background and return the shell",
                                self.action_detach)
        yield SystemCommand("Quit tuitrain", "q: stops and saves first while training", self.action_quit_run)
        yield SystemCommand("More smoothing", "]: smooth the loss curve more", lambda: self.action_smoothing(0.1))
        yield SystemCommand("Less smoothing", "[: smooth the loss curve less", lambda: self.action_smoothing(-0.1))
        yield SystemCommand("Toggle log scale", "y: log scale for the loss plot", self.action_toggle_log)
        if self.state.boundary_points is not None:
            yield SystemCommand("Toggle decision boundary", "b: the model's predicted class over the input plane",
                                self.action_toggle_boundary)
        yield SystemCommand("Toggle layer health", "h: gradient norm and per-layer norms instead of LR and system",
                            self.action_toggle_health)
        yield SystemCommand("Keys", "?: every key", self.action_help)


SWITCH_INTERVAL = 0.02

#: Seconds Textual gets to restore the terminal and return once the run is over
#: and an exit was asked for, before the process exits on its own.
EXIT_GRACE = 5.0
#: Seconds between looks at the terminal (is it still there?). Once it is gone there is
#: nothing to restore: the saved run ends the process at once (a dropped connection must
#: end it within 2 s).
TERMINAL_CHECK = 0.1


def terminal_gone(fds: Iterable[int]) -> bool:
    """Has the terminal on any of these descriptors (terminals at the start) hung up?

    poll() with no events asked still reports POLLHUP/POLLERR/POLLNVAL, and reads nothing,
    so Textual's input thread is not disturbed. (Not isatty() now: on a hung-up
    terminal it may fail and call it 'not a terminal'.)
    """
    import select

    watched = list(fds)
    if not watched:
        return False
    poller = select.poll()
    for fd in watched:
        poller.register(fd, 0)
    bad = select.POLLHUP | select.POLLERR | select.POLLNVAL
    return any(mask & bad for _, mask in poller.poll(0))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _watch_terminal(relay: "SignalRelay", returned: threading.Event, fds: tuple[int, ...]) -> None:
    """A terminal that went away is a hangup, even when no SIGHUP reaches us (a wrapper that
    catches or ignores it, as supervisors and `bash -c 'trap "" HUP; ...'` do)."""
    while not returned.wait(TERMINAL_CHECK):
        if terminal_gone(fds):
            relay.terminal_lost()
            return


def _exit_watchdog(app: TuitrainApp, relay: "SignalRelay", returned: threading.Event,
                   finalize: Callable[[int], int], ttys: tuple[int, ...] = ()) -> None:
    """Make sure a finished, saved run always ends the process.

    When the terminal is gone (SIGHUP: the SSH connection dropped), Textual can
    block for ever writing to it while shutting down. The checkpoint is on disk
    by then, so after a grace period the process exits with the right status:
    at once when the terminal has hung up (there is nothing left to restore).
    """
    while not returned.wait(TERMINAL_CHECK):
        wants_exit = app.exit_code is not None or relay.received is not None
        if wants_exit and app.engine_done.is_set():
            if returned.wait(0.0 if terminal_gone(ttys) else EXIT_GRACE):
                return
            code = app.exit_code if app.exit_code is not None else 128 + int(relay.received or 0)
            os._exit(finalize(code))


def _print_final(ended: list[Any], metric: str, relay: "SignalRelay") -> None:
    """After the alternate screen closed: what headless prints at the end (status, best val, run dir).

    Not after SIGHUP: there is no terminal to print to.
    """
    if not ended or relay.received == getattr(signal, "SIGHUP", None):
        return
    from tuitrain.tui.headless import final_lines

    for text, err in final_lines(ended[-1], metric):
        try:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)
        except (OSError, ValueError):
            return


def run_app(run: "PreparedRun", relay: "SignalRelay") -> int:
    """Build the trainer, run the dashboard until the user quits, return the exit status."""
    ended: list[Any] = []  # the RunEnded event, printed to the shell once the dashboard is gone
    trainer = run.start(relay, boundary=True,  # the grids are for live viewers: headless skips them
                        listeners=[lambda e: ended.append(e) if type(e).__name__ == "RunEnded" else None])
    if isinstance(trainer, int):
        return trainer
    app = TuitrainApp(trainer)

    def finalize(code: int) -> int:
        """Close the control socket; after a detach (d, or SIGHUP with --on-hangup detach) resume in the background."""
        return run.finish(code, detach=app.detach_requested or relay.detach_requested,
                          to_terminal=not relay.detach_requested)

    # The UI and the engine share the GIL. A longer switch interval than
    # Python's 5 ms lets the engine keep it through its many short releases
    # instead of handing it to the UI each time; keys still answer within
    # tens of ms (measured: tests/perf/bench_dashboard.py).
    sys.setswitchinterval(SWITCH_INTERVAL)
    returned = threading.Event()
    ttys = tuple(fd for fd in (0, 1, 2) if _isatty(fd))  # the terminal as it was at the start
    threading.Thread(target=_exit_watchdog, args=(app, relay, returned, finalize, ttys),
                     name="tuitrain-exit-watchdog", daemon=True).start()
    threading.Thread(target=_watch_terminal, args=(relay, returned, ttys), name="tuitrain-terminal-watch",
                     daemon=True).start()
    try:
        app.run()
    finally:
        returned.set()
        app.sampler.stop()
        if not app.engine_done.is_set():
            # The app ended without the run ending (an error, or a lost terminal):
            # stop the run so that it saves, and wait for it.
            trainer.commands.put(Stop(reason="the dashboard closed"))
            app.engine_done.wait(timeout=120)
    _print_final(ended, trainer.preset.metric_name, relay)
    if app.exit_code is not None:
        return finalize(app.exit_code)
    if relay.received is not None:
        return finalize(128 + relay.received)
    return finalize(app._exit_code_for_end() if not app.state.running else 1)
