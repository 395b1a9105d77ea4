"""Tiny model builders shared by the built-in presets."""

from __future__ import annotations

from torch import nn


def mlp(
    in_features: int,
    hidden: int,
    out_features: int,
    depth: int = 2,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A plain MLP with `depth` hidden layers of width `hidden`.

    Small toy datasets need nothing fancier, and a Sequential keeps the model
    easy to print and inspect from the dashboard.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, not {depth}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
