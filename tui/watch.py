"""`tuitrain watch [RUN_DIR ...]`: the full dashboard on a run in another process.

The dashboard is the same TuitrainApp over a WatchedRun source
(tui/source.py): a RemoteRun (tui/remote_run.py) rebuilds the run from
metrics.jsonl and steers it over RUN_DIR/control.sock. What differs is what
leaving means, and the source says it: q closes this watcher and the run
keeps training (only x stops it). A finished or dead run is a read-only replay, with the
steering keys greyed out. With several run directories the loss and metric
plots overlay them all (one colour per run); the other panels show the
first, and steering is off (a key acting on one of several runs is a trap).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from tuitrain.tui.app import TuitrainApp

EXIT_OK, EXIT_USAGE = 0, 2

USAGE = """usage: tuitrain watch [--read-only] [RUN_DIR ...]

Open the dashboard on a run: live (steer it with the usual keys; q closes
the watcher and the run keeps training, x stops the run) or finished (a
read-only replay). Without RUN_DIR: the most recent run under ./runs.
Several RUN_DIRs: their loss and metric curves on the same plots
(read-only). --read-only: watch a live run without steering it (the
steering keys are greyed out)."""

#: The flags watch takes (anything else starting with - is refused).
READ_ONLY = "--read-only"
#: How textual-serve (`tuitrain serve`) runs each browser's watcher: Textual's web driver, no terminal.
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"


def make_app(paths: Sequence[Path], *, read_only: bool = False, **kwargs: Any) -> TuitrainApp:
    """The dashboard on the first run (steerable while it is live, unless read_only), the others
    overlaid on its plots."""
    # Imported here: `tuitrain plot` and `export` check their run directories with pick_runs and
    # need no Textual app.
    from tuitrain.tui.app import TuitrainApp
    from tuitrain.tui.remote_run import RemoteRun
    from tuitrain.tui.source import WatchedRun
    from tuitrain.tui.system import SystemSampler

    remotes = [RemoteRun(p) for p in paths]
    source = WatchedRun(remotes[0], others=remotes[1:], pid=live_pid(paths[0]), read_only=read_only)
    kwargs.setdefault("sampler", SystemSampler(pid=source.pid))
    return TuitrainApp(source, **kwargs)


def pick_runs(args: Sequence[str], what: str = "watch") -> list[Path]:
    """The run directories to watch; ValueError (one line) when there is none.

    `what`: the command asking (`watch`, `plot` ...), named in the messages.
    """
    from tuitrain.engine.rundir import RunDirError, check_path, check_run_files
    from tuitrain.tui.runs_table import is_run_dir, latest_run

    if not args:
        root = Path("runs")
        found = latest_run(root) if root.is_dir() else None
        if found is None:
            raise ValueError(f"no runs under ./runs to {what}; give a run directory: tuitrain {what} RUN_DIR")
        return [found]
    paths = []
    for arg in args:
        try:
            path = check_path(arg, what)
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
    read_only = READ_ONLY in args
    args = [a for a in args if a != READ_ONLY]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        print(f"tuitrain: error: watch takes run directories and --read-only, not {flags[0]} "
              f"(see tuitrain watch --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        paths = pick_runs(args)
    except ValueError as exc:
        print(f"tuitrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not (sys.stdout.isatty() and sys.stderr.isatty()) and not served():
        print("tuitrain: error: watch needs a terminal (for a table of runs: tuitrain runs)", file=sys.stderr)
        return EXIT_USAGE
    if served():
        end_with_server()
    app = make_app(paths, read_only=read_only)
    app.run()
    return app.exit_code if app.exit_code is not None else EXIT_OK


def served() -> bool:
    """This watcher draws for a browser (`tuitrain serve` started it under Textual's web driver),
    not for a terminal: its stdout is textual-serve's pipe."""
    return os.environ.get("TEXTUAL_DRIVER") == WEB_DRIVER


def end_with_server() -> None:
    """Linux: this watcher gets SIGTERM (which Textual's web driver turns into an exit) when the
    `tuitrain serve` that started it dies, even by SIGKILL, instead of drawing on for nobody."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server died before the call
        os.kill(os.getpid(), signal.SIGTERM)
