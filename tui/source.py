"""The seam the dashboard drives: a run source.

The app (tui/app.py) knows nothing about where a run lives. It calls
`run()` once in a thread worker, drains events and notes on a timer, sends
commands, and asks the source what `q` and `d` mean here. The sources:

- LaunchedRun  the run this dashboard started in a child process (the default):
               attached through the run directory and control.sock, with a lifeline
               (engine/lifeline.py); `d` leaves it training, `q` stops it first.
- WatchedRun   `tuitrain watch`: a run somebody else started, live or finished,
               or several overlaid; `q` only closes the viewer.
- InProcessRun `--in-process` and the tests: the engine in a worker thread of
               this process (never imported by the other two).

None of them imports torch: InProcessRun is handed a Trainer built elsewhere.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tuitrain.engine import events as ev
from tuitrain.engine.commands import Command, Stop
from tuitrain.engine.rundir import exit_status, process_status
from tuitrain.tui.state import DashboardState, LogLine

if TYPE_CHECKING:
    from tuitrain.engine.lifeline import ViewerEnd
    from tuitrain.tui.remote_run import RemoteRun

#: Every action a source can offer; a source leaves out what does not apply to it.
VIEW_ACTIONS = frozenset({"toggle_boundary", "toggle_health", "toggle_log", "help", "smoothing",
                          "command_palette", "help_quit"})
STEER_ACTIONS = frozenset({"toggle_pause", "resume", "set_lr", "save", "stop"})


class RunSource:
    """What the dashboard needs from a run. Subclasses fill it in."""

    #: q stops the run first (and the app exits with the run's status), or only closes the viewer.
    quit_stops_run = True
    #: The app exits with the run's signal status (128+N) when the run is interrupted.
    exit_with_run = True
    #: `d` exists: the run can go on without this viewer.
    can_detach = False
    #: After `d` the viewer closes at once (the run is elsewhere); else it waits for the run to hand over.
    quit_on_detach = False
    help_title = "tuitrain keys"

    def __init__(self) -> None:
        self._notes: deque[LogLine] = deque(maxlen=200)
        self.done = threading.Event()
        """Set when run() returned: nothing more will arrive."""
        self.detached = False
        """d was pressed: the run goes on without this viewer."""
        self.pid: int | None = None
        """The run's process (the system panel shows its memory), when known and live."""

    # -- what the app calls ------------------------------------------------------------------
    def run(self) -> Any:
        """Blocking, in the app's thread worker: produce events until the run ends or close()."""
        raise NotImplementedError

    def drain(self) -> list[ev.Event]:
        raise NotImplementedError

    def pending(self) -> bool:
        """Anything to drain (cheap: asked 50 times a second while an answer is awaited)."""
        return True

    def send(self, command: Command) -> None:
        raise NotImplementedError

    @property
    def steerable(self) -> bool:
        """Commands can reach the run now."""
        return False

    def detach(self) -> None:
        """d: leave the run training without this viewer."""

    def close(self) -> None:
        """The viewer is leaving (any way): stop following."""

    def painted(self) -> None:
        """The app has painted the first steps (a reader may go full speed now)."""

    @property
    def phase(self) -> str | None:
        """What the run is doing before its first event ("importing torch"), or None."""
        return None

    @property
    def failed_start(self) -> int | None:
        """The exit status of a run that ended before it could be attached, else None."""
        return None

    @property
    def unrecorded(self) -> str | None:
        """Why the run cannot be recorded, when it said so (a script's attach() failed; it trains on
        unseen): the dashboard closes and the launcher shows the script's output instead."""
        return None

    def offered(self) -> frozenset[str]:
        """The actions this viewer offers (the keys table is filtered by it)."""
        actions = set(VIEW_ACTIONS) | STEER_ACTIONS
        actions.add("quit_run" if self.quit_stops_run else "leave")
        if self.can_detach:
            actions.add("detach")
        return frozenset(actions)

    @property
    def read_only(self) -> bool:
        """Nothing here can steer the run (a replay, someone else's run, a comparison): the help says so."""
        return False

    def read_only_reason(self) -> str:
        """Why nothing here can steer (the help's last line, when read_only)."""
        return "the run is not live here"

    def overlays(self, state: DashboardState) -> list[tuple[str, DashboardState]]:
        """Runs drawn together on the loss and metric plots (`tuitrain watch a b`); none by default."""
        return []

    def drain_overlays(self) -> set[str]:
        """Feed the overlaid runs' states; return which shared plots changed."""
        return set()

    def take_notes(self) -> list[LogLine]:
        """Lines for the event log from the source itself (connected, read-only, died ...)."""
        out = []
        while self._notes:
            out.append(self._notes.popleft())
        return out

    def note(self, level: str, text: str) -> None:
        self._notes.append(LogLine(time.time(), level, text))

    def exit_status(self, state: DashboardState) -> int:
        """The exit status for how the run ended (engine/rundir.py exit_status)."""
        if state.running:
            return 1
        return exit_status(state.end_status or "failed", state.end_signal)

    def quit_reason(self) -> str:
        return "quit from the dashboard"

    def stop_reason(self) -> str:
        return "stopped from the dashboard"


class InProcessRun(RunSource):
    """The engine in a worker thread of the dashboard's own process (`--in-process`, tests).

    A detach here cannot leave the process: the run saves at this step and
    ends (like SIGHUP), and the launcher resumes it in the background.
    """

    can_detach = True

    def __init__(self, trainer: Any) -> None:
        super().__init__()
        self.trainer = trainer

    def run(self) -> Any:
        try:
            return self.trainer.run()
        finally:
            self.done.set()

    def drain(self) -> list[ev.Event]:
        return self.trainer.events.drain()

    def pending(self) -> bool:
        return len(self.trainer.events) > 0 or bool(self._notes)

    def send(self, command: Command) -> None:
        self.trainer.commands.put(command)

    @property
    def steerable(self) -> bool:
        return True  # the engine's own queue: whether the run still listens is the state's `running`

    def detach(self) -> None:
        from tuitrain.tui.detach import DETACH_SIGNAL

        self.detached = True
        self.note("action", "detaching: saving a checkpoint, then training continues in the background")
        self.send(Stop(reason="detached from the dashboard", signal=DETACH_SIGNAL))

    def close(self) -> None:
        # However the app closes (an error in the UI, say), a live run is told to stop and save:
        # Textual waits for the worker thread before app.run() returns.
        if not self.done.is_set():
            self.send(Stop(reason="the dashboard closed"))


class WatchedRun(RunSource):
    """`tuitrain watch`: a run in another process (RemoteRun), and any runs overlaid on its plots.

    Leaving never stops the run: q closes this viewer; only x stops it. With
    `read_only` (`tuitrain watch --read-only`, what `tuitrain serve --read-only`
    gives every visitor) this viewer never steers: the steering keys are greyed
    out as for a finished run, and send() drops anything that still arrives.
    """

    quit_stops_run = False
    exit_with_run = False
    help_title = "tuitrain watch keys"

    def __init__(self, remote: "RemoteRun", *, others: Sequence["RemoteRun"] = (), pid: int | None = None,
                 read_only: bool = False) -> None:
        super().__init__()
        self.remote = remote
        self.others = list(others)
        self.other_states = [DashboardState() for _ in self.others]
        self.pid = pid
        self.view_only = read_only
        """Asked for read-only: steering stays off even while the run is live and ours."""

    @property
    def compare(self) -> bool:
        return bool(self.others)

    def run(self) -> Any:
        if self.compare:
            names = ", ".join(r.run_dir.name or str(r.run_dir) for r in [self.remote, *self.others])
            self.note("info", f"comparing {names} on the loss and metric plots (one colour each); the other "
                              f"panels show {self.remote.run_dir.name}; steering is off while comparing")
        elif self.view_only:
            self.note("info", "read-only viewer: the steering keys are off here")
        for index, other in enumerate(self.others):
            threading.Thread(target=other.run, name=f"tuitrain-other-{index}", daemon=True).start()
        try:
            return self.remote.run()
        finally:
            self.done.set()

    def drain(self) -> list[ev.Event]:
        return self.remote.events.drain()

    def pending(self) -> bool:
        return len(self.remote.events) > 0 or bool(self.remote.notes) or bool(self._notes)

    def take_notes(self) -> list[LogLine]:
        out = super().take_notes()
        while self.remote.notes:
            out.append(self.remote.notes.popleft())
        return out

    def send(self, command: Command) -> None:
        if self.view_only:
            self.note("warning", f"{command.name} not sent: this viewer is read-only")
            return
        self.remote.send(command)

    @property
    def steerable(self) -> bool:
        return not self.compare and not self.view_only and self.remote.steerable

    @property
    def read_only(self) -> bool:
        return not self.steerable

    def read_only_reason(self) -> str:
        if self.compare:
            return "several runs are compared"
        if self.view_only:
            return "this viewer was started with --read-only"
        return super().read_only_reason()

    def painted(self) -> None:
        self.remote.first_frame.set()

    def close(self) -> None:
        self.remote.close()
        for other in self.others:
            other.close()

    def overlays(self, state: DashboardState) -> list[tuple[str, DashboardState]]:
        if not self.compare:
            return []
        runs = [self.remote, *self.others]
        return [(r.run_dir.name or str(r.run_dir), s) for r, s in zip(runs, [state, *self.other_states])]

    def drain_overlays(self) -> set[str]:
        changed: set[str] = set()
        for other, state in zip(self.others, self.other_states):
            events = other.events.drain()
            if events:
                state.apply_all(events)
                changed |= state.dirty & {"loss", "metric"}
                state.dirty = set()
                state.log.clear()
        return changed

    def exit_status(self, state: DashboardState) -> int:
        return 0  # a viewer that closes ends well, whatever the run did

    def stop_reason(self) -> str:
        return "stopped from tuitrain watch"


class LaunchedRun(RunSource):
    """The run this dashboard started: a child process (tui/launch.py) we attach to once it serves.

    Until then the lifeline (engine/lifeline.py) says what the run is doing
    ("importing torch", "building the model"; a user's script says "attaching"
    when it calls tuitrain.attach(), and until then the status bar names it).
    Once the child reports its run directory, a RemoteRun follows metrics.jsonl
    and steers over control.sock,
    exactly as `tuitrain watch` does; `d` tells the child over the lifeline to
    keep training, and the viewer simply leaves.
    """

    can_detach = True
    quit_on_detach = True

    #: Seconds of silence on the lifeline before the status bar says `silent` instead of the first phase.
    SILENT_AFTER = 8.0

    def __init__(self, proc: Any, lifeline: "ViewerEnd", *, startup_output: Callable[[], str] | None = None,
                 poll_interval: float | None = None, phase: str = "starting", silent: str | None = None) -> None:
        super().__init__()
        self._startup_output = startup_output
        self.proc = proc
        self.lifeline = lifeline
        self.pid = proc.pid
        self.run_dir: Path | None = None
        self.remote: "RemoteRun | None" = None
        self._phase: str | None = phase
        self._silent = silent
        """What to say when the child stays silent (a user's script that has not called attach() yet)."""
        self._exited_early: int | None = None
        self._unrecorded: str | None = None
        self._closed = threading.Event()
        self._poll_interval = poll_interval

    @property
    def phase(self) -> str | None:
        return self._phase

    @property
    def failed_start(self) -> int | None:
        return self._exited_early

    @property
    def unrecorded(self) -> str | None:
        return self._unrecorded

    def run(self) -> Any:
        try:
            run_dir = self._wait_ready()
            if run_dir is None:
                return None
            from tuitrain.tui.remote_run import RemoteRun

            kwargs = {} if self._poll_interval is None else {"poll_interval": self._poll_interval}
            self.remote = RemoteRun(run_dir, announce=False, **kwargs)
            if self._closed.is_set():
                return None
            return self.remote.run()
        finally:
            self.done.set()

    def _wait_ready(self) -> Path | None:
        """Read the lifeline until the child says where it runs, or exits first."""
        quiet_until: float | None = time.monotonic() + self.SILENT_AFTER if self._silent else None
        while not self._closed.is_set():
            if quiet_until is not None and time.monotonic() > quiet_until:
                quiet_until, self._phase = None, self._silent
                self.note("info", f"{self._silent}; q ends it")
            for message in self.lifeline.read(timeout=0.05):
                quiet_until = None  # it speaks: its phases say the rest
                if "phase" in message:
                    self._phase = str(message["phase"])
                elif "failed" in message:
                    self._unrecorded = str(message["failed"])[:1000]
                    return None
                elif "ready" in message:
                    self.run_dir = Path(str(message["ready"]))
                    self._phase = "first step"
                    said = self._startup_output() if self._startup_output else ""
                    for line in said.splitlines():  # printed while it started: warnings (--threads ...), a script's own
                        if line.strip():
                            level = "warning" if "warning" in line.lower() else "info"
                            self.note(level, line.removeprefix("tuitrain: warning: "))
                    return self.run_dir
            code = self.proc.poll()
            if code is not None and not self.lifeline.pending():
                self._exited_early = process_status(code)
                return None
        return None

    def drain(self) -> list[ev.Event]:
        remote = self.remote
        if remote is None:
            return []
        events = remote.events.drain()
        if self._phase is not None and any(isinstance(e, ev.StepStats) for e in events):
            self._phase = None
        return events

    def pending(self) -> bool:
        remote = self.remote
        return remote is None or len(remote.events) > 0 or bool(remote.notes) or bool(self._notes)

    def take_notes(self) -> list[LogLine]:
        out = super().take_notes()
        remote = self.remote
        while remote is not None and remote.notes:
            out.append(remote.notes.popleft())
        return out

    def send(self, command: Command) -> None:
        remote = self.remote
        if remote is None:
            self.note("warning", f"{command.name} not sent: the run is still starting ({self._phase})")
            return
        remote.send(command)

    @property
    def steerable(self) -> bool:
        remote = self.remote
        return remote is not None and remote.steerable

    def painted(self) -> None:
        if self.remote is not None:
            self.remote.first_frame.set()

    def hurry(self) -> None:
        """A signal was passed to the run: its end is expected any moment (called in a signal handler)."""
        if self.remote is not None:
            self.remote.hurry(wake=False)

    @property
    def end_event(self) -> ev.RunEnded | None:
        """The run's RunEnded once read from its record: the run's work is on disk, whatever its process
        still does while it exits."""
        return self.remote.end_event if self.remote is not None else None

    def detach(self) -> None:
        """The child keeps training; the lifeline's close (when this viewer exits) no longer stops it."""
        self.detached = True
        self.lifeline.detach()

    def close(self) -> None:
        self._closed.set()
        if self.remote is not None:
            self.remote.close()
