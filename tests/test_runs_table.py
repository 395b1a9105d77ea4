"""`tuitrain runs [DIR]`: a plain table of run directories, read from small files only.

The run directories are written here as the engine writes them (config.json,
summary.json, run.pid, metrics.jsonl); the live one is served by a real
ControlServer in this process, and the died one names a process that has
exited.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from cli_helpers import in_process
from tuitrain.engine.commands import CommandQueue
from tuitrain.engine.control import ControlServer
from tuitrain.tui.runs_table import find_runs, latest_run, tail_records

T0 = 1_790_000_000.0


def make_run(root: Path, name: str, *, preset: str = "circles", summary: dict | None = None,
             pid: int | None = None, started: float = T0, steps: int = 0, evals: int = 0) -> Path:
    """A run directory like the engine leaves it (`steps` step records, an eval every steps/evals)."""
    path = root / name
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"preset": preset, "epochs": 3}))
    lines = [json.dumps({"kind": "event", "event": "started", "step": 0, "t": started, "preset": preset})]
    for step in range(1, steps + 1):
        lines.append(f'{{"kind":"step","step":{step},"epoch":1,"t":{started + step / 1000},"loss":0.5,"lr":0.01}}')
        if evals and step % (steps // evals) == 0:
            lines.append(json.dumps({"kind": "eval", "step": step, "epoch": 1, "t": started, "val_loss": 1 / step,
                                     "best_val_loss": 1 / step}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps({"preset": preset, **summary}))
    if pid is not None:
        (path / "run.pid").write_text(json.dumps({"pid": pid, "started": started, "host": socket.gethostname(),
                                                  "argv": ["tuitrain"]}))
    return path


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def table(rc: int, out: str) -> dict[str, list[str]]:
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["run", "preset", "status", "steps", "best", "val", "started"]
    return {Path(line.split()[0]).name: line.split() for line in lines[1:]}


def test_finished_failed_live_and_died_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "a-finished", summary={"status": "finished", "steps": 3750, "best_val_loss": 0.0166},
             pid=dead_pid(), started=T0, steps=20)
    make_run(root, "b-failed", preset="sine", summary={"status": "failed", "steps": 12, "best_val_loss": None},
             pid=dead_pid(), started=T0 + 10, steps=12)
    make_run(root, "d-died", pid=dead_pid(), started=T0 + 30, steps=400, evals=2)
    make_run(root, "e-unknown", started=T0 + 40)  # an older run: no run.pid, no summary
    live = make_run(root, "c-live", started=T0 + 20, steps=900, evals=3)
    server = ControlServer(live, CommandQueue())
    server.start()  # writes run.pid (this process) and serves control.sock
    try:
        rows = table(*in_process("runs", root)[:2])
    finally:
        server.close()
    assert set(rows) == {"a-finished", "b-failed", "c-live", "d-died", "e-unknown"}
    assert rows["a-finished"][1:5] == ["circles", "finished", "3,750", "0.0166"]
    assert rows["b-failed"][1:5] == ["sine", "failed", "12", "-"]
    assert rows["c-live"][1:5] == ["circles", "live", "900", f"{1 / 900:.4f}"]  # from the file's tail
    assert rows["d-died"][1:5] == ["circles", "died", "400", f"{1 / 400:.4f}"]
    assert rows["e-unknown"][1:5] == ["circles", "unknown", "0", "-"]
    assert rows["a-finished"][5] == time.strftime("%Y-%m-%d", time.localtime(T0))


def test_columns_line_up_and_the_newest_run_comes_last(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "z-old-with-a-long-name", summary={"status": "stopped", "steps": 5, "best_val_loss": 0.5},
             started=T0)
    make_run(root, "a-new", summary={"status": "early_stopped", "steps": 123456, "best_val_loss": 0.25},
             started=T0 + 100)
    rc, out, err = in_process("runs", root)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert [Path(line.split()[0]).name for line in lines[1:]] == ["z-old-with-a-long-name", "a-new"]
    status_at = lines[0].index("status")
    assert all(line[status_at:].split()[0] in ("status", "stopped", "early_stopped") for line in lines)
    assert latest_run(root) == root / "a-new"


def test_no_runs_missing_folder_and_bad_usage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert in_process("runs")[:2] == (0, "no runs under ./runs\n")
    (tmp_path / "empty").mkdir()
    assert in_process("runs", "empty")[:2] == (0, "no runs under empty\n")
    rc, out, err = in_process("runs", "missing")
    assert rc == 2 and err.strip() == "tuitrain: error: no such folder: missing"
    rc, out, err = in_process("runs", "a", "b")
    assert rc == 2 and len(err.splitlines()) == 1


def test_a_live_run_is_read_from_the_end_of_its_file_only(tmp_path: Path) -> None:
    """200k step lines (~14 MB): the step and the best val loss come from the last chunk(s)."""
    run = make_run(tmp_path, "big", pid=dead_pid(), steps=200_000, evals=4)
    size = (run / "metrics.jsonl").stat().st_size
    assert size > 10_000_000
    records = tail_records(run / "metrics.jsonl")
    assert records[-1]["step"] == 200_000
    assert any(r.get("kind") == "eval" for r in records)
    assert sum(len(json.dumps(r)) for r in records) < 1.2 * 1024 * 1024  # at most TAIL_LIMIT was read
    started = time.perf_counter()
    rows = table(*in_process("runs", tmp_path)[:2])
    assert time.perf_counter() - started < 2.0  # generous: one seek and ~1 MB, not 14 MB
    assert rows["big"][2:5] == ["died", "200,000", f"{1 / 200_000:.4f}"]
    assert find_runs(run) == [run]  # a run directory itself lists as one run
