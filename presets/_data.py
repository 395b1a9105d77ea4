"""Helpers for generating toy datasets deterministically from a seed."""

from __future__ import annotations

from typing import Callable

import torch

from .base import Data

#: Draws n samples with the given generator -> (inputs, targets).
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

# Fixed offsets so the train and val splits come from different streams of the
# same seed (and never from the global RNG).
_TRAIN_STREAM = 0
_VAL_STREAM = 1_000_003


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A local generator, so data never depends on (or disturbs) the global RNG."""
    return torch.Generator().manual_seed((int(seed) * 2_654_435_761 + stream) % (2**63 - 1))


def split(sample: Sampler, seed: int, n_train: int, n_val: int) -> Data:
    """Draw train and val independently from two generator streams."""
    train = sample(n_train, generator(seed, _TRAIN_STREAM))
    val = sample(n_val, generator(seed, _VAL_STREAM))
    return Data(train=train, val=val)
