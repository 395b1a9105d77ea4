"""xor: the classic problem a linear model cannot solve."""

from __future__ import annotations

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import mlp

N_TRAIN, N_VAL = 2000, 500
NOISE = 0.05


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform points in [-1, 1]^2, class 1 where x1*x2 > 0, then jittered."""
    clean = torch.rand(n, 2, generator=gen) * 2 - 1
    y = (clean[:, 0] * clean[:, 1] > 0).long()
    x = clean + NOISE * torch.randn(n, 2, generator=gen)
    return x.float(), y


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return mlp(2, 16, 2, depth=2)


PRESET = Preset(
    name="xor",
    description="four noisy quadrants labelled by sign(x1*x2), 2-layer MLP (2 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults={"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 20},
)
