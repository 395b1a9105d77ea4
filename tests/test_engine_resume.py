"""Exact resume: a run stopped and resumed equals the run never stopped (on the CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_same_weights, classifier_preset, make_cfg, run, weights
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.engine.commands import SaveCheckpoint, SetLR, Stop
from tuitrain.engine.rundir import RunDirError, read_metrics, step_losses

# 100 samples, batch 8: 13 steps an epoch (the last batch has 4); 52 steps in all.
PRESET = classifier_preset(dropout=0.3, n_train=100)
CFG = make_cfg(epochs=4, scheduler="onecycle", optimizer="adam", lr=0.01)
TOTAL = 52


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return run(CFG, PRESET, tmp_path_factory.mktemp("full") / "run")


def history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


def assert_same_history(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            # train_loss sums per-flush partial sums, so it may differ in the last bit.
            assert ra[k] == (pytest.approx(rb[k], rel=1e-12) if k == "train_loss" else rb[k]), k


def assert_same_as_full(resumed_run, full):
    assert resumed_run.result.status == "finished"
    assert resumed_run.result.summary["steps"] == TOTAL and resumed_run.result.summary["epochs"] == 4
    assert_same_weights(weights(resumed_run.trainer.model), weights(full.trainer.model))
    assert_same_weights(ckpt.load(resumed_run.dir / "checkpoints" / "latest.pt")["model_state_dict"],
                        ckpt.load(full.dir / "checkpoints" / "latest.pt")["model_state_dict"])
    summary, expected = resumed_run.result.summary, full.result.summary
    assert summary["best_val_loss"] == expected["best_val_loss"]
    assert summary["best_epoch"] == expected["best_epoch"]


def test_stopped_mid_epoch_and_resumed_equals_never_stopped(full, tmp_path):
    run_dir = tmp_path / "run"
    part = run(CFG, PRESET, run_dir, at={37: [Stop()]})
    assert part.result.status == "stopped" and part.result.summary["steps"] == 37
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 37 and state["epoch"] == 2 and state["batch_in_epoch"] == 11

    resumed = run(CFG, PRESET, run_dir, resume=state)
    assert_same_as_full(resumed, full)
    losses = step_losses(run_dir / "metrics.jsonl")
    assert sorted(losses) == list(range(1, TOTAL + 1))
    assert losses == step_losses(full.dir / "metrics.jsonl")
    assert_same_history(history(run_dir), history(full.dir))
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"}
    assert lrs == {r["step"]: r["lr"] for r in read_metrics(full.dir / "metrics.jsonl") if r["kind"] == "step"}

    started = resumed.of(ev.RunStarted)[0]
    assert started.resumed is True and started.step == 37 and started.epoch == 2
    # metrics.jsonl was appended to, with a resume marker at step 37.
    marks = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "started"]
    assert [(m["step"], m["resumed"]) for m in marks] == [(0, False), (37, True)]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_resume_with_the_wrong_rng_state_would_differ(full, tmp_path):
    """Control: the dropout RNG really matters, so the exact-resume test can fail."""
    run_dir = tmp_path / "run"
    run(CFG, PRESET, run_dir, at={37: [Stop()]})
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    state["rng"]["torch"] = torch.Generator().manual_seed(12345).get_state()
    resumed = run(CFG, PRESET, run_dir, resume=state)
    assert not torch.equal(resumed.trainer.model.inner[0].weight, full.trainer.model.inner[0].weight)


def test_resume_from_a_manual_save_on_the_last_step_of_an_epoch(full, tmp_path):
    run_dir = tmp_path / "run"
    part = run(CFG, PRESET, run_dir, at={26: [SaveCheckpoint()], 30: [Stop()]})
    state = ckpt.load(run_dir / "checkpoints" / "step-26.pt")
    assert state["step"] == 26 and state["batch_in_epoch"] == 13  # before the epoch-end evaluation
    assert part.result.summary["steps"] == 30

    resumed = run(CFG, PRESET, run_dir, resume=state)
    assert_same_as_full(resumed, full)
    assert step_losses(run_dir / "metrics.jsonl") == step_losses(full.dir / "metrics.jsonl")
    assert_same_history(history(run_dir), history(full.dir))


def test_resume_after_a_crash_from_the_epoch_end_checkpoint(full, tmp_path):
    from conftest import start
    run_dir = tmp_path / "run"
    trainer, _ = start(CFG, PRESET, run_dir)
    trainer.model.raise_at = 27  # first batch of epoch 3
    assert trainer.run().status == "failed"
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 26 and state["epoch"] == 2 and state["batch_in_epoch"] == 0
    saved = tmp_path / "epoch-2.pt"
    saved.write_bytes((run_dir / "checkpoints" / "latest.pt").read_bytes())

    # In place: the run directory carries on.
    resumed = run(CFG, PRESET, run_dir, resume=state)
    assert_same_as_full(resumed, full)
    assert step_losses(run_dir / "metrics.jsonl") == step_losses(full.dir / "metrics.jsonl")
    assert_same_history(history(run_dir), history(full.dir))

    # From the .pt into a new directory: only the remaining steps are there. (Load it
    # again: a resumed Trainer trains the optimizer tensors of the dict it was given.)
    state = ckpt.load(saved)
    elsewhere = run(CFG, PRESET, tmp_path / "new", resume=state)
    assert_same_as_full(elsewhere, full)
    new_losses = step_losses(tmp_path / "new" / "metrics.jsonl")
    assert sorted(new_losses) == list(range(27, TOTAL + 1))
    assert new_losses == {s: v for s, v in step_losses(full.dir / "metrics.jsonl").items() if s >= 27}


def test_the_lr_multiplier_survives_a_resume(tmp_path):
    cfg = make_cfg(epochs=3, scheduler="cosine")
    preset = classifier_preset(dropout=0.3)
    straight = run(cfg, preset, tmp_path / "a", at={5: [SetLR(0.02)]})
    run(cfg, preset, tmp_path / "b", at={5: [SetLR(0.02)], 11: [Stop()]})
    state = ckpt.load(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert state["lr_multiplier"] == pytest.approx(0.4)
    resumed = run(cfg, preset, tmp_path / "b", resume=state)
    assert resumed.result.status == "finished"
    assert_same_weights(weights(resumed.trainer.model), weights(straight.trainer.model))
    assert resumed.of(ev.SchedulePreview)[0].multiplier == pytest.approx(0.4)
    assert resumed.lr_by_step()[24] == pytest.approx(straight.lr_by_step()[24], rel=1e-12)
    assert [row["lr"] for row in history(tmp_path / "b")] == pytest.approx(
        [row["lr"] for row in history(tmp_path / "a")], rel=1e-12)


def test_a_torn_last_line_is_skipped_and_cut_off_on_resume(full, tmp_path):
    run_dir = tmp_path / "run"
    run(CFG, PRESET, run_dir, at={37: [Stop()]})
    metrics = run_dir / "metrics.jsonl"
    complete = list(read_metrics(metrics))
    with open(metrics, "a") as f:
        f.write('{"kind":"step","step":38,"epoch":3,"t":1.0,"lo')  # killed mid-write
    assert list(read_metrics(metrics)) == complete

    run(CFG, PRESET, run_dir, resume=ckpt.load(run_dir / "checkpoints" / "latest.pt"))
    lines = metrics.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line parses: the fragment is gone
    assert not any('"lo' in line and line.endswith('"lo') for line in lines)
    assert step_losses(metrics) == step_losses(full.dir / "metrics.jsonl")


def test_a_new_run_refuses_a_directory_that_holds_a_run(full):
    from tuitrain.engine.trainer import Trainer
    with pytest.raises(RunDirError, match="already holds a run"):
        Trainer(CFG, PRESET, full.dir).run()
    assert step_losses(full.dir / "metrics.jsonl")[TOTAL] is not None


@pytest.mark.parametrize("scheduler", ["warmup-cosine", "step", "plateau", "none"])
def test_exact_resume_with_other_schedules_accumulation_and_clipping(tmp_path, scheduler):
    # 13 batches an epoch, accumulate 2: 7 steps an epoch, the last one a single batch.
    cfg = make_cfg(epochs=3, scheduler=scheduler, optimizer="adam", lr=0.01, step_size=1, accumulate=2,
                   grad_clip=0.5, plateau_patience=1)
    straight = run(cfg, PRESET, tmp_path / "a")
    part = run(cfg, PRESET, tmp_path / "b", at={23: [Stop()]})  # batch 10 of epoch 2 ends step 7 + 5
    assert part.result.summary["steps"] == 12
    resumed = run(cfg, PRESET, tmp_path / "b", resume=ckpt.load(tmp_path / "b" / "checkpoints" / "latest.pt"))
    assert resumed.result.summary["steps"] == 21
    assert step_losses(tmp_path / "b" / "metrics.jsonl") == step_losses(tmp_path / "a" / "metrics.jsonl")
    assert_same_weights(weights(resumed.trainer.model), weights(straight.trainer.model))
    norms = lambda d: {r["step"]: r["grad_norm"] for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "step"}
    assert norms(tmp_path / "b") == norms(tmp_path / "a")
