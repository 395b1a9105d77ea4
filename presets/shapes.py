"""shapes: tiny grey images of circles, squares and triangles, a small CNN.

The first image preset: convolutions, BatchNorm and Dropout, so the
difference between train and eval mode is real (running statistics, dropped
units). `shapes-aug` adds random flips and shifts that only run in training.
"""

from __future__ import annotations

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import RandomFlipShift, small_cnn

SIZE = 20
"""Images are SIZE x SIZE pixels, one channel."""
CLASSES = 3
N_TRAIN, N_VAL = 3000, 600
NOISE = 0.25
"""Std of the Gaussian pixel noise (shapes have brightness 0.6..1.0 on a 0 background)."""
MIN_RADIUS, MAX_RADIUS = 3.0, 7.0
"""Half the extent of a shape, in pixels."""
NAMES = ("circle", "square", "triangle")


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n images (n, 1, SIZE, SIZE) with labels 0 circle, 1 square, 2 triangle.

    Shapes are drawn as masks on a pixel grid, all at once: random radius,
    centre (fully inside the image), brightness, and an up- or down-pointing
    triangle; then Gaussian noise on every pixel.
    """
    y = torch.randperm(n, generator=gen) % CLASSES
    r = MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * torch.rand(n, generator=gen)
    lo, span = r, (SIZE - 1) - 2 * r  # centre in [r, SIZE-1-r]
    cx = lo + span * torch.rand(n, generator=gen)
    cy = lo + span * torch.rand(n, generator=gen)
    brightness = 0.6 + 0.4 * torch.rand(n, generator=gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    noise = NOISE * torch.randn(n, 1, SIZE, SIZE, generator=gen)

    grid = torch.arange(SIZE, dtype=torch.float32)
    dx = grid.view(1, 1, SIZE) - cx.view(n, 1, 1)  # columns
    dy = grid.view(1, SIZE, 1) - cy.view(n, 1, 1)  # rows
    rr = r.view(n, 1, 1)
    circle = dx**2 + dy**2 <= rr**2
    # A square of about the circle's area, so brightness sums do not give the class away.
    half = 0.886 * rr
    square = (dx.abs() <= half) & (dy.abs() <= half)
    # Isosceles triangle with its apex at -r (or +r when flipped) and base at the other side.
    t = (dy * flip.view(n, 1, 1) + rr) / (2 * rr)  # 0 at the apex, 1 at the base
    triangle = (t >= 0) & (t <= 1) & (dx.abs() <= t * rr * 1.15)
    mask = torch.where((y == 0).view(n, 1, 1), circle, torch.where((y == 1).view(n, 1, 1), square, triangle))
    x = mask.float() * brightness.view(n, 1, 1)
    return (x.unsqueeze(1) + noise).float(), y.long()


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return small_cnn(1, CLASSES, SIZE)


def make_aug_model() -> nn.Module:
    return nn.Sequential(RandomFlipShift(max_shift=2), small_cnn(1, CLASSES, SIZE))


_DEFAULTS = {"optimizer": "adam", "lr": 0.005, "batch_size": 64, "epochs": 12, "scheduler": "cosine"}

PRESET = Preset(
    name="shapes",
    description=f"noisy {SIZE}x{SIZE} grey circles, squares, triangles; small CNN, BatchNorm + Dropout (3 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults=dict(_DEFAULTS),
)

AUG_PRESET = Preset(
    name="shapes-aug",
    description="shapes with random flips and shifts in training only (augmentation), same CNN (3 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_aug_model,
    defaults=dict(_DEFAULTS),
)
