"""Every command is answered with an event, at the next step boundary."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass

import pytest

from conftest import (assert_same_weights, classifier_preset, make_cfg, run, start, wait_until, weights)
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.engine.commands import (Command, Evaluate, Pause, Resume, SaveCheckpoint, SetLR, Stop,
                                      TogglePause)
from tuitrain.engine.rundir import step_losses

PRESET = classifier_preset(dropout=0.3)  # dropout: a disturbed RNG would show in the weights


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The same run with no commands: final weights and per-epoch validation losses."""
    r = run(make_cfg(epochs=2), PRESET, tmp_path_factory.mktemp("base") / "run")
    return r


def event_lines(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"kind":"event"' in x]


def run_in_thread(trainer):
    out = []
    thread = threading.Thread(target=lambda: out.append(trainer.run()), daemon=True)
    thread.start()
    return thread, out


def has(events, cls, **fields):
    return any(isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items()) for e in list(events))


# -- pause / resume ------------------------------------------------------------------------------

def test_pause_holds_the_step_counter_until_resume(run_dir, baseline):
    trainer, events = start(make_cfg(epochs=2, log_interval=0.005), PRESET, run_dir, at={3: [Pause()]})
    thread, out = run_in_thread(trainer)
    wait_until(lambda: has(events, ev.Paused), what="Paused")
    # Round trips through the paused engine: it answers commands, but trains no step.
    for i in range(3):
        trainer.commands.put(SetLR(-i))
        wait_until(lambda: sum(isinstance(e, ev.CommandRejected) for e in list(events)) == i + 1,
                   what=f"rejection {i + 1}")
        assert trainer.step == 3
    trainer.commands.put(Evaluate())
    wait_until(lambda: has(events, ev.EvalDone, epoch_end=False), what="EvalDone while paused")
    assert trainer.step == 3
    assert trainer.model.calls == 3, "no training forward while paused"
    assert not has(events, ev.Resumed)
    trainer.commands.put(Resume())
    thread.join(timeout=60)
    assert not thread.is_alive()

    (result,) = out
    assert result.status == "finished" and result.summary["steps"] == 16
    (paused,) = [e for e in events if isinstance(e, ev.Paused)]
    (resumed,) = [e for e in events if isinstance(e, ev.Resumed)]
    assert paused.step == resumed.step == 3 and paused.reason == "user"
    assert resumed.paused_seconds > 0
    between = events[events.index(paused) + 1:events.index(resumed)]
    assert not any(isinstance(e, ev.StepStats) for e in between)
    # A pause changes nothing in the training itself.
    assert_same_weights(weights(trainer.model), weights(baseline.trainer.model))
    names = [x["event"] for x in event_lines(run_dir)]
    assert names.index("paused") < names.index("resumed")


def test_stop_while_paused_ends_the_run(run_dir):
    trainer, events = start(make_cfg(epochs=2, log_interval=0.005), PRESET, run_dir, at={3: [Pause()]})
    thread, out = run_in_thread(trainer)
    wait_until(lambda: has(events, ev.Paused), what="Paused")
    trainer.commands.put(Stop())
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert out[0].status == "stopped" and out[0].summary["steps"] == 3
    names = [e.name for e in events if not isinstance(e, (ev.StepStats, ev.EvalDone))]
    assert names[-3:] == ["stopped", "checkpoint", "ended"]
    assert "resumed" not in names


def test_toggle_pause_pauses_then_resumes(run_dir, baseline):
    def toggle_back(e):
        if isinstance(e, ev.Paused):
            trainer.commands.put(TogglePause())

    trainer, events = start(make_cfg(epochs=2), PRESET, run_dir, at={3: [TogglePause()]},
                            listeners=[toggle_back])
    result = trainer.run()
    assert result.status == "finished"
    names = [e.name for e in events if isinstance(e, (ev.Paused, ev.Resumed, ev.CommandRejected))]
    assert names == ["paused", "resumed"]
    assert [e.step for e in events if isinstance(e, (ev.Paused, ev.Resumed))] == [3, 3]
    assert_same_weights(weights(trainer.model), weights(baseline.trainer.model))


def test_pause_when_paused_and_resume_when_running_are_rejected(run_dir, baseline):
    def on_paused(e):
        if isinstance(e, ev.Paused):
            trainer.commands.put(Pause())
            trainer.commands.put(Resume())

    trainer, events = start(make_cfg(epochs=2), PRESET, run_dir, at={2: [Resume()], 5: [Pause()]},
                            listeners=[on_paused])
    result = trainer.run()
    assert result.status == "finished" and result.summary["steps"] == 16
    answers = [(e.name, e.step, getattr(e, "command", None))
               for e in events if isinstance(e, (ev.Paused, ev.Resumed, ev.CommandRejected))]
    assert answers == [("rejected", 2, "resume"), ("paused", 5, None), ("rejected", 5, "pause"),
                       ("resumed", 5, None)]
    rejected = [e for e in events if isinstance(e, ev.CommandRejected)]
    assert rejected[0].reason == "not paused" and rejected[1].reason == "already paused"
    assert_same_weights(weights(trainer.model), weights(baseline.trainer.model))


def test_pause_and_resume_at_the_same_boundary_are_both_answered(run_dir):
    r = run(make_cfg(epochs=1), PRESET, run_dir, at={3: [TogglePause(), TogglePause()]})
    assert r.result.status == "finished"
    answered = [e for e in r.events if isinstance(e, (ev.Paused, ev.Resumed, ev.CommandRejected))]
    assert len(answered) == 2, "two commands, two answers"


# -- set LR: bad values ------------------------------------------------------------------------------

BAD_LRS = [0, 0.0, -1, float("nan"), float("inf"), "abc", None, True]


def test_bad_learning_rates_are_rejected_and_the_run_goes_on_undisturbed(run_dir, baseline):
    r = run(make_cfg(epochs=2), PRESET, run_dir, at={3: [SetLR(v) for v in BAD_LRS]})
    assert r.result.status == "finished" and r.result.summary["steps"] == 16
    rejected = r.of(ev.CommandRejected)
    assert len(rejected) == len(BAD_LRS)
    assert all(e.command == "set_lr" and e.step == 3 for e in rejected)
    assert "positive" in rejected[0].reason and "'abc'" in rejected[5].reason
    assert not r.of(ev.LRChanged)
    assert set(r.lr_by_step().values()) == {0.05}
    assert_same_weights(weights(r.trainer.model), weights(baseline.trainer.model))
    assert [e.val_loss for e in r.of(ev.EvalDone)] == [e.val_loss for e in baseline.of(ev.EvalDone)]
    assert ckpt.load(run_dir / "checkpoints" / "latest.pt")["lr_multiplier"] == 1.0
    assert [x["event"] for x in event_lines(run_dir)].count("rejected") == len(BAD_LRS)


def test_a_command_mid_epoch_loses_no_step_records(run_dir, baseline):
    r = run(make_cfg(epochs=2), PRESET, run_dir, at={3: [SetLR("abc")]})
    assert step_losses(run_dir / "metrics.jsonl") == step_losses(baseline.dir / "metrics.jsonl")
    assert [e.train_loss for e in r.of(ev.EvalDone)] == [e.train_loss for e in baseline.of(ev.EvalDone)]
    assert [e.train_metric for e in r.of(ev.EvalDone)] == [e.train_metric for e in baseline.of(ev.EvalDone)]


def test_an_unknown_command_is_rejected(run_dir):
    @dataclass(frozen=True)
    class Dance(Command):
        name = "dance"

    r = run(make_cfg(epochs=1), PRESET, run_dir, at={2: [Dance()]})
    assert r.result.status == "finished"
    (rejected,) = r.of(ev.CommandRejected)
    assert rejected.command == "dance" and rejected.step == 2


# -- save / evaluate -----------------------------------------------------------------------------------

def test_save_checkpoint_writes_step_n_and_does_not_disturb_the_run(run_dir, baseline, tmp_path):
    r = run(make_cfg(epochs=2), PRESET, run_dir, at={3: [SaveCheckpoint()], 12: [SaveCheckpoint()]})
    manual = [e for e in r.of(ev.CheckpointSaved) if e.reason == "manual"]
    assert [(e.step, e.path) for e in manual] == [
        (3, str(run_dir / "checkpoints" / "step-3.pt")), (12, str(run_dir / "checkpoints" / "step-12.pt"))]
    state = ckpt.load(run_dir / "checkpoints" / "step-3.pt")
    assert state["step"] == 3 and state["epoch"] == 0 and state["batch_in_epoch"] == 3
    assert manual[0].bytes == (run_dir / "checkpoints" / "step-3.pt").stat().st_size
    assert ckpt.load(run_dir / "checkpoints" / "step-12.pt")["epoch"] == 1
    # The weights in step-3.pt are the weights after step 3 (same as a run stopped there).
    stopped = run(make_cfg(epochs=2), PRESET, tmp_path / "stopped", at={3: [Stop()]})
    assert_same_weights(state["model_state_dict"],
                        ckpt.load(stopped.dir / "checkpoints" / "latest.pt")["model_state_dict"])
    assert_same_weights(weights(r.trainer.model), weights(baseline.trainer.model))


def test_evaluate_now_reports_without_touching_history_or_patience(run_dir, baseline):
    r = run(make_cfg(epochs=2, patience=5), PRESET, run_dir, at={3: [Evaluate()]})
    evals = r.of(ev.EvalDone)
    assert [(e.step, e.epoch_end) for e in evals] == [(3, False), (8, True), (16, True)]
    now = evals[0]
    assert now.epoch == 0 and now.improved is False and now.patience_used == 0 and now.best_epoch is None
    assert math.isfinite(now.val_loss) and 0 <= now.val_metric <= 1
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert evals[1].improved is True and evals[1].best_epoch == 1
    assert_same_weights(weights(r.trainer.model), weights(baseline.trainer.model))
    assert [e.val_loss for e in evals[1:]] == [e.val_loss for e in baseline.of(ev.EvalDone)]


# -- stop ------------------------------------------------------------------------------------------------

def test_stop_evaluates_saves_latest_and_ends_as_stopped(run_dir):
    r = run(make_cfg(epochs=2), PRESET, run_dir, at={3: [Stop("enough")]})
    assert r.result.status == "stopped" and r.result.signal is None
    assert r.result.summary["steps"] == 3 and r.result.summary["status"] == "stopped"
    assert r.trainer.model.calls == 3
    tail = [e for e in r.events if not isinstance(e, ev.StepStats)][-4:]
    assert [type(e) for e in tail] == [ev.EvalDone, ev.Stopped, ev.CheckpointSaved, ev.RunEnded]
    assert tail[0].step == 3 and tail[0].epoch_end is False
    assert tail[1].reason == "enough" and tail[1].step == 3
    assert tail[2].reason == "stop" and tail[2].path == str(run_dir / "checkpoints" / "latest.pt")
    assert tail[3].status == "stopped"
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 3 and state["batch_in_epoch"] == 3
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
    names = [x["event"] for x in event_lines(run_dir)]
    assert names[-3:] == ["stopped", "checkpoint", "ended"]


def test_stop_with_a_signal_ends_as_interrupted_without_evaluating(run_dir):
    r = run(make_cfg(epochs=2), PRESET, run_dir, at={3: [Stop("SIGTERM", signal=15)]})
    assert r.result.status == "interrupted" and r.result.signal == 15
    assert r.result.summary["signal"] == 15 and r.result.summary["status"] == "interrupted"
    assert not r.of(ev.EvalDone)
    saved = r.of(ev.CheckpointSaved)
    assert [(e.reason, e.step) for e in saved] == [("interrupt", 3)]
    assert ckpt.load(run_dir / "checkpoints" / "latest.pt")["step"] == 3
    assert r.of(ev.RunEnded)[0].status == "interrupted"
