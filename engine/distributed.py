"""One run across torchrun's ranks: rank 0 decides at agreed steps, every rank applies the same at the same step.

The known failure of steering a group is a decision taken on rank 0 alone (a
stop, then a barrier the other ranks never reach). Here no rank decides alone:
at a *sync step*, agreed in advance, every rank makes the same two small
collectives — a broadcast_object_list from rank 0 of what happens next (the
commands it received, and the next sync step, chosen from its speed so that
syncs come about once per log interval) and an all_reduce of the losses since
the last sync (the record shows the group's mean). A command waits at most one
interval, and every rank applies it before its next optimizer step.

While paused, rank 0 broadcasts every log interval (its pending commands, or
none), so the other ranks wait in short collectives that never approach the
process group's timeout, however long the pause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .commands import Command


def group_size() -> int:
    """The world size of an initialized process group, else 1."""
    try:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except (RuntimeError, ValueError):
        pass
    return 1


@dataclass
class Decision:
    """What rank 0 decided at a sync: every rank receives the same."""

    commands: list[Command] = field(default_factory=list)
    next_step: int = 0
    """The step of the next sync (0 while paused: the next decision comes after the next interval)."""


class StepSync:
    """The group's step-boundary agreement. Per step: one integer compare (`due`)."""

    def __init__(self, first_step: int = 1) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.next_step = first_step
        self.leader = self.rank == 0

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def decide(self, decision: Decision | None) -> Decision:
        """Rank 0 passes its Decision, the others None; every rank returns rank 0's."""
        box: list[Any] = [decision if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        received = box[0]
        if not isinstance(received, Decision):
            raise RuntimeError("the group's decision did not arrive from rank 0")
        if received.next_step:
            self.next_step = received.next_step
        return received

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean over ranks of a same-shaped tensor (the losses since the last sync)."""
        total = values.detach().float().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world
