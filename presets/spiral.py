"""spiral: three interleaved spiral arms, a harder non-linear boundary."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import mlp

N_TRAIN, N_VAL = 3000, 600
CLASSES = 3
TURNS = 1.5
NOISE = 0.2
"""Angular noise in radians."""


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Arm k starts at angle 2*pi*k/3 and winds TURNS times outwards (radius 0..1)."""
    y = torch.randperm(n, generator=gen) % CLASSES
    r = torch.rand(n, generator=gen)
    theta = (
        y.float() * (2 * math.pi / CLASSES)
        + r * (2 * math.pi * TURNS)
        + NOISE * torch.randn(n, generator=gen)
    )
    x = torch.stack([r * torch.sin(theta), r * torch.cos(theta)], dim=1)
    return x.float(), y.long()


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return mlp(2, 64, CLASSES, depth=2)


PRESET = Preset(
    name="spiral",
    description="three interleaved noisy spirals, wider 2-layer MLP (3 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults={"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 40, "scheduler": "cosine"},
)
