"""One run across torchrun's ranks: rank 0 decides at agreed steps, every rank applies the same at the same step.

The known failure of steering a group is a decision taken on rank 0 alone (a
stop, then a barrier the other ranks never reach). Here no rank decides alone:
at a *sync step*, agreed in advance, every rank makes the same two small
collectives — a broadcast from rank 0 of what happens next (the
commands it received, and the next sync step, chosen from its speed so that
syncs come about once per log interval) and an all_reduce of the losses since
the last sync (the record shows the group's mean). A command waits at most one
interval, and every rank applies it before its next optimizer step.

While paused, rank 0 broadcasts every log interval (its pending commands, or
none), so the other ranks wait in short collectives that never approach the
process group's timeout, however long the pause.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .commands import Command


def _group() -> tuple[int, int]:
    """(rank, world size) of an initialized process group, else (0, 1)."""
    try:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except (RuntimeError, ValueError):
        pass
    return 0, 1


def group_size() -> int:
    """The world size of an initialized process group, else 1."""
    return _group()[1]


def group_rank() -> int:
    """This process's rank in an initialized process group, else 0."""
    return _group()[0]


#: The store key of a rank under which a collective failed (torchrun's store outlives every rank).
SAW_FAILURE = "tuitrain/saw-failure/{}"


def _store() -> Any:
    """The process group's store with a one-second timeout (the group is broken: never wait long), or None."""
    try:
        store = dist.distributed_c10d._get_default_store()  # the store init_process_group met in
        store.set_timeout(timedelta(seconds=1))
        return store
    except Exception:  # noqa: BLE001 - no group, or a torch that keeps it elsewhere: nothing to ask
        return None


def _wire_device() -> torch.device:
    """Where a collective's tensors must live: the current GPU under NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(obj: Any, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)


def _decode(data: torch.Tensor, size: int) -> Any:
    # bytes(list) rather than torch's object collectives, whose tensor-to-bytes step needs numpy (not a
    # dependency here: without it, every object collective raised). The objects are a few KB at most.
    return pickle.loads(bytes(data[:size].cpu().tolist()))  # noqa: S301 - the group's own ranks


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the others pass anything; rank 0's is returned everywhere)."""
    device = _wire_device()
    leader = dist.get_rank() == 0
    data = _encode(obj, device) if leader else torch.empty(0, dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    n = int(size.item())
    if not leader:
        data = torch.empty(n, dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    return obj if leader else _decode(data, n)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    device = _wire_device()
    world = dist.get_world_size()
    data = _encode(obj, device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(counts), dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [_decode(t, n) for t, n in zip(out, counts)]


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
        self._window = (time.perf_counter(), first_step - 1, 1)  # (time, step, gap) at the last plan

    def plan(self, step: int, interval: float) -> int:
        """Rank 0: the step of the next sync, about `interval` seconds ahead at the speed since the last."""
        now = time.perf_counter()
        t0, step0, gap = self._window
        rate = (step - step0) / max(now - t0, 1e-9)
        gap = max(1, min(int(rate * interval), gap * 4, 100_000))  # grows by at most 4x a time
        self._window = (now, step, gap)
        return step + gap

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def decide(self, decision: Decision | None) -> Decision:
        """Rank 0 passes its Decision, the others None; every rank returns rank 0's."""
        received = broadcast_object(decision if self.leader else None)
        if not isinstance(received, Decision):
            raise RuntimeError("the group's decision did not arrive from rank 0")
        if received.next_step:
            self.next_step = received.next_step
        return received

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (an evaluation's sums and counts)."""
        total = values.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True on every rank only if it is true on every rank (--on-nan skip: one rank's NaN skips on all)."""
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def barrier(self) -> None:
        """Every rank got here (rank 0 finished what the others are about to read)."""
        dist.barrier()

    def gather_tensor(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's same-shaped tensor, stacked in rank order (world, ...), on every rank."""
        out = [torch.empty_like(values) for _ in range(self.world)]
        dist.all_gather(out, values.contiguous())
        return torch.stack(out)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (a checkpoint's per-rank RNG state)."""
        return all_gather_objects(obj)

    def saw_failure(self) -> None:
        """Say, in the group's store, that a collective failed under this rank: it went on running,
        so it is not the rank that died (see `saw_failure_of`). Best effort, within a second."""
        store = _store()
        if store is not None:
            with contextlib.suppress(Exception):
                store.set(SAW_FAILURE.format(self.rank), "1")

    def saw_failure_of(self, ranks: list[int]) -> set[int]:
        """Which of `ranks` said `saw_failure()`: ranks that ended because another did, not first."""
        store = _store()
        if store is None:
            return set()
        with contextlib.suppress(Exception):
            return {r for r in ranks if store.check([SAW_FAILURE.format(r)])}
        return set()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean over ranks of a same-shaped tensor (the losses since the last sync)."""
        total = values.detach().float().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world
