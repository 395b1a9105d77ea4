"""Lightning: a callback that makes `trainer.fit()` a tuitrain run, watched and steered live.

    from tuitrain.integrations.lightning import TuitrainCallback
    trainer = lightning.pytorch.Trainer(callbacks=[TuitrainCallback()])

It attaches at on_train_start (after the sanity check), with the LightningModule, the torch optimizer
(trainer.optimizers[0]), its scheduler and trainer.estimated_stepping_batches; records one step per
optimizer step (with accumulate_grad_batches > 1, the micro-batches' losses added up, as Lightning
divides each by the count), an evaluation per validation epoch from trainer.callback_metrics
(val_loss, val_acc ...), and closes at on_train_end (a raise: on_exception). A dashboard's pause
blocks at the batch's end; set LR, save and stop act as for attach(); stop sets trainer.should_stop.

The class is made on first lookup of TuitrainCallback (see tuitrain.integrations): this module
imports without Lightning. For the `pytorch_lightning` package use tuitrain.integrations.pytorch_lightning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from . import require

__all__ = ["TuitrainCallback"]  # noqa: F822 - made by the module's __getattr__


def _callback_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the user logged for validation, as attach's evaluate() keywords: val_loss, val_acc, ...

    "val/acc" becomes val_acc; values stay tensors (attach turns them into numbers at eval time)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = str(key).replace("/", "_").replace(".", "_")
        if name.startswith("val_") and name not in out:
            out[name] = value
    return out


def _loss_of(outputs: Any) -> Any:
    """The step's loss from on_train_batch_end's outputs (a tensor or a dict with "loss"), not copied to host."""
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return outputs


def build(pl: ModuleType) -> type:
    """The callback class over this Lightning package (lightning.pytorch or pytorch_lightning)."""

    class TuitrainCallback(pl.Callback):  # type: ignore[misc, name-defined]
        """Records and serves a Lightning fit as a tuitrain run. Takes tuitrain.attach()'s keyword arguments
        (run_dir, save, name, config, log_interval, insights ...); model, optimizer, scheduler, total_steps
        and steps_per_epoch, when not given, come from the trainer."""

        def __init__(self, **attach_options: Any) -> None:
            super().__init__()
            self.options = attach_options
            self.run: Any = None
            """The tuitrain Run of the fit in progress (or the last one)."""
            self._last_step = 0
            self._loss: Any = None

        # -- attaching ---------------------------------------------------------------------
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            import tuitrain

            if self.run is not None and self.run.status is None:
                self.run.close()
            options = dict(self.options)
            optimizers = list(getattr(trainer, "optimizers", []) or [])
            configs = list(getattr(trainer, "lr_scheduler_configs", []) or [])
            options.setdefault("model", pl_module)
            options.setdefault("optimizer", _torch_optimizer(optimizers[0]) if optimizers else None)
            options.setdefault("scheduler", configs[0].scheduler if configs else None)
            options.setdefault("total_steps", _finite(getattr(trainer, "estimated_stepping_batches", None)))
            options.setdefault("steps_per_epoch", _steps_per_epoch(trainer))
            options.setdefault("start_step", int(trainer.global_step))
            self._last_step = int(trainer.global_step)
            self._loss = None
            self.run = tuitrain.attach(**options)

        # -- the loop ----------------------------------------------------------------------
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            # Lightning runs training_step and backward inside optimizer.step(closure), so attach's step
            # pre-hook fires before this step's gradients exist; take layer health's gradient norms here,
            # after backward and before clipping, as attach documents them.
            if self.run is not None:
                self.run.gradients_ready()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            run = self.run
            if run is None or run.status is not None:
                return
            loss = _loss_of(outputs)
            if loss is not None:
                if getattr(loss, "requires_grad", False):
                    loss = loss.detach()  # Lightning's own outputs come detached: no second copy of those
                self._loss = loss if self._loss is None else self._loss + loss  # on its device: no sync
            step = int(trainer.global_step)
            if step == self._last_step:
                return  # a micro-batch of gradient accumulation: no optimizer step yet
            self._last_step = step
            loss, self._loss = self._loss, None
            run.step(loss=loss)  # a dashboard's pause blocks here, between two optimizer steps
            if run.should_stop:
                trainer.should_stop = True

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            run = self.run
            if run is None or run.status is not None or trainer.sanity_checking:
                return
            metrics = _callback_metrics(trainer.callback_metrics)
            if metrics:
                run.evaluate(**metrics)

        # -- the end -----------------------------------------------------------------------
        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self.run is not None:
                self.run.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if self.run is None or self.run.status is not None:
                return
            if isinstance(exception, KeyboardInterrupt):
                self.run.close("interrupted", "KeyboardInterrupt (Ctrl-C)")
            else:
                self.run.failed(exception)

    TuitrainCallback.__module__ = __name__
    return TuitrainCallback


def _torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer itself (a LightningOptimizer wraps it as ._optimizer), whose step hooks fire."""
    inner = getattr(optimizer, "_optimizer", None)
    return inner if inner is not None else optimizer


def _finite(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number > 0 else None


def _steps_per_epoch(trainer: Any) -> int | None:
    batches = _finite(getattr(trainer, "num_training_batches", None))
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
    return math.ceil(batches / accumulate) if batches else None


_made: dict[str, type] = {}


def callback_class(module: str, pip_name: str) -> type:
    """TuitrainCallback over the Lightning package `module`, made once."""
    if module not in _made:
        pl = require(module, pip_name, "tuitrain.integrations' Lightning callback")
        _made[module] = build(pl)
    return _made[module]


def __getattr__(name: str) -> Any:
    if name == "TuitrainCallback":
        return callback_class("lightning.pytorch", "lightning")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
