"""The Hugging Face callback on a real transformers.Trainer (CPU, a 2-layer GPT-2 from a config, made-up tokens).

trainer.train() runs in a thread of this process, steered through the real control socket; the test
reads the user's side directly: the LR the torch optimizer under Accelerate's wrapper used,
state.global_step, the weights. Nothing is downloaded or saved by the Trainer itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from integration_helpers import Background, LRTap, records, steer  # noqa: E402
from tuitrain.integrations.hf import TuitrainCallback, eval_metrics, torch_optimizer  # noqa: E402

transformers.logging.set_verbosity_error()


class Counting(torch.utils.data.Dataset):
    """Token sequences that count up modulo the vocabulary from a random start: learnable in a few steps."""

    def __init__(self, n: int, seed: int, length: int = 16, vocab: int = 64) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def arguments(out: Path, **overrides: Any) -> Any:
    options: dict[str, Any] = dict(output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                                   learning_rate=1e-3, lr_scheduler_type="linear", max_steps=2000,
                                   eval_strategy="epoch", logging_strategy="no", save_strategy="no",
                                   report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                                   seed=0)
    options.update(overrides)
    return transformers.TrainingArguments(**options)


def accuracy(prediction: Any) -> dict[str, float]:
    predicted, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((predicted[:, :-1] == labels[:, 1:]).mean())}


class Tap(transformers.TrainerCallback):
    """After TuitrainCallback in the list: an LR tap on the torch optimizer, registered after attach's hook."""

    def __init__(self) -> None:
        self.lr: LRTap | None = None
        self.optimizer: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, lr_scheduler: Any = None,
                       **kwargs: Any) -> None:
        self.optimizer = torch_optimizer(optimizer)
        self.lr = LRTap(lr_scheduler)
        self.optimizer.register_step_pre_hook(self.lr)


def test_a_dashboard_pauses_sets_the_lr_saves_and_stops_a_transformers_trainer(tmp_path: Path) -> None:
    R = tmp_path / "R"
    model = tiny_gpt2()
    tap = Tap()
    trainer = transformers.Trainer(
        model=model, args=arguments(tmp_path / "out"), train_dataset=Counting(64, 0), eval_dataset=Counting(16, 1),
        compute_metrics=accuracy, preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
        callbacks=[TuitrainCallback(run_dir=R, log_interval=0.2), tap])
    train = Background(trainer.train).start()
    out = steer(R, steps=lambda: trainer.state.global_step, used=lambda: tap.lr.used if tap.lr else [],
                trainer=train, model=model, new_lr=2e-4, after=12)
    # train() returned at the step the stop was answered at: both of the Trainer's loops ended.
    assert trainer.state.global_step == out["stopped"]["step"] == out["summary"]["steps"] < 2000
    # Accelerate wraps the optimizer; the hooks are on the torch optimizer underneath, which held the LR.
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer" and tap.optimizer is trainer.optimizer.optimizer
    assert tap.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.lr_scheduler.get_last_lr()[0])
    steps = [r["step"] for r in records(R) if r.get("kind") == "step"]
    assert steps == list(range(1, trainer.state.global_step + 1))
    evals = [r for r in records(R) if r.get("kind") == "eval"]
    assert evals and evals[0]["step"] == 8 and evals[0]["metric"] == "accuracy"
    assert 0.0 <= evals[0]["val_metric"] <= 1.0 and evals[0]["val_loss"] > 0
    config = json.loads((R / "config.json").read_text())
    assert config["total_steps"] == 2000 and config["optimizer"] == "AdamW" and config["scheduler"] == "LambdaLR"


def test_each_step_records_the_loss_the_trainer_trained_on_over_its_accumulated_micro_batches(
        tmp_path: Path) -> None:
    R = tmp_path / "R"
    returned: list[torch.Tensor] = []

    class Keeping(transformers.Trainer):
        def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            loss = super().training_step(*args, **kwargs)
            returned.append(loss.detach().clone())
            return loss

    model = tiny_gpt2()
    trainer = Keeping(model=model, args=arguments(tmp_path / "out", max_steps=3, gradient_accumulation_steps=2,
                                                  per_device_train_batch_size=4, eval_strategy="no"),
                      train_dataset=Counting(64, 0), callbacks=[TuitrainCallback(run_dir=R)])
    trainer.train()
    step_records = [r for r in records(R) if r.get("kind") == "step"]
    assert [r["step"] for r in step_records] == [1, 2, 3]
    # The Trainer's own step loss: its training_step returns of the step's micro-batches, added up.
    expected = [float(returned[i] + returned[i + 1]) for i in (0, 2, 4)]
    assert [r["loss"] for r in step_records] == pytest.approx(expected, rel=1e-5)
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 3
    # The forward hook is gone with the run: a later forward in training mode records nothing.
    assert not model._forward_hooks


def test_eval_metrics_become_val_keywords_without_the_trainers_speed_numbers() -> None:
    metrics = {"eval_loss": 1.5, "eval_accuracy": 0.25, "eval_runtime": 0.1, "eval_samples_per_second": 9.0,
               "eval_steps_per_second": 1.0, "epoch": 1.0}
    assert eval_metrics(metrics) == {"val_loss": 1.5, "val_accuracy": 0.25}
