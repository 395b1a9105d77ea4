"""circles: two noisy concentric rings, the quick 'does it learn at all' check."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import mlp

N_TRAIN, N_VAL = 2000, 500
NOISE = 0.1
INNER_RADIUS, OUTER_RADIUS = 0.5, 1.0


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 0 on the outer ring, 1 on the inner one; Gaussian noise on both coordinates."""
    y = torch.randperm(n, generator=gen) % 2
    angle = torch.rand(n, generator=gen) * (2 * math.pi)
    radius = torch.where(y == 1, INNER_RADIUS, OUTER_RADIUS)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    x = x + NOISE * torch.randn(n, 2, generator=gen)
    return x.float(), y.long()


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return mlp(2, 32, 2, depth=2)


PRESET = Preset(
    name="circles",
    description="two noisy concentric rings, 2-layer MLP (2 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults={"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 30},
)
