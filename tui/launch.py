"""The dashboard's side of a run's life: start it, hold the lifeline, pass signals on, choose the exit status.

Two shapes, one screen (tui/app.py drives either through tui/source.py):

- attached (the default): the run is a child process, `tuitrain ... --lifeline FD`,
  in its own session, writing RUN_DIR/output.log. The dashboard never imports
  torch, so it paints at once and says what the run is doing while it starts.
  SIGINT/SIGTERM/SIGHUP on the dashboard are passed to the run (which saves and
  exits 130/143/129); `d` leaves it training; the dashboard's exit status is
  the run's.
- in-process (`--in-process`): the engine in a thread worker of this process,
  the shape tuitrain started with; `d` saves and resumes it in the background.

Either way a dropped terminal must not leave the process hanging: Textual can
block for ever writing to a dead terminal while it shuts down, so a watchdog
ends the process with the right status once the run is over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from tuitrain.engine.events import RunSummary
from tuitrain.engine.lifeline import LIFELINE_ENV, RUN_DIR_ENV
from tuitrain.engine.rundir import exit_status, process_status
from tuitrain.engine.signals import StopSignals

if TYPE_CHECKING:
    from tuitrain.engine.lifeline import ViewerEnd
    from tuitrain.tui.app import TuitrainApp
    from tuitrain.tui.run_process import PreparedRun, SignalRelay
    from tuitrain.tui.source import LaunchedRun

#: The in-process shape: the UI and the engine share the GIL. A longer switch interval than Python's
#: 5 ms lets the engine keep it through its many short releases (tests/perf/bench_dashboard.py).
SWITCH_INTERVAL = 0.02
#: Seconds Textual gets to restore the terminal and return once the run is over and an exit was
#: asked for, before the process exits on its own.
EXIT_GRACE = 5.0
#: Seconds between looks at the terminal (is it still there?).
TERMINAL_CHECK = 0.1
#: How long the dashboard waits for its run to save and exit once it was asked to end.
RUN_EXIT_TIMEOUT = 120.0

HANGUP = int(getattr(signal, "SIGHUP", 1))


# -- the terminal ------------------------------------------------------------------------------

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


def _terminal_fds() -> tuple[int, ...]:
    return tuple(fd for fd in (0, 1, 2) if _isatty(fd))


def _watch_terminal(lost: Callable[[], None], returned: threading.Event, fds: tuple[int, ...]) -> None:
    """A terminal that went away is a hangup, even when no SIGHUP reaches us (a wrapper that
    catches or ignores it, as supervisors and `bash -c 'trap "" HUP; ...'` do)."""
    while not returned.wait(TERMINAL_CHECK):
        if terminal_gone(fds):
            lost()
            return


def _exit_watchdog(wants_exit: Callable[[], bool], run_over: Callable[[], bool], returned: threading.Event,
                   status: Callable[[], int], ttys: tuple[int, ...],
                   close: Callable[[int], None] | None = None) -> None:
    """Make sure a finished, saved run always ends the process (at once when the terminal hung up).

    `close` first asks the dashboard to exit (restoring the terminal): a run that a forwarded signal
    ended without a word on its record (a user's script killed by its SIGTERM) does not close it.
    """
    while not returned.wait(TERMINAL_CHECK):
        if wants_exit() and run_over():
            if close is not None:
                code = status()
                # Its own thread: asking a Textual that hangs would hang this watchdog too.
                threading.Thread(target=close, args=(code,), name="tuitrain-close", daemon=True).start()
            if returned.wait(0.0 if terminal_gone(ttys) else EXIT_GRACE):
                return
            os._exit(status())


def _say(text: str, *, err: bool = False) -> None:
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def _print_final(end: Any, metric: str, hung_up: bool) -> None:
    """After the alternate screen closed: what headless prints at the end (not after a hangup)."""
    if end is None or hung_up:
        return
    from tuitrain.tui.text import final_lines

    for text, err in final_lines(end, metric):
        _say(text, err=err)


# -- the attached shape (default) ---------------------------------------------------------------

class SignalForwarder(StopSignals):
    """SIGINT/SIGTERM/SIGHUP on the dashboard go to the run, which keeps their meaning (save, 128+N).

    A terminal that went away counts as SIGHUP all the same.
    """

    def __init__(self, pid: int, on_forward: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.pid = pid
        self.on_forward = on_forward

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == HANGUP and self.received == HANGUP:
            return  # one dropped connection often delivers several
        self.received = signum if self.received is None else self.received
        try:
            os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        if self.on_forward is not None:
            self.on_forward()

    def terminal_lost(self) -> None:
        if self.received is None:
            self._handle(HANGUP, None)


@dataclass(frozen=True)
class Child:
    """The run process a dashboard starts: tuitrain's own (`--preset ...`) or a user's script (`tuitrain run`).

    One way to start either (start_child) and one dashboard over either (run_attached); what differs
    is said here: the command, how the child learns its lifeline, and what the screen calls it.
    """

    command: tuple[str, ...]
    """What to execute, without the lifeline."""
    script: str | None = None
    """A user's script: its name as the status bar shows it (train.py); None for tuitrain's own run."""
    run_dir: Path | None = None
    """Where a user's script records (the viewer chose it, attach() creates it); tuitrain's own run chooses."""

    def argv(self, fd: int | None) -> list[str]:
        """tuitrain's own run is told its lifeline with --lifeline FD; a user's script in its environment."""
        if self.script is None and fd is not None:
            return [*self.command, "--lifeline", str(fd)]
        return list(self.command)

    def environ(self, fd: int | None) -> dict[str, str]:
        """Our environment for the child; a script gets TUITRAIN_RUN_DIR, and TUITRAIN_LIFELINE when attached.

        Attached, a script writes into a file we show (and later output.log): unbuffered, so that what
        it printed before it was stopped is there, unless the user chose otherwise.
        """
        env = dict(os.environ)
        env.pop("TEXTUAL", None)
        env.pop(LIFELINE_ENV, None)  # never a lifeline of ours it did not get from us
        if self.script is not None:
            env[RUN_DIR_ENV] = str(self.run_dir)
            if fd is not None:
                env[LIFELINE_ENV] = str(fd)
                env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    @property
    def phase(self) -> str:
        """What the status bar says until the child's first word on the lifeline."""
        return "starting" if self.script is None else self.script

    @property
    def silent(self) -> str | None:
        """What it says once a script has said nothing for a while: it has not called attach() (yet)."""
        return None if self.script is None else f"waiting for {self.script} to call tuitrain.attach()"

    @property
    def exit_timeout(self) -> float | None:
        """How long to wait for the child to exit once its run ended: a script may have work left after it."""
        return RUN_EXIT_TIMEOUT if self.script is None else None


def preset_child(args: Sequence[str]) -> Child:
    """tuitrain's own run process: this interpreter and this tuitrain, whatever the PATH says."""
    return Child((sys.executable, "-m", "tuitrain.tui.cli", *args))


def start_child(child: Child) -> tuple[subprocess.Popen[bytes], "ViewerEnd", Any]:
    """Start the run: own session (no SIGHUP from the terminal: the dashboard decides), stdin /dev/null,
    stdout and stderr into an unnamed file until it moves them to RUN_DIR/output.log."""
    from tuitrain.engine.lifeline import pair

    viewer_end, fd = pair()
    out = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(child.argv(fd), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                pass_fds=(fd,), start_new_session=True, close_fds=True, env=child.environ(fd))
    except BaseException:
        viewer_end.close()
        out.close()
        raise
    finally:
        os.close(fd)
    return proc, viewer_end, out


def startup_output(out: Any) -> str:
    """What the run printed before it moved its output to output.log (a usage error, a warning)."""
    try:
        return os.pread(out.fileno(), 1 << 20, 0).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


#: How much lower the dashboard's CPU priority is than its run's (os.nice): where the cores are busy,
#: the training gets them first; an idle core still paints the dashboard at once.
VIEWER_NICE = 5


def _yield_to_the_run() -> None:
    try:
        os.nice(VIEWER_NICE)
    except (OSError, AttributeError):
        pass  # not allowed here, or not POSIX: the dashboard just keeps its priority


def run_attached(child: Child, *, on_hangup: str = "save-exit",
                 make_app: Callable[["LaunchedRun"], "TuitrainApp"] | None = None) -> int:
    """A dashboard in a terminal over the run it starts (`tuitrain --preset ...`, `tuitrain run SCRIPT`):
    start the child, attach, return the exit status (the child's own)."""
    from tuitrain.tui.source import LaunchedRun

    proc, lifeline, out = start_child(child)
    _yield_to_the_run()
    source = LaunchedRun(proc, lifeline, startup_output=lambda: startup_output(out), phase=child.phase,
                         silent=child.silent)
    if make_app is None:
        from tuitrain.tui.app import TuitrainApp
        from tuitrain.tui.system import SystemSampler

        app = TuitrainApp(source, sampler=SystemSampler(pid=proc.pid))
    else:
        app = make_app(source)
    forwarder = SignalForwarder(proc.pid, on_forward=source.hurry).install()
    returned = threading.Event()
    ttys = _terminal_fds()

    def run_over() -> bool:
        return proc.poll() is not None or source.detached or source.end_event is not None

    def wants_exit() -> bool:
        return app.exit_code is not None or forwarder.received is not None

    def status() -> int:
        """The run's exit status: its process's, or (still exiting) the one its record ended with."""
        code = proc.poll()
        if code is not None:
            return process_status(code)
        end = source.end_event
        if source.detached or end is None:
            return 0 if source.detached else 1
        return exit_status(end.status, RunSummary.from_dict(end.summary).signal)

    def close(code: int) -> None:
        """A forwarded signal ended the run and the dashboard is still open: close it (q and d close it themselves)."""
        if app.exit_code is not None:
            return
        try:
            app.call_from_thread(app.exit, code, code)
        except RuntimeError:
            pass  # the app already stopped

    def hangup_leaves() -> None:
        """--on-hangup detach: the run stays as it is (the forwarded SIGHUP told it so); this viewer goes."""
        while not returned.wait(TERMINAL_CHECK):
            if forwarder.received == HANGUP:
                source.detach()
                try:
                    app.call_from_thread(app.exit, 0)
                except RuntimeError:
                    pass  # the app already stopped
                return

    threading.Thread(target=_exit_watchdog, args=(wants_exit, run_over, returned, status, ttys, close),
                     name="tuitrain-exit-watchdog", daemon=True).start()
    threading.Thread(target=_watch_terminal, args=(forwarder.terminal_lost, returned, ttys),
                     name="tuitrain-terminal-watch", daemon=True).start()
    if on_hangup == "detach":
        threading.Thread(target=hangup_leaves, name="tuitrain-hangup-detach", daemon=True).start()
    try:
        try:
            app.run()
        finally:
            returned.set()
            source.close()
        # Signals still go to the child while we wait for it to exit (a script may have work left).
        return _after_attached(app, source, proc, out, forwarder.received, on_hangup, child)
    finally:
        forwarder.restore()
        lifeline.close()
        out.close()


def _after_attached(app: "TuitrainApp", source: "LaunchedRun", proc: subprocess.Popen[bytes], out: Any,
                    received: int | None, on_hangup: str, child: Child) -> int:
    """The dashboard has closed: say what happened to the run, and return the exit status."""
    hung_up = received == HANGUP
    if source.failed_start is not None:
        text = startup_output(out).rstrip()
        if text:
            _say(text, err=source.failed_start != 0)
        if child.script is not None:
            _say(f"tuitrain: {child.script} exited with status {source.failed_start} before it called "
                 f"tuitrain.attach()", err=True)
        return source.failed_start
    if source.unrecorded is not None:
        return _follow_unrecorded(proc, out, source.unrecorded, child)
    run_dir = source.run_dir
    if source.detached or (hung_up and on_hangup == "detach"):
        source.detach()
        _say(f"detached: training continues in the background (pid {proc.pid}); tuitrain watch {run_dir}")
        return 0
    if run_dir is not None and proc.poll() is None and received is None and app.exit_code is None:
        # The dashboard itself failed (Textual printed the error): the run is intact and keeps training.
        source.detach()
        _say(f"tuitrain: the dashboard closed unexpectedly; the run keeps training (pid {proc.pid}): "
             f"tuitrain watch {run_dir}", err=True)
        return 1
    never_attached = run_dir is None and proc.poll() is None
    if never_attached:
        os.kill(proc.pid, signal.SIGTERM)  # closed before the run could start: nothing to keep
    code = _wait_child(proc, child, run_dir)
    if code is None:
        return 1
    end = app.last_end
    _print_final(end, app.state.metric, hung_up)
    if end is None and code != 0:
        text = startup_output(out).rstrip()
        if text:
            _say(text, err=True)
        if run_dir is not None:
            _say(f"tuitrain: the run's process exited with status {code} before its record ended; "
                 f"its output is in {run_dir}/output.log", err=True)
    if never_attached and child.script is not None:
        _say(f"tuitrain: {child.script} had not called tuitrain.attach(); ended it (exit status {code})",
             err=True)
    return code


def _follow_unrecorded(proc: subprocess.Popen[bytes], out: Any, why: str, child: Child) -> int:
    """A script whose attach() could not record trains on unseen: show its output here until it exits
    (signals are still passed to it), and return its status."""
    _say(f"tuitrain: {why}; {child.script or 'the run'} trains on without the dashboard (pid {proc.pid}); "
         f"its output follows", err=True)
    offset, shown = 0, True
    while True:
        done = proc.poll() is not None
        while True:
            try:
                data = os.pread(out.fileno(), 1 << 16, offset)
            except (OSError, ValueError):
                data = b""
            if not data:
                break
            offset += len(data)
            if shown:
                try:
                    sys.stdout.buffer.write(data)
                    sys.stdout.flush()
                except (OSError, ValueError, AttributeError):
                    shown = False  # the terminal is gone: keep waiting for the script all the same
        if done:
            return process_status(proc.returncode)
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass


#: Seconds the child gets to exit after its run ended before we say what we are waiting for.
EXIT_NOTE_AFTER = 2.0


def _wait_child(proc: subprocess.Popen[bytes], child: Child, run_dir: Path | None) -> int | None:
    """The child's exit status once it exits; None (said on stderr) when it outlasts child.exit_timeout."""
    timeout = child.exit_timeout
    try:
        return process_status(proc.wait(timeout=EXIT_NOTE_AFTER if timeout is None else timeout))
    except subprocess.TimeoutExpired:
        if timeout is not None:
            _say(f"tuitrain: the run (pid {proc.pid}) did not exit within {timeout:.0f} s; "
                 f"it is still in {run_dir}", err=True)
            return None
    where = f"; its output goes to {run_dir}/output.log" if run_dir is not None else ""
    _say(f"tuitrain: waiting for {child.script} (pid {proc.pid}) to exit{where}", err=True)
    return process_status(proc.wait())


# -- the in-process shape ----------------------------------------------------------------------

def run_in_process(run: "PreparedRun", relay: "SignalRelay") -> int:
    """`--in-process`: build the trainer here, run the dashboard until the user quits, return the status."""
    from tuitrain.engine.commands import Stop
    from tuitrain.tui.app import TuitrainApp
    from tuitrain.tui.source import InProcessRun
    from tuitrain.tui.system import SystemSampler

    ended: list[Any] = []  # the RunEnded event, printed to the shell once the dashboard is gone
    trainer = run.start(relay, boundary=True,  # the grids are for live viewers: headless skips them
                        listeners=[lambda e: ended.append(e) if type(e).__name__ == "RunEnded" else None])
    if isinstance(trainer, int):
        return trainer
    source = InProcessRun(trainer)
    app = TuitrainApp(source, sampler=SystemSampler())

    def finalize(code: int) -> int:
        """Close the control socket; after a detach (d, or SIGHUP with --on-hangup detach) resume in the background."""
        return run.finish(code, detach=source.detached or relay.detach_requested,
                          to_terminal=not relay.detach_requested)

    sys.setswitchinterval(SWITCH_INTERVAL)
    returned = threading.Event()
    ttys = _terminal_fds()

    def status() -> int:
        return finalize(app.exit_code if app.exit_code is not None else 128 + int(relay.received or 0))

    threading.Thread(target=_exit_watchdog,
                     args=(lambda: app.exit_code is not None or relay.received is not None,
                           source.done.is_set, returned, status, ttys),
                     name="tuitrain-exit-watchdog", daemon=True).start()
    threading.Thread(target=_watch_terminal, args=(relay.terminal_lost, returned, ttys),
                     name="tuitrain-terminal-watch", daemon=True).start()
    try:
        app.run()
    finally:
        returned.set()
        app.sampler.stop()
        if not source.done.is_set():
            # The app ended without the run ending (an error, or a lost terminal): stop it so that it saves.
            trainer.commands.put(Stop(reason="the dashboard closed"))
            source.done.wait(timeout=RUN_EXIT_TIMEOUT)
    _print_final(ended[-1] if ended else None, trainer.preset.metric_name, relay.received == HANGUP)
    if app.exit_code is not None:
        return finalize(app.exit_code)
    if relay.received is not None:
        return finalize(128 + relay.received)
    return finalize(source.exit_status(app.state))

