"""`tuitrain runs [DIR]`: one line per run directory, from small files only.

A folder of runs can hold hundreds of runs with million-line metrics files,
so nothing here reads a whole metrics.jsonl: the status comes from the
control socket, run.pid and summary.json (engine/rundir.py run_state), the
start time from the first line, and a live run's step and best validation
loss from the last few kilobytes (a seek near the end).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tuitrain.engine.events import RUN_STATUSES
from tuitrain.engine.rundir import RunDirError, check_path, irregular_files, open_run_file, read_json

EXIT_OK, EXIT_USAGE = 0, 2

#: Bytes read from the end of metrics.jsonl per try, and the most read looking for an eval record.
TAIL_CHUNK = 64 * 1024
TAIL_LIMIT = 1024 * 1024

HEADERS = ("run", "preset", "status", "steps", "best val", "started")


@dataclass
class RunRow:
    path: Path
    preset: str
    status: str
    steps: int | None
    best_val_loss: float | None
    started: float | None
    """Unix time the run (its latest session, when resumed) started."""


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("config.json", "metrics.jsonl", "run.pid"))


def find_runs(root: Path) -> list[Path]:
    """The run directories directly under `root` (or `root` itself when it is one)."""
    if is_run_dir(root) and not any(is_run_dir(p) for p in _children(root)):
        return [root]
    return [p for p in _children(root) if is_run_dir(p)]


def _children(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []


def latest_run(root: Path) -> Path | None:
    """The most recently started run under `root` (what `tuitrain watch` with no argument opens)."""
    best: tuple[float, str] | None = None
    found = None
    for path in find_runs(root):
        if irregular_files(path):
            continue  # not a run tuitrain can open (tuitrain runs lists it as invalid)
        key = (started_at(path) or 0.0, path.name)
        if best is None or key > best:
            best, found = key, path
    return found


def started_at(path: Path) -> float | None:
    """When the run's latest session started: run.pid, else the first record, else config.json's mtime."""
    from tuitrain.engine.rundir import read_pid

    info = read_pid(path)
    if info is not None and isinstance(info.get("started"), (int, float)):
        return float(info["started"])
    first = _first_record(path / "metrics.jsonl")
    if first is not None and isinstance(first.get("t"), (int, float)):
        return float(first["t"])
    try:
        return (path / "config.json").stat().st_mtime
    except OSError:
        return None


def _first_record(path: Path) -> dict[str, Any] | None:
    try:
        with open_run_file(path) as f:
            line = f.readline(TAIL_CHUNK)
    except OSError:
        return None
    return _parse(line) if line.endswith(b"\n") else None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def tail_records(path: Path, want_eval: bool = True) -> list[dict[str, Any]]:
    """Complete records near the end of metrics.jsonl (oldest first).

    Reads TAIL_CHUNK from the end, and more (up to TAIL_LIMIT) while no eval
    record is among them when `want_eval`: a fast run writes thousands of
    step lines between two evaluations.
    """
    try:
        f = open_run_file(path)
    except OSError:
        return []
    with f:
        size = f.seek(0, os.SEEK_END)
        span = min(size, TAIL_CHUNK)
        while True:
            f.seek(size - span)
            data = f.read(span)
            lines = data.split(b"\n")
            lines.pop()  # the torn tail of a line being written (or b"" after the last newline)
            if span < size:
                lines = lines[1:]  # the first one is cut at the seek
            records = [r for r in map(_parse, lines) if r is not None]
            if (not want_eval or span >= min(size, TAIL_LIMIT)
                    or any(r.get("kind") == "eval" for r in records)):
                return records
            span = min(size, span * 4, TAIL_LIMIT)


def describe(path: Path) -> RunRow:
    from tuitrain.engine.rundir import run_state

    if irregular_files(path):  # a link or a FIFO among its files: not read (it could hang or lead elsewhere)
        return RunRow(path, "?", "invalid", None, None, None)
    status = run_state(path)
    summary = read_json(path / "summary.json")
    config = read_json(path / "config.json")
    preset = summary.get("preset") if isinstance(summary, dict) else None
    if not preset and isinstance(config, dict):
        spec = str(config.get("preset", "?"))
        preset = Path(spec).stem if spec.endswith(".py") else spec
    steps = best = None
    current_summary = isinstance(summary, dict) and summary.get("status") == status
    if current_summary:
        steps, best = summary.get("steps"), summary.get("best_val_loss")
    else:  # live, died or unknown: the last records say how far it got
        records = tail_records(path / "metrics.jsonl")
        for record in reversed(records):
            if steps is None and isinstance(record.get("step"), int):
                steps = record["step"]
            if best is None and record.get("kind") == "eval":
                best = record.get("best_val_loss")
            if steps is not None and best is not None:
                break
    return RunRow(path, str(preset or "?"), status, steps if isinstance(steps, int) else None,
                  best if isinstance(best, (int, float)) else None, started_at(path))


def format_table(rows: Sequence[RunRow]) -> str:
    """Aligned plain-text columns (no colour: it works in pipes and files)."""
    cells = [HEADERS] + [(
        str(r.path),
        r.preset,
        r.status,
        f"{r.steps:,}" if r.steps is not None else "-",
        f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-",
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started)) if r.started is not None else "-",
    ) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    right = {3, 4}  # numbers
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """`tuitrain runs [DIR]`: the table, oldest first (the newest ends up next to the prompt)."""
    args = list(argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: tuitrain runs [DIR]\n\nA table of the runs under DIR (default ./runs): "
              f"preset, status ({', '.join((*RUN_STATUSES, 'invalid'))}), "
              "steps, best validation loss, start time.")
        return EXIT_OK
    if len(args) > 1:
        print("tuitrain: error: runs takes at most one folder (see tuitrain runs --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        root = check_path(args[0], "runs") if args else Path("runs")
    except RunDirError as exc:
        print(f"tuitrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args and not root.exists():
        print("no runs under ./runs")
        return EXIT_OK
    if not root.is_dir():
        print(f"tuitrain: error: no such folder: {root}", file=sys.stderr)
        return EXIT_USAGE
    rows = sorted((describe(p) for p in find_runs(root)), key=lambda r: (r.started or 0.0, r.path.name))
    if not rows:
        print(f"no runs under {root}")
        return EXIT_OK
    print(format_table(rows))
    return EXIT_OK
