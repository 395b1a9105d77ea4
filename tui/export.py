"""`tuitrain export RUN_DIR --tensorboard OUT_DIR | --csv OUT.csv [--evals]`: a run's record for other tools.

Any run directory, finished or live (read up to where it is now), a preset's or
a user's own loop's (tuitrain.attach): both write the same metrics.jsonl, read
here with the one reader (engine/replay.py), streamed in bounded pieces, so a
million-step run exports in bounded memory. Two passes: the first reads only
the evaluations and events (fast: step lines are skipped unparsed) for the CSV
columns and the points where a run went back (a resume, a NaN roll-back); the
second writes, leaving out the steps that were run again after such a point,
so the export shows the run as it finally went (engine/rundir.py step_losses
reads it the same way). Output files are written atomically. No torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NoReturn, Sequence

from tuitrain.engine import events as ev
from tuitrain.tui.export_csv import EvalColumns, write_evals, write_steps

EXIT_OK, EXIT_USAGE = 0, 2


class UsageError(Exception):
    """One line for the user, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see tuitrain export --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tuitrain export",
                description="Write a run's record (metrics.jsonl) as TensorBoard event files or CSV. Works on "
                            "finished and live runs, including your own loop's (tuitrain.attach).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--tensorboard", metavar="OUT_DIR",
                   help="write an event file into OUT_DIR (then: tensorboard --logdir OUT_DIR)")
    p.add_argument("--csv", metavar="OUT.csv", help="one row per step record, evaluations on their steps' rows "
                                                   "(- for stdout)")
    p.add_argument("--evals", action="store_true", help="with --csv: one row per evaluation instead")
    return p


@dataclass
class Outline:
    """What a first pass (evaluations and events only) tells before anything is written."""

    restarts: list[int] = field(default_factory=list)
    """The steps the run went back to, in order (a resume, a NaN roll-back)."""
    columns: EvalColumns = field(default_factory=EvalColumns)
    started: float | None = None
    """When the run first started (Unix time)."""


def outline(path: Path) -> Outline:
    from tuitrain.engine.replay import stream_events
    from tuitrain.tui.tensorboard_log import restart_step

    out = Outline()
    for piece in stream_events(path, steps=False):
        for e in piece:
            back = restart_step(e)
            if back is not None:
                out.restarts.append(back)
            elif isinstance(e, ev.EvalDone):
                out.columns.see(e)
            if out.started is None and isinstance(e, ev.RunStarted):
                out.started = e.t
    return out


def final_events(path: Path, restarts: list[int]) -> Iterator[list[ev.Event]]:
    """The events of metrics.jsonl in bounded pieces, without what a later restart ran again.

    Between two restarts, whatever happened after the step that a later restart
    went back to was superseded: the run went over those steps again.
    """
    from tuitrain.engine.replay import stream_events
    from tuitrain.tui.tensorboard_log import restart_step

    # cutoffs[i]: the lowest step any restart after segment i went back to (None: none did).
    cutoffs: list[int | None] = [None] * (len(restarts) + 1)
    low: int | None = None
    for i in range(len(restarts) - 1, -1, -1):
        low = restarts[i] if low is None else min(low, restarts[i])
        cutoffs[i] = low
    segment = 0
    for piece in stream_events(path):
        kept: list[ev.Event] = []
        for e in piece:
            if restart_step(e) is not None:
                segment = min(segment + 1, len(restarts))
            cut = cutoffs[segment]
            if cut is None or e.step <= cut:
                kept.append(e)
            elif isinstance(e, ev.StepStats) and e.steps[0] <= cut:
                n = sum(1 for s in e.steps if s <= cut)
                kept.append(dataclasses.replace(
                    e, step=e.steps[n - 1], steps=e.steps[:n], loss=e.loss[:n], lr=e.lr[:n],
                    grad_norm=e.grad_norm[:n] if e.grad_norm is not None else None))
        if kept:
            yield kept


def export_csv(metrics: Path, out: str, *, evals: bool) -> int:
    """Write the CSV to `out` (a path, or - for stdout); returns the rows written."""
    plan = outline(metrics)
    write = write_evals if evals else write_steps
    if out == "-":
        try:
            rows = write(final_events(metrics, plan.restarts), plan.columns, sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            _silence_stdout()
            return 0
        return rows
    from tuitrain.engine.atomic import atomic_write_bytes

    rows = 0

    def fill(f: io.BufferedIOBase) -> None:
        nonlocal rows
        text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=False)
        rows = write(final_events(metrics, plan.restarts), plan.columns, text)
        text.flush()
        text.detach()  # the file stays open for atomic_write_bytes to fsync and rename

    atomic_write_bytes(Path(out), fill)
    return rows


def export_tensorboard(metrics: Path, run_dir: Path, out_dir: Path) -> tuple[Path, int]:
    """Write one event file into `out_dir` (a second export of the same run replaces it); (file, records)."""
    from tuitrain.engine.atomic import atomic_write_bytes
    from tuitrain.tui.tensorboard_log import TensorBoardLog

    plan = outline(metrics)
    started = int(plan.started or 0)
    path = out_dir / f"events.out.tfevents.{started:010d}.{_label(run_dir)}.tuitrain-export"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = 0

    def fill(f: io.BufferedIOBase) -> None:
        nonlocal records
        log = TensorBoardLog(f)  # type: ignore[arg-type]
        for piece in final_events(metrics, plan.restarts):
            log.write(piece)
        log.flush()
        records = log.records

    atomic_write_bytes(path, fill)
    return path, records


def _label(run_dir: Path) -> str:
    """The run directory's name, kept to characters safe in a file name."""
    name = run_dir.resolve().name or "run"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]


def _silence_stdout() -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str]) -> int:
    try:
        return _main(list(argv))
    except UsageError as exc:
        text = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"tuitrain: error: {text}", file=sys.stderr)
        return EXIT_USAGE


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if (args.tensorboard is None) == (args.csv is None):
        raise UsageError("give one of --tensorboard OUT_DIR or --csv OUT.csv (see tuitrain export --help)")
    if args.evals and args.csv is None:
        raise UsageError("--evals goes with --csv (one row per evaluation)")
    if args.tensorboard is not None:
        from tuitrain.tui.tensorboard_log import MISSING, available
        if not available():
            raise UsageError(MISSING)
    from tuitrain.tui.watch import pick_runs

    try:
        run_dir = pick_runs([args.run_dir])[0]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UsageError(f"{run_dir} has no metrics.jsonl yet: nothing to export")
    if args.tensorboard is not None:
        out_dir = Path(args.tensorboard)
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--tensorboard {out_dir}: not a folder")
        try:
            path, records = export_tensorboard(metrics, run_dir, out_dir)
        except OSError as exc:
            raise UsageError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
        print(f"wrote {records:,} TensorBoard records to {path}; view them: tensorboard --logdir {out_dir}")
        return EXIT_OK
    out = args.csv
    if out != "-":
        if Path(out).is_dir():
            raise UsageError(f"--csv {out}: is a folder; give a file name")
        parent = Path(out).parent
        if not parent.is_dir():
            raise UsageError(f"cannot write {out}: no such folder {parent}")
    try:
        rows = export_csv(metrics, out, evals=args.evals)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    if out != "-":
        print(f"wrote {rows:,} rows to {out}")
    return EXIT_OK
