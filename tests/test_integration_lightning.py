"""The Lightning callback on a real lightning.pytorch Trainer (CPU, a tiny MLP on generated rings).

trainer.fit runs in a thread of this process, steered through the real control socket; the test
reads the user's side directly: the LR the optimizer used, trainer.global_step, the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from integration_helpers import Background, LRTap, events, records, steer  # noqa: E402
from tuitrain.integrations.lightning import TuitrainCallback  # noqa: E402

def rings(n: int, seed: int) -> torch.utils.data.TensorDataset:
    """The circles problem: an inner ring (class 1) and an outer ring (class 0), with noise."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 2, (n,), generator=g)
    radius = torch.where(label == 1, 0.5, 1.0) + 0.08 * torch.randn(n, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    return torch.utils.data.TensorDataset(torch.stack([radius * angle.cos(), radius * angle.sin()], 1), label)


class Rings(pl.LightningModule):
    """An MLP on the rings; SGD with a per-step StepLR, so the schedule moves while the test watches."""

    def __init__(self, lr: float = 0.1, step_size: int = 7) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.lr, self.step_size = lr, step_size
        self.tap: LRTap | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.step_size, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        # Callbacks' on_train_start runs first, so this hook comes after attach's and sees the LR used.
        self.tap = LRTap(self.trainer.lr_scheduler_configs[0].scheduler)
        self.trainer.optimizers[0].register_step_pre_hook(self.tap)


def make_trainer(callback: Any, **overrides: Any) -> Any:
    options: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=400, logger=False,
                                   enable_checkpointing=False, enable_progress_bar=False,
                                   enable_model_summary=False, num_sanity_val_steps=1)
    options.update(overrides)
    return pl.Trainer(callbacks=[callback], **options)


def loaders(n: int = 128, batch: int = 16) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    return (DataLoader(rings(n, 0), batch_size=batch, shuffle=True),
            DataLoader(rings(64, 1), batch_size=64))


def test_a_dashboard_pauses_sets_the_lr_saves_and_stops_a_lightning_fit(tmp_path: Path) -> None:
    R = tmp_path / "R"
    torch.manual_seed(0)
    model = Rings()
    trainer = make_trainer(TuitrainCallback(run_dir=R, log_interval=0.2))
    train, val = loaders()
    fit = Background(lambda: trainer.fit(model, train, val)).start()
    out = steer(R, steps=lambda: trainer.global_step, used=lambda: model.tap.used if model.tap is not None else [], trainer=fit, model=model,
                new_lr=0.02, after=20)
    # fit() returned at the step the stop was answered at: Lightning's loop ended, not ran on.
    assert trainer.global_step == out["stopped"]["step"] == out["summary"]["steps"]
    assert trainer.should_stop and trainer.current_epoch < 399
    # The scheduler's own value is back in the param group between steps.
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0])
    # Steps and evaluations on the record: one step per optimizer step, no sanity-check evaluation.
    steps = [r["step"] for r in records(R) if r.get("kind") == "step"]
    assert steps == list(range(1, trainer.global_step + 1))
    evals = [r for r in records(R) if r.get("kind") == "eval"]
    assert 1 <= len(evals) <= trainer.current_epoch + 1
    assert evals[0]["metric"] == "acc" and 0.0 <= evals[0]["val_metric"] <= 1.0
    assert evals[0]["step"] == 8  # the first epoch's end (128 / 16), not the sanity check at step 0
    config = json.loads((R / "config.json").read_text())
    assert config["optimizer"] == "SGD" and config["scheduler"] == "StepLR"
    assert config["total_steps"] == 400 * 8


def test_accumulated_batches_record_one_step_per_optimizer_step_with_their_mean_loss(tmp_path: Path) -> None:
    R = tmp_path / "R"
    torch.manual_seed(0)
    model = Rings()
    losses: list[torch.Tensor] = []

    class Keep(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            losses.append(outputs["loss"].detach().clone())

    trainer = pl.Trainer(callbacks=[TuitrainCallback(run_dir=R), Keep()], accelerator="cpu", devices=1,
                         max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accumulate_grad_batches=4)
    train, val = loaders(n=128, batch=16)  # 8 batches an epoch: 2 optimizer steps
    trainer.fit(model, train, val)
    assert trainer.global_step == 4
    step_records = [r for r in records(R) if r.get("kind") == "step"]
    steps = [r["step"] for r in step_records]
    recorded = [r["loss"] for r in step_records]
    assert steps == [1, 2, 3, 4]
    # Lightning divides each micro-batch's loss by 4; their sum is the optimizer step's mean loss.
    expected = [float(sum(losses[i:i + 4])) for i in range(0, 16, 4)]
    assert recorded == pytest.approx(expected, rel=1e-6)
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4 and summary["epochs"] == 2
    # Layer health's gradient norms are this step's: Lightning's backward runs inside optimizer.step(),
    # after attach's pre-hook, so the callback takes them at on_before_optimizer_step (step 1 has grads).
    layers = events(R, "layers")[0]
    assert all(g is not None and g > 0 for g in layers["grad_norm"]), layers["grad_norm"]


def test_a_raise_in_training_step_ends_the_run_failed(tmp_path: Path) -> None:
    R = tmp_path / "R"

    class Boom(Rings):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == 3:
                raise RuntimeError("boom at step 3")
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(TuitrainCallback(run_dir=R), max_epochs=1)
    train, val = loaders()
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), train, val)
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom at step 3" in summary["reason"] and summary["steps"] == 3
    assert "boom at step 3" in events(R, "error")[0]["error"]
