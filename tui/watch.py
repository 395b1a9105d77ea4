"""`tuitrain watch [RUN_DIR ...]`: the full dashboard on a run in another process.

The dashboard is the same TuitrainApp; its "trainer" is a RemoteRun
(tui/remote_run.py) that rebuilds the run from metrics.jsonl and steers it
over RUN_DIR/control.sock. What differs here is what leaving means: q closes
this watcher and the run keeps training (only x stops it), so no quit path
ever sends Stop. A finished or dead run is a read-only replay, with the
steering keys greyed out. With several run directories the loss and metric
plots overlay them all (one colour per run); the other panels show the
first, and steering is off (a key acting on one of several runs is a trap).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from textual.app import SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tuitrain.engine.commands import Stop
from tuitrain.tui.app import STEERING, TuitrainApp
from tuitrain.tui.remote_run import RemoteRun
from tuitrain.tui.screens.help_screen import KEYS, HelpScreen
from tuitrain.tui.state import DashboardState
from tuitrain.tui.system import SystemSampler

EXIT_OK, EXIT_USAGE = 0, 2

USAGE = """usage: tuitrain watch [RUN_DIR ...]

Open the dashboard on a run: live (steer it with the usual keys; q closes
the watcher and the run keeps training, x stops the run) or finished (a
read-only replay). Without RUN_DIR: the most recent run under ./runs.
Several RUN_DIRs: their loss and metric curves on the same plots
(read-only)."""

WATCH_KEYS = [
    ("p", "pause / resume the run"),
    ("l", "set the run's learning rate"),
    ("s", "save a checkpoint now (checkpoints/step-<N>.pt)"),
    ("x", "stop the run: it evaluates, saves and ends; this watcher stays open"),
    ("q", "detach: close this watcher; the run keeps training (tuitrain watch again any time)"),
    *[(key, text) for key, text in KEYS if key not in ("p", "l", "s", "x", "q", "d")],
]


class WatchApp(TuitrainApp):
    """TuitrainApp on RemoteRuns: never stops the run on the way out."""

    BINDINGS = [
        Binding("q", "quit_run", "Detach", id="quit", tooltip="close this watcher; the run keeps training"),
    ]
    EXIT_WITH_RUN = False

    def __init__(self, remote: RemoteRun, *, others: Sequence[RemoteRun] = (), **kwargs: Any) -> None:
        super().__init__(remote, **kwargs)  # type: ignore[arg-type]
        self.remote = remote
        self.others = list(others)
        """Further runs overlaid on the loss and metric plots (`tuitrain watch a b`)."""
        self.other_states = [DashboardState() for _ in self.others]
        self._steerable = False

    @property
    def compare(self) -> bool:
        return bool(self.others)

    # -- the remote runs ---------------------------------------------------------------------
    def on_mount(self) -> None:
        super().on_mount()
        if self.compare:
            names = ", ".join(label for label, _ in self.overlays())
            self.remote.note("info", f"comparing {names} on the loss and metric plots (one colour each); the other "
                                     f"panels show {self.remote.run_dir.name}; steering is off while comparing")
        for index, other in enumerate(self.others):
            self.run_worker(other.run, thread=True, exit_on_error=False, group="others", name=f"other-{index}")

    def drain(self) -> None:
        if not self.is_running:
            return
        state = self.state
        while self.remote.notes:
            state.log.append(self.remote.notes.popleft())
        for other, other_state in zip(self.others, self.other_states):
            events = other.events.drain()
            if events:
                other_state.apply_all(events)
                if other_state.dirty & {"loss", "metric"}:
                    state.dirty |= other_state.dirty & {"loss", "metric"}
                other_state.dirty = set()
                other_state.log.clear()
        super().drain()
        if not self.remote.first_frame.is_set() and len(state.loss):
            self.call_after_refresh(self.remote.first_frame.set)  # painted: the reader may go full speed
        steerable = self.steerable
        if steerable != self._steerable:
            self._steerable = steerable
            self.refresh_bindings()

    @property
    def steerable(self) -> bool:
        return not self.compare and self.remote.steerable

    def overlays(self) -> list[tuple[str, DashboardState]]:
        """(label, state) of every run on the shared plots, the first run first."""
        if not self.compare:
            return []
        runs = [self.remote, *self.others]
        return [(r.run_dir.name or str(r.run_dir), s) for r, s in zip(runs, [self.state, *self.other_states])]

    # -- leaving never stops the run ---------------------------------------------------------
    def on_unmount(self) -> None:
        self.remote.close()
        for other in self.others:
            other.close()

    def action_quit_run(self) -> None:
        self.remote.close()
        for other in self.others:
            other.close()
        self._finish(EXIT_OK)

    def action_stop(self) -> None:
        self.trainer.commands.put(Stop(reason="stopped from tuitrain watch"))

    def action_help_quit(self) -> None:
        self.notify("Press q to close this watcher (the run keeps training); x stops the run.")

    def action_help(self) -> None:
        keys = WATCH_KEYS if self.steerable else [
            (k, t) for k, t in WATCH_KEYS if k not in ("p", "l", "s", "x")] + [
            ("", "read-only: " + ("several runs are compared" if self.compare else "the run is not live here")),
        ]
        self.push_screen(HelpScreen(keys, title="tuitrain watch keys"))

    # -- keys --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "detach":
            return False  # q is the detach key here
        if action in STEERING and not self.steerable:
            return None
        return super().check_action(action, parameters)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title == "Quit tuitrain":
                yield SystemCommand("Detach (close the watcher)", "q: the run keeps training", self.action_quit_run)
            elif command.title == "Detach":
                continue
            elif command.callback in (self.action_toggle_pause, self.action_set_lr, self.action_save,
                                      self.action_stop) and not self.steerable:
                continue
            else:
                yield command


def pick_runs(args: Sequence[str]) -> list[Path]:
    """The run directories to watch; ValueError (one line) when there is none."""
    from tuitrain.engine.rundir import RunDirError, check_path, check_run_files
    from tuitrain.tui.runs_table import is_run_dir, latest_run

    if not args:
        root = Path("runs")
        found = latest_run(root) if root.is_dir() else None
        if found is None:
            raise ValueError("no runs under ./runs to watch; give a run directory: tuitrain watch RUN_DIR")
        return [found]
    paths = []
    for arg in args:
        try:
            path = check_path(arg, "watch")
            if not path.is_dir():
                raise ValueError(f"no such run directory: {arg}")
            if not is_run_dir(path):
                raise ValueError(f"{arg} is not a run directory (no config.json, metrics.jsonl or run.pid)")
            check_run_files(path)  # a FIFO would hang the reader, a link lead out of the run
        except (RunDirError, OSError) as exc:
            raise ValueError(str(exc) if isinstance(exc, RunDirError) else f"cannot open {arg}: {exc}") from None
        paths.append(path)
    return paths


def live_pid(run_dir: Path) -> int | None:
    """The pid in run.pid while the run is live (the system panel shows its RSS), else None.

    Only while live: the pid of a run that ended may belong to another process by now.
    """
    from tuitrain.engine.rundir import read_pid, run_state

    info = read_pid(run_dir)
    if info is None or run_state(run_dir) != "live":
        return None
    return int(info["pid"])


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return EXIT_OK
    flags = [a for a in args if a.startswith("-")]
    if flags:
        print(f"tuitrain: error: watch takes run directories, not {flags[0]} (see tuitrain watch --help)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        paths = pick_runs(args)
    except ValueError as exc:
        print(f"tuitrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        print("tuitrain: error: watch needs a terminal (for a table of runs: tuitrain runs)", file=sys.stderr)
        return EXIT_USAGE
    remotes = [RemoteRun(p) for p in paths]
    app = WatchApp(remotes[0], others=remotes[1:], sampler=SystemSampler(pid=live_pid(paths[0])))
    app.run()
    return app.exit_code if app.exit_code is not None else EXIT_OK
