"""The disk fills up, or the run directory turns read-only, in the middle of a run.

Real faults where the machine allows them: a small tmpfs filled to the last
byte (ENOSPC), and `chattr +i` on the run directory and its files (EPERM,
even for root). Each is skipped cleanly where it is not permitted. An
in-process EROFS (no such mount can be made read-only while a file is open
for writing) covers the third errno.

What the user must be left with: the error shown (stderr headless, the event
log in the dashboard), the previous checkpoint intact and loadable, no temp
files, the run going on, and, once the disk has room again, every metrics
record on disk (nothing lost) and a new checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from cli_helpers import Proc, read_json, reset_sighup
from conftest import wait_until

from tuitrain.engine import atomic
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine.rundir import read_metrics, step_losses

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="tmpfs, chattr and signals")]

#: 16 steps an epoch at ~5 ms a step, and a 270 KB checkpoint (a 64K-float buffer).
PRESET = '''
import time
import torch
from torch import nn
from tuitrain.presets import Data

DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "epochs": 100000, "scheduler": "none",
            "seed": 3, "device": "cpu"}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.register_buffer("ballast", torch.zeros(1 << 16))

    def forward(self, x):
        if self.training:
            time.sleep(0.005)  # wait-ok: a deliberately slow step, so epochs span the fault
        return self.body(x)


def make_data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(320, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return Data(train=(x[:256], y[:256]), val=(x[256:], y[256:]))


def make_model():
    return Net()
'''


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs of our own (root only); skipped where mounting is not permitted."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC); return it."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]  # the last pages, down to the last byte
    finally:
        os.close(fd)
    return filler


def temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".write"))


def latest_step(run_dir: Path) -> int:
    return ckpt.load(run_dir / "checkpoints" / "latest.pt")["step"]


def write_preset(folder: Path) -> Path:
    path = folder / "ballast.py"
    path.write_text(textwrap.dedent(PRESET))
    return path


def assert_every_record_kept(R: Path, steps: int) -> None:
    """Every line of metrics.jsonl parses and every step is on record once: nothing was lost."""
    lines = (R / "metrics.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line)
    assert sorted(step_losses(R / "metrics.jsonl")) == list(range(1, steps + 1))
    records = [r for r in read_metrics(R / "metrics.jsonl") if r.get("kind") == "step"]
    assert [r["step"] for r in records] == list(range(1, steps + 1)), "a step record is missing or doubled"


def _wait_lines(proc: Proc, predicate: Any, what: str, timeout: float = 30) -> None:
    wait_until(lambda: any(predicate(line) for line in proc.err + proc.out) or proc.popen.poll() is not None,
               timeout, what)
    assert proc.popen.poll() is None, f"tuitrain ended early:\n{''.join(proc.out)}{''.join(proc.err)}"


def _epochs_seen(proc: Proc) -> int:
    return sum(line.startswith("epoch ") for line in proc.out)


def test_disk_full_mid_run_headless_keeps_the_checkpoint_and_every_record(tmp_path: Path, tmpfs: Path) -> None:
    preset = write_preset(tmp_path)
    R = tmpfs / "R"
    proc = Proc("--preset", preset, "--headless", "--run-dir", R, cwd=tmp_path, preexec_fn=reset_sighup)
    try:
        proc.wait_for_line(lambda line: line.startswith("epoch   2 |"))
        wait_until(lambda: (R / "checkpoints" / "latest.pt").exists(), what="latest.pt")
        filler = fill(tmpfs)
        _wait_lines(proc, lambda line: "could not save" in line and "latest.pt" in line, "the checkpoint warning")
        _wait_lines(proc, lambda line: "cannot write" in line and "metrics.jsonl" in line, "the metrics warning")
        kept = latest_step(R)
        epochs = _epochs_seen(proc)
        _wait_lines(proc, lambda line: _epochs_seen(proc) >= epochs + 3, "three more epochs on a full disk")
        assert latest_step(R) == kept  # the previous checkpoint, untouched and loadable
        # A failing write's temp file lives only until its error is handled: wait, don't look once.
        wait_until(lambda: temp_files(R) == [], 30, "no temp files on the full disk")
        warning = next(line for line in proc.err if "could not save" in line)
        assert "No space left on device" in warning and "the previous checkpoint is intact" in warning
        assert "Traceback" not in "".join(proc.err)

        filler.unlink()  # room again: the next epoch's checkpoint lands, the records held back are written
        wait_until(lambda: latest_step(R) > kept, 30, "a checkpoint after the disk has room again")
        proc.send(signal.SIGTERM)
        rc, out, err = proc.finish()
    finally:
        proc.kill()
    assert rc == 143, err
    assert "Traceback" not in err
    summary = read_json(R / "summary.json")
    assert summary["status"] == "interrupted"
    assert latest_step(R) == summary["steps"]
    assert temp_files(R) == []
    assert_every_record_kept(R, summary["steps"])
    events = [r["event"] for r in read_metrics(R / "metrics.jsonl") if r.get("kind") == "event"]
    assert "checkpoint_failed" in events and "write_failed" in events and events[-1] == "ended"


@pytest.fixture
def chattr_ok(tmp_path: Path) -> None:
    probe = tmp_path / "chattr-probe"
    probe.mkdir()
    try:
        p = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no chattr")
    if p.returncode != 0:
        pytest.skip(f"chattr +i is not permitted here: {p.stderr.strip()}")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.rmdir()


def immutable(paths: list[Path], on: bool) -> None:
    """chattr each path; a temp file the run renamed away since it was listed is fine."""
    for path in paths:
        p = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True)
        if p.returncode != 0 and path.exists():
            raise AssertionError(f"chattr failed on {path}: {p.stderr.strip()}")


def test_run_dir_turns_read_only_mid_run_headless(tmp_path: Path, chattr_ok: None) -> None:
    preset = write_preset(tmp_path)
    R = tmp_path / "R"
    proc = Proc("--preset", preset, "--headless", "--run-dir", R, cwd=tmp_path, preexec_fn=reset_sighup)
    frozen: list[Path] = []
    try:
        proc.wait_for_line(lambda line: line.startswith("epoch   2 |"))
        wait_until(lambda: (R / "checkpoints" / "latest.pt").exists(), what="latest.pt")
        # Files first, then the folders: nothing in R can be written, created, renamed or removed.
        frozen = [p for p in R.rglob("*") if p.is_file()] + [R / "checkpoints", R]
        immutable(frozen, True)
        _wait_lines(proc, lambda line: "could not save" in line and "latest.pt" in line, "the checkpoint warning")
        _wait_lines(proc, lambda line: "cannot write" in line and "metrics.jsonl" in line, "the metrics warning")
        kept = latest_step(R)
        epochs = _epochs_seen(proc)
        _wait_lines(proc, lambda line: _epochs_seen(proc) >= epochs + 3, "three more epochs in a read-only folder")
        assert latest_step(R) == kept
        # At most the one write that had its temp file when the folder froze: it cannot be removed yet.
        assert len(temp_files(R)) <= 1
        assert "Operation not permitted" in next(line for line in proc.err if "could not save" in line)

        immutable(frozen, False)
        frozen = []
        wait_until(lambda: latest_step(R) > kept, 30, "a checkpoint once the folder is writable again")
        # The leftover is gone; a write in flight right now (best.pt follows latest.pt) has its own
        # temp file for a moment, so wait for none rather than look once.
        wait_until(lambda: temp_files(R) == [], 30, "no temp files once the folder is writable again")
        proc.send(signal.SIGINT)
        rc, out, err = proc.finish()
    finally:
        if frozen:
            immutable(frozen, False)
        proc.kill()
    assert rc == 130, err
    assert "Traceback" not in err
    summary = read_json(R / "summary.json")
    assert summary["status"] == "interrupted"
    assert latest_step(R) == summary["steps"]
    assert temp_files(R) == []
    assert_every_record_kept(R, summary["steps"])


def test_run_dir_read_only_until_the_end_still_ends_cleanly(tmp_path: Path, chattr_ok: None) -> None:
    """Read-only to the last step: the earlier checkpoint kept, no traceback, no temp file; and since
    summary.json could not be written, the run says so and exits 1 (not 0, "finished")."""
    preset = write_preset(tmp_path)
    R = tmp_path / "R"
    proc = Proc("--preset", preset, "--headless", "--run-dir", R, "--epochs", "8", cwd=tmp_path)
    frozen: list[Path] = []
    try:
        proc.wait_for_line(lambda line: line.startswith("epoch   2 |"))
        wait_until(lambda: (R / "checkpoints" / "latest.pt").exists(), what="latest.pt")
        frozen = [p for p in R.rglob("*") if p.is_file()] + [R / "checkpoints", R]
        immutable(frozen, True)
        kept = latest_step(R)
        rc, out, err = proc.finish()
        assert latest_step(R) == kept
        assert len(temp_files(R)) <= 1  # a write in flight when the folder froze cannot be removed
    finally:
        if frozen:
            immutable(frozen, False)
        proc.kill()
    assert rc == 1, err
    assert "Traceback" not in err
    assert "finished: 8 epochs, 128 steps" in out
    assert "could not save" in err and "cannot write" in err
    assert "the previous checkpoint is intact" in err  # latest.pt was there when the folder froze
    assert not (R / "summary.json").exists()
    assert err.splitlines()[-1].startswith("tuitrain: error: the run's record is incomplete: ")
    assert "summary.json" in err.splitlines()[-1]
    # Writable again: a resume clears what the frozen folder kept, and goes on.
    p = subprocess.run([str(Path(sys.executable).with_name("tuitrain")), "--resume", str(R),
                        "--preset", str(preset), "--headless",
                        "--epochs", "9"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert temp_files(R) == []


# -- in process: EROFS, and the dashboard ---------------------------------------------------

def test_erofs_on_every_write_in_process_finishes_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only filesystem (EROFS) after the first epoch: the engine's view of it."""
    from conftest import classifier_preset, make_cfg

    from tuitrain.engine import events as ev
    from tuitrain.engine import rundir as rundir_mod
    from tuitrain.engine.trainer import Trainer

    real_write, real_mkstemp = os.write, atomic.tempfile.mkstemp
    state = {"ro": False}

    def erofs(*_: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    def write(fd: int, data: Any) -> int:
        if state["ro"]:
            erofs()
        return real_write(fd, data)

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        if state["ro"]:
            erofs()
        return real_mkstemp(*args, **kwargs)

    seen: list[ev.Event] = []

    def listener(event: ev.Event) -> None:
        seen.append(event)
        if isinstance(event, ev.EvalDone) and event.epoch == 1:
            trainer._writer.wait()
            state["ro"] = True
        if isinstance(event, ev.EvalDone) and event.epoch == 4:
            state["ro"] = False

    monkeypatch.setattr(rundir_mod.os, "write", write)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    R = tmp_path / "R"
    trainer = Trainer(make_cfg(epochs=6), classifier_preset(), R, listeners=[listener])
    result = trainer.run()
    monkeypatch.undo()
    assert result.status == "finished" and result.summary["steps"] == 48
    failed = [e for e in seen if isinstance(e, ev.CheckpointFailed)]
    assert failed and all("Read-only file system" in e.error for e in failed)
    write_failed = [e for e in seen if type(e).__name__ == "WriteFailed"]
    assert len(write_failed) == 1 and "Read-only file system" in write_failed[0].error
    assert ckpt.load(R / "checkpoints" / "latest.pt")["step"] == 48
    assert temp_files(R) == []
    assert_every_record_kept(R, 48)


def test_dashboard_shows_a_full_disk_in_the_event_log_and_goes_on(tmp_path: Path, tmpfs: Path) -> None:
    from dashboard_helpers import dashboard, log_text, long_cfg, long_preset, run_async, until, wait_exit

    from tuitrain.engine.trainer import Trainer

    R = tmpfs / "R"
    # 40 steps an epoch at ~5 ms: an epoch checkpoint every ~0.2 s.
    trainer = Trainer(long_cfg(), long_preset(n_train=320, delay=0.005), R)

    async def body() -> None:
        async with dashboard(trainer) as (app, pilot, sampler):
            await until(pilot, lambda: (R / "checkpoints" / "latest.pt").exists() and app.state.step > 40,
                        "the first checkpoint")
            filler = fill(tmpfs)
            await until(pilot, lambda: "could not save" in log_text(app), "the checkpoint error in the log")
            await until(pilot, lambda: "cannot write" in log_text(app), "the metrics error in the log")
            text = log_text(app)
            assert "No space left on device" in text and "the previous checkpoint is intact" in text
            kept = latest_step(R)
            step = app.state.step
            await until(pilot, lambda: app.state.step > step + 80 and app.state.status == "RUNNING",
                        "training to go on")
            assert latest_step(R) == kept
            await until(pilot, lambda: temp_files(R) == [], "no temp files on the full disk")
            filler.unlink()
            await until(pilot, lambda: latest_step(R) > kept, "a checkpoint once there is room")
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0

    run_async(body)
    summary = read_json(R / "summary.json")
    assert summary["status"] == "stopped" and latest_step(R) == summary["steps"]
    assert_every_record_kept(R, summary["steps"])
    assert temp_files(R) == []
