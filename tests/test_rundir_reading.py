"""Run-directory questions answered in one place (engine/rundir.py): small JSON files, run.pid,
liveness and the run's state; one list of the statuses a run can end with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tuitrain.engine import control, rundir
from tuitrain.engine.events import END_STATUSES, RUN_STATUSES
from tuitrain.engine.rundir import JSON_LIMIT, read_json, read_pid, run_state
from tuitrain.tui import remote_run, runs_table
from tuitrain.tui.state import STATUS_WORDS


def test_read_json_answers_none_for_anything_short_of_a_valid_small_json_file(tmp_path: Path) -> None:
    good = tmp_path / "summary.json"
    good.write_text(json.dumps({"status": "finished", "steps": 3}))
    assert read_json(good) == {"status": "finished", "steps": 3}
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"status": "fini')  # a killed writer
    assert read_json(tmp_path / "torn.json") is None
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    assert read_json(tmp_path / "binary.json") is None
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert read_json(tmp_path / "deep.json") is None
    (tmp_path / "huge.json").write_text('"' + "x" * JSON_LIMIT + '"')
    assert read_json(tmp_path / "huge.json") is None
    assert read_json(tmp_path) is None  # a folder
    (tmp_path / "link.json").symlink_to(good)
    assert read_json(tmp_path / "link.json") is None  # never followed out of a run directory
    os.mkfifo(tmp_path / "fifo.json")
    assert read_json(tmp_path / "fifo.json") is None  # and a FIFO never blocks the reader


def test_run_pid_and_state_are_read_through_the_one_reader(tmp_path: Path) -> None:
    (tmp_path / "run.pid").write_text('{"pid": true}')
    assert read_pid(tmp_path) is None
    (tmp_path / "run.pid").write_text(json.dumps({"pid": 12345, "host": "elsewhere", "started": 1.0}))
    assert read_pid(tmp_path) == {"pid": 12345, "host": "elsewhere", "started": 1.0}
    (tmp_path / "summary.json").write_text(json.dumps({"status": "early_stopped"}))
    assert run_state(tmp_path) == "early_stopped"
    (tmp_path / "summary.json").write_text("not json")
    assert run_state(tmp_path) == "unknown"  # a pid on another host: this machine cannot tell


def test_the_socket_module_defines_no_copies_of_the_run_directory_readers() -> None:
    for name in ("read_pid", "run_state", "pid_alive", "process_start", "run_process_alive", "PID_NAME"):
        assert getattr(control, name) is getattr(rundir, name), name  # imported, not defined again
    for module in (remote_run, runs_table):
        assert not hasattr(module, "_read_json"), module.__name__


@pytest.mark.parametrize("status", END_STATUSES)
def test_every_end_status_has_a_word_on_screen_and_a_place_in_the_runs_table(status: str) -> None:
    assert STATUS_WORDS[status].isupper()
    assert status in RUN_STATUSES and remote_run.END_STATUSES is END_STATUSES
    assert status in runs_table_help()


def test_the_viewer_knows_the_statuses_only_a_viewer_sees() -> None:
    assert STATUS_WORDS["died"] == "DIED" and {"live", "died", "unknown"} <= set(RUN_STATUSES)
    assert "died" in runs_table_help() and "invalid" in runs_table_help()


def runs_table_help() -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert runs_table.main(["--help"]) == 0
    return out.getvalue()
