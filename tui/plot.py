"""`tuitrain plot RUN_DIR [RUN_DIR ...] [-o OUT]`: a run's curves as a PNG or SVG to paste.

The picture is the dashboard's story drawn by matplotlib (tui/plot_figure.py):
the loss (raw faint, smoothed as on screen, validation), the metric and the
LR used, every intervention marked at its step, several runs overlaid. The
run is read the way every viewer reads it: metrics.jsonl through the one
MetricsFollower, a bounded piece at a time, into a DashboardState whose
series are bounded, so a million-step run costs the memory of a short one.
Nothing here imports torch, and a live run can be drawn while it trains
(what it has written so far).

matplotlib is an optional dependency (`pip install 'tuitrain[plot]'`); bad
input is one line and exit 2, and the file is written atomically (a temp
file beside it, then renamed: engine/atomic.py), so a failure never leaves
half a picture under the name.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Sequence

from tuitrain.tui.history import DEFAULT_SMOOTHING, MAX_SMOOTHING
from tuitrain.tui.state import STATUS_WORDS, DashboardState

EXIT_OK, EXIT_USAGE = 0, 2

#: The file formats, by the output's extension.
FORMATS = ("png", "svg")
DEFAULT_OUT = "curves.png"
DEFAULT_SIZE = (1200, 900)
DEFAULT_DPI = 100
#: Each side of the picture, in pixels (a bigger one is a typo, and its PNG would take gigabytes).
MIN_SIDE, MAX_SIDE = 300, 8000
MIN_DPI, MAX_DPI = 20, 600
#: Bytes of metrics.jsonl read and decoded at a time: the reader's memory, whatever the file's size.
READ_CHUNK = 1 << 20
INSTALL = "pip install 'tuitrain[plot]'"

USAGE = f"""usage: tuitrain plot RUN_DIR [RUN_DIR ...] [-o OUT] [--size WxH] [--dpi N] [--smoothing S] [--log]

Draw a run's curves into a picture to paste: the training loss (raw, faint,
and smoothed as on the dashboard), the validation loss, the metric and the LR
used, with every intervention (pause, LR change, checkpoint, NaN, stop, hint)
marked at its step. Several RUN_DIRs are overlaid, one colour per run. Works
on a finished run and on a live one (what it has recorded so far).

  -o OUT         the picture, .png or .svg (default ./{DEFAULT_OUT})
  --size WxH     pixels (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}; each side {MIN_SIDE} to {MAX_SIDE})
  --dpi N        dots per inch: how large text and lines are against the pixels (default {DEFAULT_DPI})
  --smoothing S  the loss curve's EMA weight, 0 to {MAX_SMOOTHING} (default {DEFAULT_SMOOTHING}, the dashboard's)
  --log          log scale for the loss

Needs matplotlib: {INSTALL}"""


class _Usage(Exception):
    """Bad input: one line for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(f"{message} (see tuitrain plot --help)")


@dataclass
class Options:
    runs: list[Path]
    out: Path
    fmt: str
    size: tuple[int, int]
    dpi: int
    smoothing: float
    log_scale: bool


@dataclass
class RunRecord:
    """One run as the picture shows it: its name, what its record says, and its status word."""

    name: str
    path: Path
    state: DashboardState
    status: str


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"([0-9]{1,6})[xX]([0-9]{1,6})", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, like 1200x900, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"each side must be {MIN_SIDE} to {MAX_SIDE} pixels, got {text!r}")
    return w, h


def _dpi(text: str) -> int:
    from tuitrain.tui.cli import _integer

    value = _integer(text)
    if not MIN_DPI <= value <= MAX_DPI:
        raise argparse.ArgumentTypeError(f"expected {MIN_DPI} to {MAX_DPI}, got {text!r}")
    return value


def _smoothing(text: str) -> float:
    from tuitrain.tui.cli import _number

    value = _number(text)
    if not 0.0 <= value <= MAX_SMOOTHING:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_SMOOTHING}, got {text!r}")
    return value


def parse(argv: Sequence[str]) -> Options:
    """The options, with the run directories and the output checked; _Usage (one line) if bad."""
    from tuitrain.engine.rundir import RunDirError, check_path
    from tuitrain.tui.watch import pick_runs

    p = _Parser(prog="tuitrain plot", add_help=False, allow_abbrev=False)
    p.add_argument("runs", nargs="*")
    p.add_argument("-o", "--output", default=DEFAULT_OUT)
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE)
    p.add_argument("--dpi", type=_dpi, default=DEFAULT_DPI)
    p.add_argument("--smoothing", type=_smoothing, default=DEFAULT_SMOOTHING)
    p.add_argument("--log", action="store_true")
    args = p.parse_args(list(argv))
    if not args.runs:
        raise _Usage("plot needs a run directory: tuitrain plot RUN_DIR [RUN_DIR ...] (see tuitrain plot --help)")
    try:
        out = check_path(args.output, "-o")
    except RunDirError as exc:
        raise _Usage(str(exc)) from None
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise _Usage(f"-o {args.output}: the picture's name must end .png or .svg")
    _check_writable(out)
    try:
        runs = pick_runs(args.runs, "plot")
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    return Options(runs, out, fmt, args.size, args.dpi, args.smoothing, args.log)


def _check_writable(out: Path) -> None:
    """Refuse an output that cannot be written before the (long) read of the runs."""
    folder = out.parent
    if out.is_dir():
        raise _Usage(f"-o {out}: is a folder; give the picture's file name")
    if not folder.is_dir():
        raise _Usage(f"-o {out}: no such folder: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _Usage(f"-o {out}: cannot write in {folder}")


def read_run(path: Path) -> RunRecord:
    """Rebuild the run's state from metrics.jsonl, a chunk at a time (bounded memory), to its end now."""
    from tuitrain.engine.replay import MetricsFollower

    state = DashboardState()
    follower = MetricsFollower(path / "metrics.jsonl", chunk=READ_CHUNK)
    while True:
        state.apply_all(follower.read_events())
        state.take_log()  # lines for the dashboard's log: not drawn, not kept
        state.dirty.clear()
        if not follower.behind:
            break
    return RunRecord(path.resolve().name or str(path), path, state, status_word(path, state))


def status_word(path: Path, state: DashboardState) -> str:
    """The dashboard's status word for the run now: run_state() decides (a live run, a summary's
    status, died), the record's own end when nothing else tells."""
    from tuitrain.engine.rundir import run_state

    found = run_state(path)
    if found == "live":
        return state.status if state.status in ("RUNNING", "PAUSED") else "RUNNING"
    if found == "unknown":
        return state.status if state.end_status is not None else "UNKNOWN"
    return STATUS_WORDS.get(found, found.upper())


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return EXIT_OK
    try:
        opts = parse(args)
    except _Usage as exc:
        return _error(str(exc))
    try:
        from tuitrain.tui import plot_figure
    except ImportError as exc:
        if (getattr(exc, "name", None) or "").split(".")[0] != "matplotlib":
            raise
        return _error(f"tuitrain plot needs matplotlib: {INSTALL}")
    runs = [read_run(path) for path in opts.runs]
    figure = plot_figure.draw(runs, size=opts.size, dpi=opts.dpi, smoothing=opts.smoothing,
                              log_scale=opts.log_scale)
    from tuitrain.engine.atomic import atomic_write_bytes

    try:
        atomic_write_bytes(opts.out, lambda f: plot_figure.save(figure, f, opts.fmt))
    except OSError as exc:
        return _error(f"cannot write {opts.out}: {exc.strerror or exc}")
    print(opts.out)
    return EXIT_OK


def _error(text: str) -> int:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    print(f"tuitrain: error: {text}", file=sys.stderr)
    return EXIT_USAGE

