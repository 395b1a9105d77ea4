"""Batches for the loop: fast device slicing for tensors, a DataLoader otherwise.

For in-memory tensor data, a DataLoader indexes one sample at a time and
collates in Python, which costs more than the whole step of a small model.
Here each epoch's permutation is applied once on the device and batches are
views of the shuffled copy. The order depends on (seed, epoch) only, so a
resumed run rebuilds it and starts at the saved batch.

Under torchrun each rank takes its own shard of every epoch, with
DistributedSampler's semantics: the epoch's order (the same on every rank),
padded by repeating its start to a multiple of the world size when training
(so every rank has the same number of steps), then every world-th sample from
the rank's own offset. Evaluation shards are not padded: their sums are added
over ranks, so each sample counts once.
"""

from __future__ import annotations

import math
from typing import Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import workers
from .seeding import epoch_generator

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    size: int
    """Number of samples."""
    batches_per_epoch: int

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, beginning with batch index `start`."""
        ...


def count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


Shard = tuple[int, int]
"""(rank, world size): which share of every epoch this process trains on; (0, 1) is all of it."""


def shard_size(n: int, shard: Shard, pad: bool) -> int:
    rank, world = shard
    if pad:
        return math.ceil(n / world)
    return len(range(rank, n, world))


def shard_order(order: torch.Tensor, shard: Shard, pad: bool) -> torch.Tensor:
    """This rank's indices of an epoch's order (DistributedSampler's split)."""
    rank, world = shard
    if world == 1:
        return order
    if pad:
        total = math.ceil(len(order) / world) * world
        if total > len(order):
            repeats = math.ceil((total - len(order)) / max(len(order), 1))
            order = torch.cat([order, order.repeat(repeats)[: total - len(order)]])
    return order[rank::world]


#: Batches split off at a time (see TensorBatches.epoch).
SPLIT_CHUNK = 1024


class TensorBatches:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
                 seed: int, shuffle: bool = True, drop_last: bool = False, shard: Shard = (0, 1)) -> None:
        if len(x) != len(y):
            raise ValueError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        self.size = len(x)
        self.shard = shard
        self.pad = shuffle  # training shards are padded to the same length on every rank
        if shard[1] > 1 and not shuffle:  # a fixed order: this rank's shard, taken once
            mine = shard_order(torch.arange(self.size), shard, pad=False)
            x, y = x[mine], y[mine]
        self.x = x.to(device)
        self.y = y.to(device)
        self.shard_size = shard_size(self.size, shard, self.pad)
        # A batch larger than the split is the whole split (sliced with a huge size, torch's
        # int64 index arithmetic would overflow); the count below still uses the size asked for.
        self.batch_size = min(batch_size, max(self.shard_size, 1))
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = count_batches(self.shard_size, batch_size, drop_last)
        self.device = device

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        x, y = self.x, self.y
        if self.shuffle:
            order = torch.randperm(self.size, generator=epoch_generator(self.seed, epoch))
            order = shard_order(order, self.shard, pad=True).to(self.device)
            x, y = x[order], y[order]
        # split() makes many batch views in one call, cheaper than slicing per step; a chunk
        # at a time, since a view costs ~1 KB (a million of them at batch size 1 is a GB).
        bs, chunk = self.batch_size, SPLIT_CHUNK
        for c in range(start - start % chunk, self.batches_per_epoch, chunk):
            xs, ys = x[c * bs:(c + chunk) * bs].split(bs), y[c * bs:(c + chunk) * bs].split(bs)
            for i in range(max(start - c, 0), min(len(xs), self.batches_per_epoch - c)):
                yield xs[i], ys[i]


class LoaderBatches:
    """Any map-style Dataset of (input, target) pairs, through a DataLoader."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, seed: int,
                 shuffle: bool = True, drop_last: bool = False, num_workers: int = 0,
                 shard: Shard = (0, 1)) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.shard = shard
        self.shard_size = shard_size(self.size, shard, pad=shuffle)
        self.batch_size = min(batch_size, max(self.shard_size, 1))  # as in TensorBatches
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.device = device
        self.pin = device.type == "cuda"
        self.batches_per_epoch = count_batches(self.shard_size, batch_size, drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=epoch_generator(self.seed, epoch))
        else:
            order = torch.arange(self.size)
        order = shard_order(order, self.shard, pad=self.shuffle)
        indices = order[start * self.batch_size:].tolist()
        # Its own generator: a DataLoader otherwise draws worker seeds from the
        # global RNG, which would shift dropout masks after a resume.
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices,
                            drop_last=self.drop_last, num_workers=self.num_workers,
                            pin_memory=self.pin, generator=epoch_generator(self.seed + 1, epoch),
                            worker_init_fn=_worker_init if self.num_workers else None)
        for x, y in loader:
            yield (x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin))


def _worker_init(worker_id: int) -> None:
    """In each DataLoader worker, first: let go of the run's control socket and files (engine/workers.py),
    so that a worker outliving a killed run can neither make it look live nor hold its files."""
    workers.close_inherited()


def make_batches(split: object, batch_size: int, device: torch.device, seed: int, *,
                 shuffle: bool, drop_last: bool = False, num_workers: int = 0, shard: Shard = (0, 1)) -> Batches:
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        return TensorBatches(split[0], split[1], batch_size, device, seed, shuffle, drop_last, shard)
    if isinstance(split, TensorDataset) and len(split.tensors) == 2:
        return TensorBatches(split.tensors[0], split.tensors[1], batch_size, device, seed, shuffle, drop_last, shard)
    if isinstance(split, Dataset) and hasattr(split, "__len__"):
        return LoaderBatches(split, batch_size, device, seed, shuffle, drop_last, num_workers, shard)
    raise TypeError("a data split must be a pair of tensors (inputs, targets) or a map-style torch Dataset, "
                    f"got {type(split).__name__}")


def check_data(data: object, classification: bool) -> None:
    """Check make_data's result once, before training, in the user's terms (a ValueError).

    What would otherwise surface deep in the loop as an AttributeError or a torch
    dtype error: a result that is not Data, a split that is not (inputs, targets),
    inputs and targets of different lengths, class labels that are not integers
    (for tensor splits; a Dataset's items are read only by the DataLoader).
    """
    if not (hasattr(data, "train") and hasattr(data, "val")):
        raise ValueError(f"make_data(seed) returned a {type(data).__name__}, not tuitrain.presets.Data: "
                         "return Data(train=(inputs, targets), val=(inputs, targets))")
    for name in ("train", "val"):
        _check_split(getattr(data, name), name, classification)


def _check_split(split: object, name: str, classification: bool) -> None:
    if isinstance(split, TensorDataset) and len(split.tensors) == 2:
        split = split.tensors
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        x, y = split
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(f"the {name} split's {'inputs' if x.dim() == 0 else 'targets'} are a single number: "
                             "give one row per sample (shape [N, ...])")
        if len(x) != len(y):
            raise ValueError(f"the {name} split has {len(x)} inputs but {len(y)} targets: one target per input")
        target = y
    elif isinstance(split, Dataset) and hasattr(split, "__len__"):
        return  # its items are the user's code, read by the DataLoader (not here: no extra calls into it)
    else:
        raise ValueError(f"the {name} split must be a pair of tensors (inputs, targets) or a map-style torch "
                         f"Dataset, got {type(split).__name__}"
                         + (f" of {len(split)} items" if isinstance(split, (tuple, list)) else ""))
    if classification:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            shown = str(target.dtype).removeprefix("torch.")
            raise ValueError(f"the {name} split's targets are {shown}, but classification needs integer class "
                             "indices (int64): use y.long(), or TASK = 'regression' for numeric targets")


def nonfinite_data(batches: object, split: str = "training") -> str | None:
    """'the training inputs hold 2 non-finite values (1 NaN, 1 Inf)', or None.

    Called once, when the NaN guard fires, so that a NaN that came with the
    data is not taken for a learning-rate problem. Only in-memory tensors are
    scanned (a Dataset may be large or lazy).
    """
    if not isinstance(batches, TensorBatches):
        return None
    notes = []
    for what, t in (("inputs", batches.x), ("targets", batches.y)):
        if not t.is_floating_point() and not t.is_complex():
            continue
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        if nan or inf:
            parts = ", ".join(p for p in (nan and f"{nan} NaN", inf and f"{inf} Inf") if p)
            notes.append(f"the {split} {what} hold {nan + inf} non-finite value{'s' if nan + inf > 1 else ''} "
                         f"({parts})")
    return "; ".join(notes) or None
