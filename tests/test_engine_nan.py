"""The NaN guard: --on-nan stop, skip and pause, on a model whose output turns NaN at step 11."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import QUIET, classifier_preset, make_cfg, start, wait_until
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.engine.commands import Resume, Stop
from tuitrain.engine.rundir import step_losses

PRESET = classifier_preset()  # 8 steps an epoch
BAD = 11  # the third step of epoch 2


def finite(state_dict) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values())


def nan_run(run_dir, on_nan, *, nan_from=BAD, nan_until=None, **cfg):
    trainer, events = start(make_cfg(epochs=3, on_nan=on_nan, **cfg), PRESET, run_dir)
    trainer.model.nan_from, trainer.model.nan_until = nan_from, nan_until
    return trainer, events


@pytest.mark.parametrize("log_interval", [
    QUIET,
    1e-6,
])
def test_on_nan_stop_fails_the_run_at_the_first_bad_step_and_keeps_the_last_good_checkpoint(run_dir, log_interval):
    trainer, events = nan_run(run_dir, "stop", log_interval=log_interval)
    result = trainer.run()

    assert result.status == "failed"
    (nan,) = [e for e in events if isinstance(e, ev.NonFinite)]
    assert nan.step == BAD and nan.action == "stop"
    assert f"step {BAD}" in result.summary["reason"] and "training loss" in result.summary["reason"]
    assert not any(isinstance(e, ev.CheckpointSaved) and e.step > 8 for e in events)
    assert [e.epoch for e in events if isinstance(e, ev.EvalDone)] == [1]
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 8 and state["epoch"] == 1
    assert finite(state["model_state_dict"])
    losses = step_losses(run_dir / "metrics.jsonl")
    assert losses[BAD - 1] is not None and losses[BAD] is None  # NaN is written as null
    assert isinstance(events[-1], ev.RunEnded) and events[-1].status == "failed"


def test_on_nan_skip_drops_the_bad_updates_and_finishes(run_dir):
    trainer, events = nan_run(run_dir, "skip", nan_until=BAD + 2)  # three bad batches
    result = trainer.run()

    assert result.status == "finished"
    skips = [e for e in events if isinstance(e, ev.NonFinite)]
    assert len(skips) == 1
    assert skips[0].action == "skip" and skips[0].count == 3 and skips[0].step == BAD
    assert result.summary["steps"] == 24 - 3
    assert trainer.model.calls == 24
    assert finite(trainer.model.state_dict())
    losses = step_losses(run_dir / "metrics.jsonl")
    assert sorted(losses) == list(range(1, 22))
    assert all(v is not None for v in losses.values())
    assert finite(ckpt.load(run_dir / "checkpoints" / "latest.pt")["model_state_dict"])


def test_on_nan_skip_survives_a_model_that_stays_broken(run_dir):
    trainer, events = nan_run(run_dir, "skip")
    result = trainer.run()
    assert result.status == "finished"
    assert result.summary["steps"] == BAD - 1
    assert sum(e.count for e in events if isinstance(e, ev.NonFinite)) == 24 - (BAD - 1)
    assert finite(trainer.model.state_dict())
    assert all(torch.isfinite(torch.tensor(e.val_loss)) for e in events if isinstance(e, ev.EvalDone))


def test_on_nan_pause_rolls_back_pauses_and_a_stop_ends_the_run(run_dir):
    trainer, events = nan_run(run_dir, "pause")
    out = []
    thread = threading.Thread(target=lambda: out.append(trainer.run()), daemon=True)
    thread.start()
    wait_until(lambda: any(isinstance(e, ev.Paused) for e in list(events)), what="Paused")
    assert trainer.step == 8  # rolled back to the end of epoch 1
    trainer.commands.put(Stop())
    thread.join(timeout=60)
    assert not thread.is_alive()

    (result,) = out
    assert result.status == "stopped"
    (nan,) = [e for e in events if isinstance(e, ev.NonFinite)]
    assert nan.action == "pause" and nan.step == BAD and nan.rolled_back_to == 8
    (paused,) = [e for e in events if isinstance(e, ev.Paused)]
    assert paused.reason == "nan" and events.index(nan) < events.index(paused)
    assert [e.name for e in events][-3:] == ["stopped", "checkpoint", "ended"]
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 8 and finite(state["model_state_dict"])
    assert sorted(step_losses(run_dir / "metrics.jsonl")) == list(range(1, 9))


def test_on_nan_pause_then_resume_retrains_from_the_good_checkpoint(run_dir):
    trainer, events = nan_run(run_dir, "pause")
    out = []
    thread = threading.Thread(target=lambda: out.append(trainer.run()), daemon=True)
    thread.start()
    wait_until(lambda: any(isinstance(e, ev.Paused) for e in list(events)), what="Paused")
    trainer.model.nan_from = None  # "fix" the model, then continue
    trainer.commands.put(Resume())
    thread.join(timeout=60)
    assert not thread.is_alive()

    (result,) = out
    assert result.status == "finished" and result.summary["steps"] == 24
    assert any(isinstance(e, ev.Resumed) for e in events)
    assert finite(trainer.model.state_dict())
    losses = step_losses(run_dir / "metrics.jsonl")
    assert sorted(losses) == list(range(1, 25))
    assert all(v is not None for v in losses.values())
