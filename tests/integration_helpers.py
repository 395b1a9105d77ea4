"""Shared by the tests of runs from a user's own loop (attach, the framework callbacks): the run's record,
the control socket, and one steering script.

No framework imports here: each test module imports its own (Lightning, transformers), so the
rest of the suite never pays for them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from conftest import wait_until
from dashboard_helpers import events_named as events, records  # noqa: F401 - the record's readers, for the tests
from tuitrain.engine.commands import Pause, Resume, SaveCheckpoint, SetLR, Stop
from tuitrain.engine.control import ControlClient

STEERING = ("paused", "lr_changed", "checkpoint", "resumed", "stopped")


def connect(run_dir: Path) -> ControlClient:
    def attempt() -> ControlClient | None:
        try:
            return ControlClient.connect(run_dir)
        except Exception:  # noqa: BLE001 - not serving yet
            return None

    return wait_until(attempt, timeout=60, what="the run's control socket")


@dataclass
class LRTap:
    """An optimizer step pre-hook registered after attach's: (LR the step uses, the scheduler's own value)."""

    scheduler: Any
    used: list[tuple[float, float]] = field(default_factory=list)

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.used.append((float(optimizer.param_groups[0]["lr"]), float(self.scheduler.get_last_lr()[0])))


class Background:
    """The framework's fit/train in a thread of the test process; its exception, if any, re-raised at join."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.result: Any = None
        self._target = target
        self.thread = threading.Thread(target=self._main, daemon=True, name="trainer")

    def _main(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def start(self) -> "Background":
        self.thread.start()
        return self

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the trainer did not return after stop"
        if self.error is not None:
            raise self.error
        return self.result


def steer(run_dir: Path, *, steps: Callable[[], int], used: Callable[[], list[tuple[float, float]]],
          trainer: Background, model: torch.nn.Module, new_lr: float, after: int = 20) -> dict[str, Any]:
    """Pause, set the LR and save while paused, resume, then stop, through the real socket; assert the
    effect on the user's side (no steps while paused, the LR the optimizer used, the checkpoint, the
    trainer returning). `used` gives an LRTap's list. Returns the answers and counts for further checks."""
    client = connect(run_dir)
    try:
        wait_until(lambda: steps() >= after, timeout=60, what=f"{after} optimizer steps")
        client.send(Pause())
        paused = wait_until(lambda: events(run_dir, "paused"), what="the paused answer")[0]
        held = steps()
        used_before = len(used())
        client.send(SetLR(new_lr))
        changed = wait_until(lambda: events(run_dir, "lr_changed"), what="the lr_changed answer")[0]
        client.send(SaveCheckpoint())
        saved = wait_until(lambda: events(run_dir, "checkpoint"), what="the checkpoint answer")[0]
        # Two commands answered from inside the paused step: the trainer took no step meanwhile.
        assert steps() == held and len(used()) == used_before, "the trainer went on while paused"
        assert paused["step"] == held
        state = torch.load(saved["path"], weights_only=True)
        assert saved["path"].endswith(f"step-{held}.pt") and state["step"] == held
        for name, tensor in model.state_dict().items():
            assert torch.equal(state["model_state_dict"][name].cpu(), tensor.detach().cpu()), name
        assert state["lr_multiplier"] == changed["multiplier"]

        client.send(Resume())
        wait_until(lambda: len(used()) >= used_before + 12, what="optimizer steps after resuming")
        after_resume = used()[used_before:used_before + 12]
        assert after_resume[0][0] == pytest.approx(new_lr)
        for lr, scheduled in after_resume:
            assert lr == pytest.approx(scheduled * changed["multiplier"], rel=1e-9)
        assert len({round(s, 12) for _, s in after_resume}) >= 2, "the scheduler kept its own curve"

        client.send(Stop(reason="enough"))
        stopped = wait_until(lambda: events(run_dir, "stopped"), what="the stopped answer")[0]
        trainer.join()
    finally:
        client.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["reason"] == "enough"
    order = [r["event"] for r in records(run_dir) if r.get("event") in STEERING and r.get("reason") != "stop"]
    assert order == list(STEERING), order
    return {"held": held, "changed": changed, "stopped": stopped, "summary": summary}
