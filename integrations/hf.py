"""Hugging Face: a callback that makes `transformers.Trainer.train()` a tuitrain run, watched and steered live.

    from tuitrain.integrations.hf import TuitrainCallback
    trainer = transformers.Trainer(model, args, train_dataset=..., callbacks=[TuitrainCallback()])

It attaches at on_train_begin with the model, the torch optimizer under Accelerate's wrapper (its
step hooks are what apply a dashboard's LR), the scheduler and state.max_steps; records one step
per optimizer step at on_step_end and an evaluation per on_evaluate (eval_loss, eval_<name> as
val_<name>); closes at on_train_end. A dashboard's pause blocks at the step's end; stop sets
control.should_training_stop, which ends the step loop and the epoch loop.

The per-step loss: Trainer's callbacks are not given it, and asking the Trainer for it would copy
it to the host every step. So a forward hook on the model keeps each training forward's detached
`output.loss` (on its device) and on_step_end adds up the micro-batches of the step: averaged when
each is its own mean, summed when the Trainer passed num_items_in_batch (each is then already a
share of the whole step's loss).

A raise inside train() has no callback event: the run then ends "failed" at the script's exit
(attach's own exit handling), or call `callback.run.failed(exc)` where you catch it.

The class is made on first lookup of TuitrainCallback (see tuitrain.integrations): this module
imports without transformers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from . import require

__all__ = ["TuitrainCallback"]  # noqa: F822 - made by the module's __getattr__

#: Trainer's own numbers in the eval metrics, not the model's: not shown as metrics.
_SPEED = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")


def eval_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """on_evaluate's metrics as attach's evaluate() keywords: eval_loss -> val_loss, eval_acc -> val_acc."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        key = str(key)
        if not key.startswith("eval_") or key.endswith(_SPEED):
            continue
        out["val_" + key[5:]] = value
    return out


class _LossTap:
    """A forward hook that keeps the training forwards' losses of one optimizer step, on their device."""

    def __init__(self) -> None:
        self.total: Any = None
        self.count = 0
        self.share = False  # the Trainer passed num_items_in_batch: each loss is a share of the step's

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        import torch

        if not module.training or not torch.is_grad_enabled():
            return  # evaluation and generation forwards
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1
        self.share = kwargs.get("num_items_in_batch") is not None

    def take(self) -> Any:
        """The step's loss (a tensor, still on its device) and a fresh start for the next step."""
        total, count, share = self.total, self.count, self.share
        self.total, self.count = None, 0
        if total is None:
            return None
        return total if share or count == 1 else total / count


def _build() -> type:
    transformers = require("transformers", "transformers", "tuitrain.integrations.hf")

    class TuitrainCallback(transformers.TrainerCallback):  # type: ignore[misc, name-defined]
        """Records and serves a transformers.Trainer run as a tuitrain run. Takes tuitrain.attach()'s keyword
        arguments (run_dir, save, name, config, log_interval, insights ...); model, optimizer, scheduler,
        total_steps and steps_per_epoch, when not given, come from the Trainer."""

        def __init__(self, **attach_options: Any) -> None:
            self.options = attach_options
            self.run: Any = None
            """The tuitrain Run of the train() in progress (or the last one)."""
            self._tap = _LossTap()
            self._hook: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            import tuitrain

            self._end()
            options = dict(self.options)
            model = options.setdefault("model", kwargs.get("model"))
            options.setdefault("optimizer", torch_optimizer(kwargs.get("optimizer")))
            options.setdefault("scheduler", kwargs.get("lr_scheduler"))
            options.setdefault("total_steps", int(state.max_steps or 0) or None)
            options.setdefault("steps_per_epoch", _steps_per_epoch(kwargs.get("train_dataloader"), args))
            options.setdefault("start_step", int(state.global_step or 0))
            self._tap = _LossTap()
            if model is not None:
                self._hook = model.register_forward_hook(self._tap, with_kwargs=True)
            self.run = tuitrain.attach(**options)
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            run = self.run
            if run is None or run.status is not None:
                return control
            run.step(loss=self._tap.take())  # a dashboard's pause blocks here, between two optimizer steps
            if run.should_stop:
                control.should_training_stop = True  # ends the step loop and then the epoch loop
                control.should_epoch_stop = True
            return control

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                        **kwargs: Any) -> Any:
            run = self.run
            if run is not None and run.status is None and metrics:
                run.evaluate(**eval_metrics(metrics))
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self._end()
            return control

        def _end(self) -> None:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            if self.run is not None and self.run.status is None:
                self.run.close()

    TuitrainCallback.__module__ = __name__
    return TuitrainCallback


def torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer under Accelerate's AcceleratedOptimizer (.optimizer): its step hooks are the ones
    that fire, and its param_groups are the ones the step reads."""
    seen = 0
    while optimizer is not None and not _is_torch_optimizer(optimizer) and seen < 4:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if _is_torch_optimizer(optimizer) else None


def _is_torch_optimizer(optimizer: Any) -> bool:
    import torch

    return isinstance(optimizer, torch.optim.Optimizer) and type(optimizer).__name__ != "AcceleratedOptimizer"


def _steps_per_epoch(loader: Any, args: Any) -> int | None:
    try:
        batches = len(loader)
    except TypeError:  # an iterable dataset
        return None
    accumulate = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
    return math.ceil(batches / accumulate) or None


_made: list[type] = []


def __getattr__(name: str) -> Any:
    if name == "TuitrainCallback":
        if not _made:
            _made.append(_build())
        return _made[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
