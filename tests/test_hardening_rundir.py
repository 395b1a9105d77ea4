"""The run directory: one run at a time (a lock), new runs only into empty folders, run files
that are regular files, paths too long for the file system, and a record that could not be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cli_helpers import snapshot, Proc, assert_usage_error, in_process, metrics, read_json, train_in_process, tuitrain
from conftest import wait_until


def lock_holder(run_dir: Path) -> int | None:
    """The pid holding run.lock, as the kernel says (F_GETLK: asks without taking it)."""
    try:
        fd = os.open(run_dir / "run.lock", os.O_RDWR)
    except OSError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        kind, _, _, _, pid = struct.unpack("hhqqi4x", answer)
    finally:
        os.close(fd)
    return pid if kind != fcntl.F_UNLCK else None


# -- item 2: a lock on the run directory ---------------------------------------------------

SLOW_SETUP = """
import time
from pathlib import Path
import torch
from torch import nn
from tuitrain.presets import Data

GO = Path(__file__).with_name("GO")


def make_data(seed):
    deadline = time.monotonic() + 60
    while not GO.exists() and time.monotonic() < deadline:  # the test says when set-up may finish
        time.sleep(0.01)  # wait-ok: a condition wait in the preset, bounded
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, generator=g)
    return Data(train=(x, (x[:, 0] > 0).long()), val=(x, (x[:, 0] > 0).long()))


def make_model():
    return nn.Linear(2, 2)
"""


@pytest.mark.parametrize("how", ["resume", "new"])
def test_a_second_run_on_a_locked_directory_is_refused_during_the_first_ones_setup(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run holds the lock while it builds its data (stuck until GO): the second is refused."""
    preset = tmp_path / "slow.py"
    preset.write_text(SLOW_SETUP)
    R = tmp_path / "R"
    if how == "resume":
        (tmp_path / "GO").touch()
        p = tuitrain("--preset", preset, "--headless", "--epochs", "1", "--run-dir", R, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        (tmp_path / "GO").unlink()
        args = ["--resume", R, "--preset", preset, "--headless", "--epochs", "3"]
    else:
        args = ["--preset", preset, "--headless", "--epochs", "2", "--run-dir", R]
    first = Proc(*args, cwd=tmp_path)
    try:
        pid = wait_until(lambda: lock_holder(R), timeout=60, what="the first run's lock")
        assert pid == first.popen.pid
        monkeypatch.chdir(tmp_path)
        rc, _, err = in_process(*args)  # this process is not the lock's holder either
        assert_usage_error(rc, err, f"another tuitrain run (pid {pid}) is using {R}")
        (tmp_path / "GO").touch()
        rc, _, err = first.finish()
        assert rc == 0, err
    finally:
        first.kill()
    started = [r for r in metrics(R) if r.get("event") == "started"]
    assert len(started) == (2 if how == "resume" else 1)  # the refused run wrote nothing
    assert read_json(R / "summary.json")["epochs"] == (3 if how == "resume" else 2)
    assert lock_holder(R) is None  # released when the run ended


def test_the_lock_is_not_inherited_by_a_child_and_dies_with_its_process(tmp_path: Path) -> None:
    """A forked child (a DataLoader worker) outliving the run does not keep the directory locked."""
    R = tmp_path / "R"
    R.mkdir()
    script = textwrap.dedent(f"""
        import os, signal, sys
        from tuitrain.engine.rundir import RunLock
        RunLock.acquire({str(R)!r})
        child = os.fork()
        if child == 0:              # the child: lives until the test kills it (it must not read the
            signal.pause()          # parent's stdin: it could take the word meant for the parent)
            os._exit(0)
        print(child, flush=True)
        sys.stdin.read(1)           # the parent: waits for the test's word, then dies
        os._exit(0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(proc.stdout.readline())
        assert lock_holder(R) == proc.pid
        proc.stdin.write("x")
        proc.stdin.flush()
        wait_until(lambda: lock_holder(R) is None, timeout=30, what="the parent's lock to go")
        os.kill(child, 0)  # the child still runs (raises if it is gone)
        from tuitrain.engine.rundir import RunLock
        RunLock.acquire(R).release()
    finally:
        proc.stdin.close()
        proc.kill()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_a_stale_lock_file_of_a_killed_run_is_taken_over(tmp_path: Path, circles_run: Path) -> None:
    R = tmp_path / "R"
    shutil.copytree(circles_run, R)
    first = Proc("--resume", R, "--headless", "--epochs", "400", cwd=tmp_path)
    wait_until(lambda: lock_holder(R), timeout=60, what="the lock")
    first.popen.kill()
    first.finish()
    assert (R / "run.lock").exists()
    train_in_process("--resume", R, "--headless", "--epochs", "2", cwd=tmp_path)
    assert read_json(R / "summary.json")["epochs"] == 2


# -- item 4: a new run only into a new or empty folder ---------------------------------------

FOLDERS = {
    "config": {"config.json": "{}"},
    "history": {"history.json": "[]"},
    "summary": {"summary.json": '{"status": "finished"}'},
    "checkpoints": {"checkpoints/best.pt": "x", "checkpoints/latest.pt": "y"},
    "notes": {"notes.txt": "mine"},
    "hidden": {".keep": ""},
    "subfolder": {"data/a.csv": "1,2"},
}


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_a_new_run_into_a_folder_that_holds_anything_is_refused(here: Path, name: str) -> None:
    R = here / "R"
    for rel, text in FOLDERS[name].items():
        (R / rel).parent.mkdir(parents=True, exist_ok=True)
        (R / rel).write_text(text)
    before = snapshot(R)
    rc, _, err = in_process("--preset", "circles", "--headless", "--run-dir", R)
    assert_usage_error(rc, err, str(R))
    assert snapshot(R) == before
    assert sorted(p.name for p in R.iterdir()) == sorted({rel.split("/")[0] for rel in FOLDERS[name]})


def test_a_finished_run_without_metrics_keeps_its_files(here: Path, circles_run: Path) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    (R / "metrics.jsonl").unlink()
    before = snapshot(R)
    rc, _, err = in_process("--preset", "circles", "--headless", "--run-dir", R)
    assert_usage_error(rc, err, f"{R} already holds a run")
    assert snapshot(R) == before


def test_an_empty_folder_takes_a_new_run(tmp_path: Path) -> None:
    R = tmp_path / "R"
    R.mkdir()
    train_in_process("--preset", "circles", "--headless", "--epochs", "1", "--max-steps", "5", "--run-dir", R,
                     cwd=tmp_path)
    assert read_json(R / "summary.json")["steps"] == 5


# -- items 10 and 11: odd run files, long names -------------------------------------------------

def _oddity(path: Path, kind: str, outside: Path) -> None:
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        outside.write_text('{"kind": "event"}\n{"half')
        path.symlink_to(outside)


ODD = [(name, kind) for name in ("metrics.jsonl", "summary.json", "config.json", "run.pid", "history.json")
       for kind in ("fifo", "folder", "link")] + [("checkpoints/latest.pt", "link")]


@pytest.mark.parametrize("name,kind", ODD, ids=[f"{n}-{k}" for n, k in ODD])
def test_a_run_file_that_is_a_fifo_folder_or_link_is_refused_and_never_followed(
        here: Path, circles_run: Path, name: str, kind: str) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    outside = here / "outside.txt"
    _oddity(R / name, kind, outside)
    kept = outside.read_bytes() if kind == "link" else None
    rc, _, err = in_process("--resume", R, "--epochs", "3")
    assert_usage_error(rc, err, name, "not a regular file")
    if kept is not None:
        assert outside.read_bytes() == kept  # its last line was not cut, nothing appended
    from tuitrain.tui.watch import main as watch_main
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert watch_main([str(R)]) == 2
    assert_usage_error(2, buf.getvalue(), name)
    # `tuitrain runs` lists it as invalid, and does not hang on the FIFO (a timeout fails the test).
    p = tuitrain("runs", here, cwd=here, timeout=60)
    assert p.returncode == 0, p.stderr
    assert any(line.split()[:3] == [str(R), "?", "invalid"] for line in p.stdout.splitlines()), p.stdout


@pytest.mark.parametrize("history", ["[1, 2, 3]", "{}", '"x"', '[{"epoch": "1"}]', "[[1]]", "not json", '[{"e": 1}]'])
def test_a_history_of_the_wrong_shape_is_one_line(here: Path, circles_run: Path, history: str) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    (R / "history.json").write_text(history)
    before = snapshot(R)
    rc, _, err = in_process("--resume", R, "--epochs", "3")
    assert_usage_error(rc, err, "history.json is not a list of epoch rows")
    assert snapshot(R) == before


LONG = ["a" * 256, "é" * 128, "x/" + "b" * 300 + "/y", "c/" * 2100]


@pytest.mark.parametrize("long", LONG, ids=["256", "256-bytes-utf8", "inner", "total"])
@pytest.mark.parametrize("command", ["--run-dir", "--resume", "watch", "runs"])
def test_a_path_too_long_for_the_file_system_is_one_line(here: Path, command: str, long: str) -> None:
    if command == "--run-dir":
        args = ["--preset", "circles", "--headless", "--run-dir", long]
    elif command == "--resume":
        args = ["--resume", long, "--headless"]
    else:
        args = [command, long]
    rc, out, err = in_process(*args)
    assert_usage_error(rc, err, "long")
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("batch", [2**31, 2**62, 2**63 - 1])
def test_a_batch_size_beyond_the_data_is_one_full_batch(tmp_path: Path, batch: int) -> None:
    from conftest import classifier_preset, make_cfg

    from tuitrain.engine.trainer import Trainer

    result = Trainer(make_cfg(epochs=2, batch_size=batch), classifier_preset(), tmp_path / "R").run()
    assert result.status == "finished", result.error
    assert result.summary["steps"] == 2  # one step an epoch


# -- item 15: a record that could not be written ------------------------------------------------

def delete_while_written(path: Path, within: float = 10.0) -> None:
    """Remove a directory the run is still writing into, as a user's `rm -rf` would.

    One pass can lose the race with a file the run creates meanwhile (rmdir then
    says "Directory not empty"), so repeat until the directory is gone.
    """
    deadline = time.monotonic() + within
    while path.exists():
        shutil.rmtree(path, ignore_errors=True)
        assert time.monotonic() < deadline, f"{path} kept coming back"

def test_a_deleted_run_directory_is_reported_and_exits_1(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = Proc("--preset", "circles", "--headless", "--epochs", "6", "--run-dir", R, cwd=tmp_path)
    try:
        proc.wait_for_line(lambda line: line.startswith("epoch   1 |"))
        delete_while_written(R)
        rc, out, err = proc.finish()
    finally:
        proc.kill()
    assert rc == 1, err
    assert "Traceback" not in err
    assert "the previous checkpoint is intact" not in err
    assert "no earlier checkpoint exists there" in err
    assert err.splitlines()[-1].startswith("tuitrain: error: the run's record is incomplete: ")
