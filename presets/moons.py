"""moons: two interleaving half-moons; the boundary is curved but not closed."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import mlp

N_TRAIN, N_VAL = 2000, 500
NOISE = 0.15


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper moon is class 0, the lower shifted moon class 1 (as in sklearn's make_moons)."""
    y = torch.randperm(n, generator=gen) % 2
    t = torch.rand(n, generator=gen) * math.pi
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where((y == 1).unsqueeze(1), lower, upper)
    x = x + NOISE * torch.randn(n, 2, generator=gen)
    return x.float(), y.long()


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return mlp(2, 32, 2, depth=2)


PRESET = Preset(
    name="moons",
    description="two interleaving noisy half-moons, 2-layer MLP (2 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults={"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 20},
)
