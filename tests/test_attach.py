"""tuitrain.attach(): a user's own loop, recorded and steered through the real control socket.

The loop runs in a thread of this process, so the test sees the user's side directly: the LR
the optimizer used at each step, the steps taken, the model's weights.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tuitrain
from conftest import wait_until
from integration_helpers import connect, events, records
from test_hardening_disk import fill, tmpfs  # noqa: F401 - a small tmpfs of our own, and filling it
from tuitrain.engine.commands import Pause, Resume, SaveCheckpoint, SetLR, Stop

ROOT = Path(__file__).resolve().parent.parent


class Loop:
    """A plain PyTorch loop with attach(), in a thread; records what the optimizer really used."""

    def __init__(self, run_dir: Path, *, max_steps: int = 10**9, step_size: int = 40, **attach: Any) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=step_size, gamma=0.5)
        self.used: list[tuple[float, float]] = []
        """(LR in the optimizer's step, the scheduler's own value then) for each optimizer step."""
        self.between: list[tuple[float, float]] = []
        """(the param group's LR, the scheduler's own value) read by the loop itself after each run.step()."""
        self.steps = 0
        self.max_steps = max_steps
        attach.setdefault("total_steps", max_steps)
        self.run = tuitrain.attach(run_dir=run_dir, model=self.model, optimizer=self.opt, scheduler=self.sched,
                                   **attach)
        # Registered after attach's hook, so it sees the LR the step really uses.
        self.opt.register_step_pre_hook(lambda o, a, k: self.used.append(
            (o.param_groups[0]["lr"], self.sched.get_last_lr()[0])))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._train, daemon=True)

    def _train(self) -> None:
        x = torch.randn(64, 2)
        y = (x[:, 0] * x[:, 1] > 0).long()
        try:
            with self.run:
                while self.steps < self.max_steps and not self.run.should_stop:
                    loss = nn.functional.cross_entropy(self.model(x), y)
                    loss.backward()
                    self.opt.step()
                    self.opt.zero_grad()
                    self.sched.step()
                    self.steps += 1
                    self.run.step(loss=loss)
                    self.between.append((self.opt.param_groups[0]["lr"], self.sched.get_last_lr()[0]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def start(self) -> "Loop":
        self.thread.start()
        return self

    def end(self) -> None:
        """Cleanup: a failing test must not leave the loop training in this process (it would take a core
        and the interpreter from every later test)."""
        self.max_steps = 0
        if self.run.paused:  # held inside run.step(): only a stop lets it go
            self.run.commands.put(Stop(reason="the test ended"))
        self.thread.join(timeout=30)

    def join(self) -> None:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the loop did not end"
        assert self.error is None, repr(self.error)


def test_pause_lr_save_resume_stop_steer_the_users_own_loop(tmp_path: Path) -> None:
    R = tmp_path / "R"
    loop = Loop(R).start()
    try:
        _steer_the_loop(R, loop)
    finally:
        loop.end()


def _steer_the_loop(R: Path, loop: Loop) -> None:
    client = connect(R)
    try:
        wait_until(lambda: loop.steps >= 20, what="some steps")
        client.send(Pause())
        wait_until(lambda: events(R, "paused"), what="the paused answer")
        held = loop.steps
        # While paused, an LR change and a save are answered from inside run.step(): no step is taken.
        client.send(SetLR(0.02))
        changed = wait_until(lambda: events(R, "lr_changed"), what="the lr_changed answer")[0]
        client.send(SaveCheckpoint())
        saved = wait_until(lambda: events(R, "checkpoint"), what="the checkpoint answer")[0]
        assert loop.steps == held, "the loop went on while paused"
        state = torch.load(saved["path"], weights_only=True)
        assert state["step"] == held and saved["path"].endswith(f"step-{held}.pt")
        for name, tensor in loop.model.state_dict().items():
            assert torch.equal(state["model_state_dict"][name], tensor), name
        assert state["optimizer_state_dict"]["param_groups"][0]["lr"] == loop.opt.param_groups[0]["lr"]
        assert "scheduler_state_dict" in state and state["lr_multiplier"] == changed["multiplier"]

        client.send(Resume())
        wait_until(lambda: loop.steps >= held + 120, what="steps after resuming")
        # The LR the optimizer used from the change on: the scheduler's own curve x the multiplier.
        after = loop.used[held:held + 120]
        multiplier = changed["multiplier"]
        assert after[0][0] == pytest.approx(0.02)
        assert all(used == pytest.approx(sched * multiplier, rel=1e-12) for used, sched in after)
        assert len({round(sched, 12) for _, sched in after}) >= 2, "the scheduler kept stepping its own curve"
        # And the scheduler's own value is back in the param group between steps. Read by the loop's own
        # thread: read from here it races the step, inside which the group holds the multiplied LR.
        assert all(group == pytest.approx(sched) for group, sched in loop.between[held:held + 120])

        client.send(Stop(reason="enough"))
        loop.join()
    finally:
        client.close()
    assert loop.run.should_stop
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["reason"] == "enough"
    assert summary["steps"] == loop.steps
    assert [e["event"] for e in records(R) if e.get("event") in ("paused", "lr_changed", "resumed", "stopped")] == \
        ["paused", "lr_changed", "resumed", "stopped"]
    # The recorded LR of each step is the one the optimizer used.
    steps = {r["step"]: r["lr"] for r in records(R) if r["kind"] == "step"}
    assert len(steps) == loop.steps
    for i, (used, _) in enumerate(loop.used, start=1):
        assert steps[i] == pytest.approx(used, rel=1e-12)
    # A stop saves where it stopped, loadable without pickles.
    latest = torch.load(R / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["step"] == loop.steps
    assert not (R / "control.sock").exists()


def test_without_an_optimizer_set_lr_is_rejected_with_the_reason(tmp_path: Path) -> None:
    R = tmp_path / "R"
    run = tuitrain.attach(run_dir=R)
    client = connect(R)
    try:
        client.send(SetLR(0.5))
        client.send(SaveCheckpoint())
        wait_until(lambda: run.commands.pending(), what="the commands to arrive")
        run.step(loss=1.0)
        rejected = events(R, "rejected")
        failed = events(R, "checkpoint_failed")
    finally:
        client.close()
        run.close()
    assert rejected and rejected[0]["command"] == "set_lr"
    assert "no optimizer was given" in rejected[0]["reason"]
    assert failed and "no model and no save function" in failed[0]["error"]


def test_step_never_copies_to_the_host_between_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters())
    run = tuitrain.attach(run_dir=tmp_path / "R", model=model, optimizer=opt, log_interval=3600)
    x = torch.randn(8, 4)

    inside = [False]
    copies: list[str] = []

    def watched(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def copy(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if inside[0]:
                copies.append(name)
            return original(self, *args, **kwargs)
        return copy

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, watched(name))
    try:
        for _ in range(200):
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()  # Adam itself reads its step count with .item(): the user's cost, not ours
            opt.zero_grad()
            inside[0] = True
            run.step(loss=loss)
            inside[0] = False
    finally:
        inside[0] = False
        monkeypatch.undo()
        run.close()
    assert copies == [], "host copies inside run.step()"
    losses = [r["loss"] for r in records(tmp_path / "R") if r["kind"] == "step"]
    assert len(losses) == 200 and all(math.isfinite(v) for v in losses)


def test_a_users_save_function_is_called_and_its_file_renamed_into_place(tmp_path: Path) -> None:
    R = tmp_path / "R"
    model = nn.Linear(2, 2)
    calls: list[Path] = []

    def save(path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        torch.save(model.state_dict(), path)

    run = tuitrain.attach(run_dir=R, model=model, save=save)
    try:
        for want in ("checkpoint", "checkpoint_failed"):
            run.commands.put(SaveCheckpoint())
            run.step(loss=0.5)
            wait_until(lambda: events(R, want), what=want)
    finally:
        run.close()
    saved, failed = events(R, "checkpoint")[0], events(R, "checkpoint_failed")[0]
    assert Path(saved["path"]) == R / "checkpoints" / "step-1.pt" and saved["bytes"] > 0
    assert set(torch.load(saved["path"], weights_only=True)) == {"weight", "bias"}
    assert "No space left" in failed["error"] and failed["previous"] is False
    assert all(c.name.startswith(".") for c in calls), "the function writes a temporary name first"
    assert sorted(p.name for p in (R / "checkpoints").iterdir()) == ["step-1.pt"], "no partial file left"


def test_a_run_directory_that_cannot_be_written_is_a_warning_and_the_loop_trains_on(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tuitrain.attach(run_dir=blocker / "R", model=model, optimizer=opt) as run:
        for _ in range(5):
            loss = model(torch.ones(1, 2)).sum()
            loss.backward()
            opt.step()
            run.step(loss=loss)
            run.evaluate(val_loss=1.0)
    err = capfd.readouterr().err
    assert err.count("tuitrain: warning:") == 1 and "training goes on without tuitrain" in err
    assert run.step_count == 5 and not run.should_stop and run.status == "finished"


def test_an_exception_in_the_users_loop_ends_the_run_failed_with_its_line(tmp_path: Path) -> None:
    R = tmp_path / "R"
    with pytest.raises(ZeroDivisionError):
        with tuitrain.attach(run_dir=R) as run:
            run.step(loss=torch.tensor(0.5))
            1 / 0
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("ZeroDivisionError")
    assert "1 / 0" in (R / "error.txt").read_text()
    assert events(R, "error") and events(R, "ended")[0]["status"] == "failed"


def test_evaluate_records_the_metrics_the_loop_gives(tmp_path: Path) -> None:
    R = tmp_path / "R"
    with tuitrain.attach(run_dir=R) as run:
        for loss in (1.0, 3.0):
            run.step(loss=torch.tensor(loss))
        run.evaluate(val_loss=torch.tensor(0.5), val_acc=0.75, val_f1=0.5)
        run.step(loss=2.0)
        run.evaluate(val_loss=0.25, val_acc=0.8)
    first, second = [r for r in records(R) if r["kind"] == "eval"]
    assert first["epoch"] == 1 and first["step"] == 2
    assert first["train_loss"] == 2.0 and first["val_loss"] == 0.5
    assert first["metric"] == "acc" and first["val_acc"] == 0.75 and first["val_f1"] == 0.5
    assert second["train_loss"] == 2.0 and second["improved"] and second["best_epoch"] == 2
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2 and summary["best_val_loss"] == 0.25


def test_handle_signals_makes_sigterm_save_and_stop_the_loop(tmp_path: Path) -> None:
    R = tmp_path / "R"
    before = signal.getsignal(signal.SIGTERM)
    model = nn.Linear(2, 1)
    with tuitrain.attach(run_dir=R, model=model, handle_signals=True) as run:
        os.kill(os.getpid(), signal.SIGTERM)
        run.step(loss=1.0)
        assert run.should_stop
    assert signal.getsignal(signal.SIGTERM) is before, "the user's handling is back after close()"
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signal.SIGTERM
    assert torch.load(R / "checkpoints" / "latest.pt", weights_only=True)["step"] == 1


def test_without_handle_signals_the_users_own_handling_stays(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    with tuitrain.attach(run_dir=tmp_path / "R"):
        assert signal.getsignal(signal.SIGINT) is before


def test_the_run_directory_comes_from_tuitrain_run_through_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUITRAIN_RUN_DIR", str(tmp_path / "from-env"))
    with tuitrain.attach() as run:
        assert run.run_dir == tmp_path / "from-env"
    assert "TUITRAIN_RUN_DIR" not in os.environ, "only this process's first run takes it"
    assert (tmp_path / "from-env" / "summary.json").exists()


def test_the_example_loop_runs_and_records_a_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train_loop.py"), "--epochs", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("train_loop-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    evals = [r for r in records(run_dir) if r["kind"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2] and evals[-1]["val_acc"] > 0.9
    assert "epoch 2:" in proc.stdout


def test_under_torch_distributed_only_rank_0_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with tuitrain.attach(run_dir=tmp_path / "R") as run:
        run.step(loss=1.0)
        run.evaluate(val_loss=1.0)
    assert not (tmp_path / "R").exists(), "rank 1 writes nothing"
    assert run.step_count == 1 and run.epoch == 1 and not run.should_stop


def test_a_full_disk_is_a_warning_and_every_record_reaches_the_file_once_there_is_room(
        tmpfs: Path, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: F811 - the fixture imported above
    disk = tmpfs
    R = disk / "R"
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tuitrain.attach(run_dir=R, model=model, optimizer=opt, log_interval=0.01) as run:
        def steps(n: int) -> None:
            for _ in range(n):
                loss = model(torch.ones(4, 2)).pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                run.step(loss=loss)

        steps(10)
        filler = fill(disk)
        run.commands.put(SaveCheckpoint())
        wait_until(lambda: (steps(5), run._rundir.metrics_error)[1], what="the failed write")
        filler.unlink()
        steps(10)
    err = capfd.readouterr().err
    assert err.count("cannot be written") == 1 and "training goes on" in err
    recorded = sorted(r["step"] for r in records(R) if r["kind"] == "step")
    assert recorded == list(range(1, run.step_count + 1)), "every step's record is on disk"
    failed = events(R, "checkpoint_failed")
    assert failed and "No space left" in failed[0]["error"]
    assert not [p for p in (R / "checkpoints").iterdir() if p.name.startswith(".")], "no temp file left"
    assert json.loads((R / "summary.json").read_text())["status"] == "finished"


def test_resuming_a_users_loop_with_tuitrain_says_to_load_it_in_the_script(tmp_path: Path) -> None:
    from cli_helpers import assert_usage_error, in_process

    R = tmp_path / "R"
    with tuitrain.attach(run_dir=R, model=nn.Linear(2, 1)) as run:
        run.commands.put(Stop(reason="done"))
        run.step(loss=1.0)
    rc, out, err = in_process("--resume", str(R), "--headless")
    assert_usage_error(rc, err, "saved from your own training loop", "weights_only=True")


def test_a_script_whose_dashboard_dies_saves_and_ends_interrupted(tmp_path: Path) -> None:
    """`tuitrain run`'s contract from the script's side: ready over the lifeline, then the viewer's end
    closes without a detach (the dashboard was SIGKILLed): the loop stops at its next step."""
    from tuitrain.engine.lifeline import LIFELINE_ENV, RUN_DIR_ENV, pair

    R = tmp_path / "R"
    viewer, fd = pair()
    env = {**os.environ, LIFELINE_ENV: str(fd), RUN_DIR_ENV: str(R)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "train_loop.py"), "--epochs", "100000"],
                            cwd=tmp_path, env=env, pass_fds=(fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    os.close(fd)
    try:
        said: list[dict[str, Any]] = []
        wait_until(lambda: said.extend(viewer.read(0.05)) or any("ready" in m for m in said), timeout=60,
                   what="ready on the lifeline")
        assert [m for m in said if "phase" in m] == [{"phase": "attaching"}]
        assert next(m for m in said if "ready" in m) == {"ready": str(R), "pid": proc.pid}
        wait_until(lambda: events(R, "started") and [r for r in records(R) if r["kind"] == "step"],
                   what="training")
        viewer.close()  # as the kernel does when the dashboard dies
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signal.SIGHUP
    assert "went away" in summary["reason"]
    assert torch.load(R / "checkpoints" / "latest.pt", weights_only=True)["step"] == summary["steps"]
    assert (R / "output.log").exists(), "after ready the script's output goes to the run directory"
