"""The losses a user's loop passed to run.step() since the last flush, kept on their device.

Why packed: every kept loss is a tensor object the garbage collector tracks, and thousands of them
alive between two flushes push Python's collector through its older generations, each pass
walking the whole heap. In a framework's process (Lightning, transformers: a large heap) that cost
+8% a step in a measurement (tests/perf/bench_attach.py explains it). So every PACK steps the loose
tensors are stacked, on their device and without a host copy, into one tensor: at most PACK
objects are alive, and the collector's count stays level.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: Steps whose loose loss tensors are stacked into one: few enough objects alive, one stack per PACK steps.
PACK = 64


class LossWindow:
    """Each step's loss (a tensor on its device, a number, or None) until the flush copies them at once."""

    def __init__(self) -> None:
        self._packed: list[torch.Tensor] = []
        self._packed_steps = 0
        self._loose: list[Any] = []

    def __len__(self) -> int:
        return self._packed_steps + len(self._loose)

    def add(self, loss: Any) -> None:
        """One step's loss; called on every step, so it does one append and, every PACK steps, one stack.
        Detached only when it carries a graph (a framework's loss often arrives detached already)."""
        loose = self._loose
        loose.append(loss.detach() if isinstance(loss, torch.Tensor) and loss.requires_grad else loss)
        if len(loose) >= PACK:
            self._pack()

    def _pack(self) -> None:
        loose = self._loose
        if not all(isinstance(v, torch.Tensor) for v in loose):
            return  # numbers are not tracked objects; such a window stays as it is
        try:
            stacked = per_step(loose)
        except RuntimeError:  # tensors on different devices: left loose, copied one by one at the flush
            return
        self._packed.append(stacked)
        self._packed_steps += len(loose)
        self._loose = []

    def clear(self) -> None:
        """A fresh window, after the flush."""
        self._packed, self._packed_steps, self._loose = [], 0, []

    def host(self) -> list[float]:
        """Every step's loss as a float, in one host copy of the tensors (one sync per flush, not per step)."""
        packed, loose = self._packed, self._loose
        tensors = [v for v in loose if isinstance(v, torch.Tensor)]
        if _one_device(packed + tensors):
            parts = packed + ([per_step(tensors)] if tensors else [])
            copied: list[float] = torch.cat(parts).tolist() if parts else []
        else:  # the model moved between devices within one window: rare, so one copy per part
            copied = [x for p in packed for x in p.tolist()] + [t.float().mean().item() for t in tensors]
        if len(tensors) == len(loose):
            return copied
        head = len(copied) - len(tensors)  # the packed steps
        rest = iter(copied[head:])
        return copied[:head] + [next(rest) if isinstance(v, torch.Tensor) else number(v) for v in loose]

    def stacked(self, default: torch.device) -> torch.Tensor | None:
        """Every step's loss as one 1-D float tensor (for the group's all_reduce), no host copy: on the
        losses' own device, or `default` when no loss was a tensor."""
        packed, loose = self._packed, self._loose
        if not packed and not loose:
            return None
        device = next((v.device for v in [*packed, *loose] if isinstance(v, torch.Tensor)), default)
        parts = [p.to(device) for p in packed]
        if loose:
            parts.append(per_step([v.to(device) if isinstance(v, torch.Tensor)
                                   else torch.tensor(number(v), device=device) for v in loose]))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _one_device(tensors: list[torch.Tensor]) -> bool:
    return len({t.device for t in tensors}) <= 1


def per_step(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One float per step's loss tensor (the mean of a loss that is not a scalar), in one stack: the
    common case, scalars of one shape and dtype, costs no Python call per step."""
    try:
        stacked = torch.stack(tensors)
    except RuntimeError:
        if not _one_device(tensors):
            raise
        stacked = torch.stack([t.float().mean() for t in tensors])  # losses of different shapes
    if stacked.dim() > 1:
        stacked = stacked.flatten(1).float().mean(1)
    return stacked.float()


def number(value: Any) -> float:
    """A loss that is not a tensor as a float: NaN for None or anything that is not a number."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        return value.detach().float().mean().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
