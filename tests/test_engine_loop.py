"""The training loop as a user sees it: steps, accumulation, modes, early stopping, failures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import (Probe, blobs, classifier_preset, line_preset, line_weights, make_cfg, run,
                      scalar_model)
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.presets.base import Data, Preset


def big_line_preset(n: int, *, drop_last: bool = False) -> Preset:
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    xv = torch.linspace(-1, 1, 50).unsqueeze(1)
    return Preset("big", "45k samples", "regression", lambda seed: Data((x, 3 * x), (xv, 3 * xv)),
                  lambda: Probe(nn.Linear(1, 1)), drop_last=drop_last)


# -- steps per epoch ---------------------------------------------------------------------

@pytest.mark.parametrize("drop_last, steps", [(False, 352), (True, 351)])
def test_steps_per_epoch_is_ceil_or_floor_of_n_over_batch(run_dir, drop_last, steps):
    preset = big_line_preset(45_000, drop_last=drop_last)
    r = run(make_cfg(epochs=1, batch_size=128), preset, run_dir)

    assert r.result.status == "finished"
    assert r.result.summary["steps"] == steps
    assert r.of(ev.RunStarted)[0].steps_per_epoch == steps
    assert r.of(ev.RunStarted)[0].total_steps == steps
    assert [rec["step"] for rec in r.step_records()] == list(range(1, steps + 1))
    assert sum(1 for m in r.trainer.model.modes if m[0]) == steps  # one training forward per step
    assert r.of(ev.StepStats)[-1].epoch_step == steps


def test_the_short_last_batch_is_seen_once_and_dropped_with_drop_last(run_dir, tmp_path):
    sizes = {}
    for drop_last in (False, True):
        preset = big_line_preset(1000, drop_last=drop_last)
        cfg = make_cfg(epochs=1, batch_size=128)
        from conftest import start
        trainer, _ = start(cfg, preset, tmp_path / f"r{drop_last}")
        trainer.model.keep_inputs = True
        trainer.run()
        sizes[drop_last] = [len(x) for x in trainer.model.seen]
    assert sizes[False] == [128] * 7 + [1000 - 7 * 128]
    assert sizes[True] == [128] * 7


# -- gradient accumulation -------------------------------------------------------------------

def test_accumulation_steps_every_k_batches_and_the_last_partial_group_still_steps(run_dir):
    # 10 batches of 8, K = 3: steps after batches 3, 6, 9 and 10.
    x = torch.randn(80, 1, generator=torch.Generator().manual_seed(1))
    preset = Preset("acc", "", "regression", lambda seed: Data((x, 2 * x), (x[:8], 2 * x[:8])), scalar_model)
    from conftest import start
    trainer, events = start(make_cfg(epochs=2, batch_size=8, lr=0.1, accumulate=3), preset, run_dir)
    model = trainer.model
    model.keep_inputs = True
    result = trainer.run()

    assert result.status == "finished"
    assert result.summary["steps"] == 8
    started = [e for e in events if isinstance(e, ev.RunStarted)][0]
    assert started.steps_per_epoch == 4
    w = [float(t) for t in model.weights_seen]
    assert len(w) == 20
    # The weight changes exactly after training forwards 3, 6, 9, 10 (and again in epoch 2).
    changed = [i + 1 for i in range(1, 20) if w[i] != w[i - 1]]
    assert changed == [4, 7, 10, 11, 14, 17, 20]

    # Each update is SGD on the per-batch losses, each divided by K (= their mean for a full group).
    lr, k = 0.1, 3

    def grad(wv: float, batches: list[torch.Tensor]) -> float:
        wt = torch.tensor([[wv]], requires_grad=True)
        loss = sum(nn.functional.mse_loss(xb @ wt.T, 2 * xb) / k for xb in batches)
        (g,) = torch.autograd.grad(loss, wt)
        return float(g)

    seen = model.seen
    w0 = w[0]
    w1 = w0 - lr * grad(w0, seen[0:3])
    w2 = w1 - lr * grad(w1, seen[3:6])
    w3 = w2 - lr * grad(w2, seen[6:9])
    w4 = w3 - lr * grad(w3, seen[9:10])  # the partial group: one batch, still divided by K
    assert w[3] == pytest.approx(w1, rel=1e-6)
    assert w[6] == pytest.approx(w2, rel=1e-6)
    assert w[9] == pytest.approx(w3, rel=1e-6)
    assert w[10] == pytest.approx(w4, rel=1e-6)

    # The recorded loss of a step is the mean of its batches' losses before the update.
    steps = [r for r in (e for e in events if isinstance(e, ev.StepStats))][0]
    first = sum(float(nn.functional.mse_loss(xb * w0, 2 * xb)) for xb in seen[0:3]) / 3
    assert steps.steps[0] == 1
    assert steps.loss[0] == pytest.approx(first, rel=1e-5)


# -- train / eval modes ------------------------------------------------------------------------

def test_training_batches_run_in_train_mode_and_validation_in_eval_mode_without_grad(run_dir):
    preset = classifier_preset(dropout=0.5)  # 64 train -> 8 batches; 32 val -> 1 batch of 256
    from tuitrain.engine.commands import Evaluate
    r = run(make_cfg(epochs=3), preset, run_dir, at={3: [Evaluate()]})

    assert r.result.status == "finished"
    modes = r.trainer.model.modes
    train = [m for m in modes if m[0]]
    evals = [m for m in modes if not m[0]]
    assert len(train) == 24
    assert all(grad for _, grad in train), "training forwards must record gradients"
    assert len(evals) == 4  # 3 epoch ends + 1 Evaluate command, one val batch each
    assert not any(grad for _, grad in evals), "validation must run without grad"
    # Mode sequence: 3 train, eval (command), 5 train, eval, 8 train, eval, 8 train, eval.
    pattern = "".join("T" if m[0] else "E" for m in modes)
    assert pattern == "TTT" + "E" + "TTTTT" + "E" + "T" * 8 + "E" + "T" * 8 + "E"
    assert r.trainer.model.training is True  # left in train mode after the last evaluation


# -- run directory -------------------------------------------------------------------------------

def test_run_directory_files_follow_the_contract(run_dir):
    import json
    cfg = make_cfg(epochs=3)
    r = run(cfg, classifier_preset(), run_dir)
    d = r.dir
    assert d == run_dir

    assert json.loads((d / "config.json").read_text()) == cfg.to_dict()

    lines = (d / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line valid JSON
    assert records[0]["kind"] == "event" and records[0]["event"] == "started"
    steps = [x for x in records if x["kind"] == "step"]
    assert [x["step"] for x in steps] == list(range(1, 25))
    for x in steps:
        assert set(x) >= {"kind", "step", "epoch", "t", "loss", "lr"}
        assert isinstance(x["loss"], float) and x["lr"] == pytest.approx(0.05)
    assert [x["epoch"] for x in steps] == [1] * 8 + [2] * 8 + [3] * 8
    evals = [x for x in records if x["kind"] == "eval"]
    assert len(evals) == 3
    for i, x in enumerate(evals, start=1):
        assert set(x) >= {"kind", "step", "epoch", "t", "train_loss", "val_loss", "val_acc"}
        assert x["epoch"] == i and x["step"] == 8 * i
        assert 0.0 <= x["val_acc"] <= 1.0
        # train_loss is the mean of the epoch's step losses.
        epoch_losses = [s["loss"] for s in steps if s["epoch"] == i]
        assert x["train_loss"] == pytest.approx(sum(epoch_losses) / 8, rel=1e-9)
    saved = [x for x in records if x["kind"] == "event" and x["event"] == "checkpoint"]
    assert {(x["step"], x["reason"]) for x in saved} >= {(8, "epoch"), (16, "epoch"), (24, "epoch")}
    assert records[-1]["event"] == "ended" and records[-1]["status"] == "finished"

    history = json.loads((d / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for row, x in zip(history, evals):
        assert set(row) >= {"epoch", "train_loss", "val_loss", "val_acc", "lr"}
        assert row["val_loss"] == x["val_loss"] and row["train_loss"] == x["train_loss"]
        assert row["lr"] == pytest.approx(0.05)

    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["epochs"] == 3 and summary["steps"] == 24
    assert summary["best_val_loss"] == min(row["val_loss"] for row in history)
    assert summary["train_seconds"] > 0
    assert summary["steps_per_sec"] > 0 and summary["samples_per_sec"] > 0
    # 8 samples a step: the two rates agree.
    assert summary["samples_per_sec"] == pytest.approx(8 * summary["steps_per_sec"], rel=0.01)
    assert summary == r.result.summary
    assert (d / "checkpoints" / "latest.pt").is_file() and (d / "checkpoints" / "best.pt").is_file()
    assert not (d / "error.txt").exists()


def test_max_steps_mid_epoch_finishes_with_an_evaluation_and_a_checkpoint(run_dir):
    r = run(make_cfg(epochs=3, max_steps=11), classifier_preset(), run_dir)
    assert r.result.status == "finished"
    assert r.result.summary["steps"] == 11 and r.result.summary["epochs"] == 1
    assert r.of(ev.RunStarted)[0].total_steps == 11
    last_eval = r.of(ev.EvalDone)[-1]
    assert last_eval.step == 11 and last_eval.epoch_end is False
    latest = ckpt.load(r.dir / "checkpoints" / "latest.pt")
    assert latest["step"] == 11 and latest["batch_in_epoch"] == 3
    assert ("end", 11) in {(e.reason, e.step) for e in r.of(ev.CheckpointSaved)}


def test_history_row_and_best_checkpoint_for_epoch_ended_by_max_steps(run_dir):
    r = run(make_cfg(epochs=3, max_steps=16), classifier_preset(), run_dir)
    import json
    assert r.result.summary["epochs"] == 2
    history = json.loads((r.dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert len([e for e in r.of(ev.EvalDone) if e.epoch_end]) == 2


# -- early stopping ------------------------------------------------------------------------------

def test_early_stopping_after_patience_epochs_without_improvement_keeps_the_best_weights(run_dir):
    # Validation loss improves for 3 epochs, then gets worse: with patience 2 the run
    # stops after epoch 5 and best.pt holds epoch 3's weights.
    preset = line_preset()
    r = run(make_cfg(epochs=10, batch_size=4, lr=0.1, patience=2), preset, run_dir)

    assert r.result.status == "early_stopped"
    (stop,) = r.of(ev.EarlyStop)
    assert stop.epoch == 5 and stop.best_epoch == 3 and stop.patience == 2
    assert r.result.summary["best_epoch"] == 3
    assert r.result.summary["epochs"] == 5 and r.result.summary["steps"] == 5
    w = line_weights(5)
    vals = [e.val_loss for e in r.of(ev.EvalDone) if e.epoch_end]
    assert vals == pytest.approx([(wi - 1) ** 2 for wi in w], rel=1e-5)
    assert stop.best_val_loss == vals[2] == r.result.summary["best_val_loss"]

    best = ckpt.load(r.dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 3 and best["step"] == 3
    model = scalar_model()
    model.load_state_dict(best["model_state_dict"])
    x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    with torch.no_grad():
        val_loss = float(nn.functional.mse_loss(model(x), x))
    assert val_loss == pytest.approx(stop.best_val_loss, rel=1e-6)
    assert float(model.inner.weight.detach()) == pytest.approx(w[2], rel=1e-6)
    latest = ckpt.load(r.dir / "checkpoints" / "latest.pt")
    assert latest["epoch"] == 5 and latest["early_stop_counter"] == 2
    assert r.names()[-1] == "ended" and "early_stop" in r.names()


def test_a_model_that_never_improves_stops_after_patience_epochs(run_dir):
    # Training pulls w towards +1 while validation wants -1: epoch 1 is the best.
    preset = line_preset(train_slope=1.0, val_slope=-1.0)
    r = run(make_cfg(epochs=10, batch_size=4, lr=0.1, patience=3), preset, run_dir)
    assert r.result.status == "early_stopped"
    assert r.of(ev.EarlyStop)[0].epoch == 4
    assert r.result.summary["best_epoch"] == 1
    assert [e.patience_used for e in r.of(ev.EvalDone)] == [0, 1, 2, 3]


def test_without_patience_all_epochs_run(run_dir):
    r = run(make_cfg(epochs=6, batch_size=4, lr=0.1), line_preset(), run_dir)
    assert r.result.status == "finished" and r.result.summary["epochs"] == 6
    assert not r.of(ev.EarlyStop)


# -- a failing user model ------------------------------------------------------------------------

def test_a_model_that_raises_fails_the_run_with_its_traceback_on_disk(run_dir):
    from conftest import start
    trainer, events = start(make_cfg(epochs=3), classifier_preset(), run_dir)
    trainer.model.raise_at = 8 + 3  # the third batch of epoch 2

    result = trainer.run()
    assert result.status == "failed"
    assert "boom at training call 11" in result.error and "RuntimeError" in result.error
    error_txt = (run_dir / "error.txt").read_text()
    assert "Traceback (most recent call last)" in error_txt
    assert "RuntimeError: boom at training call 11" in error_txt
    assert "forward" in error_txt  # the user's frame is in it
    failed = [e for e in events if isinstance(e, ev.RunFailed)]
    assert len(failed) == 1 and "boom at training call 11" in failed[0].error
    assert failed[0].step == 10
    ended = events[-1]
    assert isinstance(ended, ev.RunEnded) and ended.status == "failed"

    import json
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("event") == "error" for x in records)
    # The checkpoint from the end of epoch 1 is intact.
    good = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert good["epoch"] == 1 and good["step"] == 8
    assert all(torch.isfinite(t).all() for t in good["model_state_dict"].values())


def test_a_model_that_raises_in_epoch_one_leaves_no_checkpoint(run_dir):
    from conftest import start
    trainer, events = start(make_cfg(epochs=2), classifier_preset(), run_dir)
    trainer.model.raise_at = 2
    result = trainer.run()
    assert result.status == "failed" and result.summary["steps"] == 1
    assert not (run_dir / "checkpoints" / "latest.pt").exists()
    assert "boom" in (run_dir / "error.txt").read_text()


def test_every_step_is_recorded_once_however_often_the_loop_flushes(run_dir):
    r = run(make_cfg(epochs=2, log_interval=1e-6), classifier_preset(), run_dir)
    assert r.result.status == "finished"
    assert [rec["step"] for rec in r.step_records()] == list(range(1, 17))
    for e in r.of(ev.StepStats):
        assert len(e.loss) == len(e.lr) == len(e.steps)
    for e in r.of(ev.EvalDone):
        losses = [rec["loss"] for rec in r.step_records() if rec["epoch"] == e.epoch]
        assert e.train_loss == pytest.approx(sum(losses) / 8, rel=1e-9)


# -- gradient clipping, mixed precision, Dataset splits ------------------------------------------

def test_grad_clip_limits_the_update_and_records_the_unclipped_norm(run_dir):
    # First step on the line preset: grad = 2 (w - 2) = -4, clipped to norm 0.001.
    r = run(make_cfg(epochs=1, batch_size=4, lr=0.1, grad_clip=0.001), line_preset(), run_dir)
    (rec,) = r.step_records()
    assert rec["grad_norm"] == pytest.approx(4.0)
    w = float(ckpt.load(run_dir / "checkpoints" / "latest.pt")["model_state_dict"]["inner.weight"])
    assert w == pytest.approx(0.1 * 0.001, rel=1e-4)


def test_bfloat16_autocast_on_the_cpu_trains(run_dir):
    r = run(make_cfg(epochs=2, amp=True), classifier_preset(), run_dir)
    assert r.result.status == "finished"
    assert r.of(ev.RunStarted)[0].amp == "bfloat16"
    assert all(math.isfinite(rec["loss"]) for rec in r.step_records())


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def dataset_preset(dropout: float = 0.2) -> Preset:
    def make_data(seed: int) -> Data:
        d = blobs(seed, 60, 20)
        return Data(PairDataset(*d.train), PairDataset(*d.val))

    def make_model() -> nn.Module:
        layers = [nn.Linear(2, 8), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(8, 2)]
        return Probe(nn.Sequential(*layers))

    return Preset("ds", "Dataset splits", "classification", make_data, make_model)


def test_a_dataset_split_trains_with_ceil_n_over_batch_steps(run_dir):
    r = run(make_cfg(epochs=2, batch_size=8), dataset_preset(), run_dir)
    assert r.result.status == "finished"
    assert r.result.summary["steps"] == 16  # ceil(60 / 8) = 8 per epoch
    assert [rec["step"] for rec in r.step_records()] == list(range(1, 17))
    assert r.of(ev.RunStarted)[0].train_size == 60


@pytest.mark.parametrize("dropout", [
    0.0,
    0.2,
])
def test_a_dataset_split_resumes_exactly(tmp_path, dropout):
    from tuitrain.engine.commands import Stop
    from tuitrain.engine.rundir import step_losses
    cfg = make_cfg(epochs=2, batch_size=8)
    full = run(cfg, dataset_preset(dropout), tmp_path / "full")
    part = run(cfg, dataset_preset(dropout), tmp_path / "part", at={11: [Stop()]})
    assert part.result.summary["steps"] == 11
    resumed = run(cfg, dataset_preset(dropout), tmp_path / "part",
                  resume=ckpt.load(tmp_path / "part" / "checkpoints" / "latest.pt"))
    assert step_losses(tmp_path / "part" / "metrics.jsonl") == step_losses(tmp_path / "full" / "metrics.jsonl")
    for k, v in full.trainer.model.state_dict().items():
        assert torch.equal(resumed.trainer.model.state_dict()[k], v), k
