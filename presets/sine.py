"""sine: 1-D regression, to show a loss curve and MAE instead of accuracy."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import mlp

N_TRAIN, N_VAL = 1000, 200
NOISE = 0.1


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x uniform on [-pi, pi], y = sin(x) + Gaussian noise; both shaped (n, 1)."""
    x = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    y = torch.sin(x) + NOISE * torch.randn(n, 1, generator=gen)
    return x.float(), y.float()


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return mlp(1, 32, 1, depth=2, activation=nn.Tanh)


PRESET = Preset(
    name="sine",
    description="y = sin(x) + noise on [-pi, pi], 2-layer tanh MLP (regression, MSE)",
    task="regression",
    make_data=make_data,
    make_model=make_model,
    make_loss=nn.MSELoss,
    defaults={"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 30},
    metric="mae",
)
