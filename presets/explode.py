"""explode: a run that is meant to fail, to show the NaN guard and its hint.

Circles data, with SGD at a learning rate about a thousand times too high and
heavy momentum. Each update overshoots, the weights of the three layers grow
together, so the logits grow multiplicatively and the loss overflows to inf or
NaN within the first few dozen steps, for every seed. LeakyReLU instead of
ReLU on purpose: with ReLU all units can die after the first huge update,
which freezes the loss at a large but finite value instead of exploding.
"""

from __future__ import annotations

from torch import nn

from . import circles
from .base import Preset
from .models import mlp


def make_model() -> nn.Module:
    return mlp(2, 32, 2, depth=3, activation=nn.LeakyReLU)


PRESET = Preset(
    name="explode",
    description="circles, SGD at lr 10 with momentum: the loss goes NaN in epoch 1 (shows the NaN guard and hint)",
    task="classification",
    make_data=circles.make_data,
    make_model=make_model,
    defaults={"optimizer": "sgd", "lr": 10.0, "momentum": 0.9, "batch_size": 16, "epochs": 5},
)
