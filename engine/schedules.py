"""LR schedulers from torch.optim.lr_scheduler, and a preview of the plan.

Each scheduler is stepped at its natural granularity: per optimizer step
(onecycle, warmup-cosine), per epoch (step, cosine) or on the validation
loss (plateau). The preview runs the very same scheduler class on a
throwaway optimizer, so what the dashboard draws is what torch will do.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Literal

import torch
from torch.optim import lr_scheduler as sched

from .config import RunConfig

Granularity = Literal["none", "step", "epoch", "metric"]

GRANULARITY: dict[str, Granularity] = {
    "none": "none",
    "step": "epoch",
    "cosine": "epoch",
    "onecycle": "step",
    "warmup-cosine": "step",
    "plateau": "metric",
}


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    n = int(cfg.warmup) if cfg.warmup >= 1 else round(cfg.warmup * total_steps)
    return max(1, min(n, max(1, total_steps - 1)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig,
                    total_steps: int) -> Any | None:
    """The torch scheduler for cfg.scheduler, or None for a constant LR."""
    name = cfg.scheduler
    if name == "none":
        return None
    if name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(1, total_steps))
    if name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor,
                                       patience=cfg.plateau_patience)
    if name == "warmup-cosine":
        warm = warmup_steps(cfg, total_steps)
        return sched.SequentialLR(optimizer, [
            sched.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warm),
            sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warm)),
        ], milestones=[warm])
    raise ValueError(f"unknown scheduler {name!r}")


def planned_steps(scheduler: Any) -> int | None:
    """The last step a schedule with a fixed plan can take (onecycle, warmup-cosine), else None.

    Restored from a checkpoint, such a scheduler keeps the length it was built for
    (a run started with --max-steps plans for that many steps) and cannot step past it.
    """
    if isinstance(scheduler, sched.OneCycleLR):
        return int(scheduler.total_steps)
    if isinstance(scheduler, sched.SequentialLR):
        last = scheduler._schedulers[-1]
        if isinstance(last, sched.CosineAnnealingLR) and scheduler._milestones:
            return int(scheduler._milestones[-1] + last.T_max)
    return None


def scheduled_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _throwaway_like(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Same optimizer class and hyperparameters (OneCycle cycles its momentum/betas)."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    skip = {"params", "fused", "foreach", "capturable", "differentiable"}
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted and k not in skip}
    return type(optimizer)([torch.zeros(1, requires_grad=True)], **defaults)


def preview(cfg: RunConfig, optimizer: torch.optim.Optimizer, *, state: dict[str, Any] | None,
            lr_now: float, step: int, epoch: int, steps_per_epoch: int, total_steps: int,
            multiplier: float, max_points: int = 2000) -> tuple[list[int], list[float]]:
    """The planned LR (times `multiplier`) for optimizer steps step+1 .. total_steps.

    A point (s, lr) is the LR that optimizer step s (1-based, as in
    metrics.jsonl) will use. `state` is the live scheduler's state_dict and
    `lr_now` its current un-multiplied LR, so the plan continues from where
    the run is. Per-step plans are thinned to about `max_points` points.
    """
    kind = GRANULARITY[cfg.scheduler]
    first = step + 1
    if kind in ("none", "metric") or first > total_steps:
        # A plateau scheduler reacts to future losses: its honest forecast is "flat".
        last = max(first, total_steps)
        return [first, last], [lr_now * multiplier] * 2
    opt = _throwaway_like(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = build_scheduler(opt, cfg, total_steps)
        assert scheduler is not None
        if state is not None:
            scheduler.load_state_dict(state)
            for group in opt.param_groups:
                group["lr"] = lr_now
        steps: list[int] = [first]
        lrs: list[float] = [lr_now * multiplier]
        if kind == "step":
            stride = max(1, -(-(total_steps - first) // max_points))
            for s in range(first + 1, total_steps + 1):
                scheduler.step()
                if (s - first) % stride == 0 or s == total_steps:
                    steps.append(s)
                    lrs.append(scheduled_lr(opt) * multiplier)
        else:  # per epoch: flat inside an epoch, a new level at each boundary
            lr = lr_now
            start = first
            steps, lrs = [], []
            for e in range(epoch, cfg.epochs):
                end = min((e + 1) * steps_per_epoch, total_steps)
                if end >= start:
                    steps += [start, end]
                    lrs += [lr * multiplier] * 2
                if end >= total_steps:
                    break
                scheduler.step()
                lr = scheduled_lr(opt)
                start = end + 1
    return steps, lrs
