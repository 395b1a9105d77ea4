"""overfit: a big MLP memorises a few noisy points; early stopping catches it.

Fifty training points of the circles geometry with heavy noise and some
flipped labels, against a thousand clean-ish validation points. The training
loss keeps falling towards zero while the validation loss turns up after a
few dozen epochs; with patience set, the run stops early and best.pt holds
the epoch before it went wrong.
"""

from __future__ import annotations

import torch
from torch import nn

from . import circles
from ._data import split
from .base import Data, Preset
from .models import mlp

N_TRAIN, N_VAL = 50, 1000
EXTRA_NOISE = 0.15
"""Added to circles' own noise (0.1), so the two rings overlap."""
FLIP = 0.1
"""Fraction of labels flipped: noise the model can only memorise, not learn."""


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = circles.sample(n, gen)
    x = x + EXTRA_NOISE * torch.randn(n, 2, generator=gen)
    flip = torch.rand(n, generator=gen) < FLIP
    return x, torch.where(flip, 1 - y, y)


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return mlp(2, 256, 2, depth=3)


PRESET = Preset(
    name="overfit",
    description="50 noisy points, 3x256 MLP, no weight decay: val loss turns up, early stopping (patience 10) ends it",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults={"optimizer": "adam", "lr": 0.003, "batch_size": 5, "epochs": 200, "weight_decay": 0.0,
              "patience": 10},
)
