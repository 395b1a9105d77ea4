"""What the Lightning and Hugging Face callbacks cost a trainer: steps/s with TuitrainCallback vs without.

    python tests/perf/bench_callbacks.py [--pairs 5] [--lightning-steps 600] [--hf-steps 150] [--only lightning|hf]

Lightning: a 2-32-32-2 MLP on the rings, batch 32, SGD + a per-step cosine schedule (~1 ms a step,
the worst case for a per-step cost). Hugging Face: transformers.Trainer on a 2-layer GPT-2 (n_embd 32,
vocab 64) on made-up tokens, batch 8 x 16 tokens. CPU, one thread. The same timing callback runs in
both arms and times the steps after a warm-up (setup and the first steps left out); the two arms
alternate in one process (A, B, A, B ...), on freshly seeded objects, and the figures are the medians
of the paired ratios, of wall time and of the training thread's CPU time (target >= 0.97). Not part of the test run.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

WARMUP = 20


def lightning_arm(steps: int, run_dir: Path | None) -> tuple[float, float]:
    """Steps/s of a Lightning fit after the warm-up, with TuitrainCallback when run_dir is given."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from tuitrain.integrations.lightning import TuitrainCallback

    class Rings(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    clock = Clock(steps)

    class Timing(pl.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            clock.at(trainer.global_step)

    torch.manual_seed(0)
    x = torch.randn(4096, 2)
    y = (x.norm(dim=1) < 1.0).long()
    callbacks: list[Any] = [Timing()]
    if run_dir is not None:
        callbacks.insert(0, TuitrainCallback(run_dir=run_dir))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Rings(), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
    return clock.rate()


def hf_arm(steps: int, run_dir: Path | None) -> tuple[float, float]:
    """Steps/s of a transformers.Trainer after the warm-up, with TuitrainCallback when run_dir is given."""
    import transformers

    from tuitrain.integrations.hf import TuitrainCallback

    clock = Clock(steps)

    class Timing(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.at(state.global_step)

    class Counting(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.ids = (torch.randint(0, 64, (512, 1)) + torch.arange(16)) % 64

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                                                 n_positions=32))
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-3,
            lr_scheduler_type="linear", logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
        callbacks: list[Any] = [Timing()]
        if run_dir is not None:
            callbacks.insert(0, TuitrainCallback(run_dir=run_dir))
        transformers.Trainer(model=model, args=args, train_dataset=Counting(), callbacks=callbacks).train()
    return clock.rate()


class Clock:
    """Wall time and the training thread's CPU time at the end of the warm-up step and of the last step.

    The CPU-time rate is the steadier figure on a shared machine (other processes' load does not enter
    it); tuitrain's own work in the step (the flush included) runs on the training thread, so it counts."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.start = self.end = (math.nan, math.nan)

    def at(self, step: int) -> None:
        if step == WARMUP:
            self.start = (time.perf_counter(), time.thread_time())
        elif step == self.steps:
            self.end = (time.perf_counter(), time.thread_time())

    def rate(self) -> tuple[float, float]:
        """(steps per wall second, steps per CPU second of the training thread)."""
        n = self.steps - WARMUP
        return n / (self.end[0] - self.start[0]), n / (self.end[1] - self.start[1])


def pairs(name: str, arm: Callable[[int, Path | None], tuple[float, float]], steps: int, n: int) -> None:
    wall, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            # Which arm goes first alternates: run second, an arm inherits the first one's garbage (the
            # Trainer and its model are only collected later), which had made the callback look 8% dearer.
            if i % 2 == 0:
                base = arm(steps, None)
                attached = arm(steps, Path(tmp) / f"{name}-{i}")
            else:
                attached = arm(steps, Path(tmp) / f"{name}-{i}")
                base = arm(steps, None)
            gc.collect()
            wall.append(attached[0] / base[0])
            cpu.append(attached[1] / base[1])
            print(f"{name} pair {i + 1}: without {base[0]:7.1f} steps/s ({base[1]:7.1f} per CPU s)  "
                  f"with {attached[0]:7.1f} ({attached[1]:7.1f})  ratio {wall[-1]:.3f} (CPU {cpu[-1]:.3f})",
                  flush=True)
    print(f"{name}: median ratio {statistics.median(wall):.3f} wall, {statistics.median(cpu):.3f} CPU time, "
          f"over {n} pairs (target >= 0.97)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--lightning-steps", type=int, default=600)
    parser.add_argument("--hf-steps", type=int, default=150)
    parser.add_argument("--only", choices=("lightning", "hf"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "lightning"):
        pairs("lightning", lightning_arm, args.lightning_steps, args.pairs)
    if args.only in (None, "hf"):
        pairs("hf", hf_arm, args.hf_steps, args.pairs)


if __name__ == "__main__":
    main()
