"""shapes64: 64x64 colour images of six shapes, a ResNet-18-style CNN: the preset worth a GPU.

The other presets finish in seconds on a laptop's CPU; this one is sized so that a
data-centre GPU has real work at every step (about 11 M parameters, batch 256,
3x64x64 inputs), which is where throughput, AMP and the dashboard's cost are worth
measuring. The shapes are drawn in code from the seed, in colours and on
backgrounds that say nothing about the class; pixels are stored as uint8 (a
quarter of the memory and of the host-to-device copy) and the model's first
layer turns them into floats on the device. On a CPU a step takes seconds: try
it with `--max-steps 20`.
"""

from __future__ import annotations

import torch
from torch import nn

from ._data import split
from .base import Data, Preset
from .models import resnet18

SIZE = 64
"""Images are 3 x SIZE x SIZE."""
NAMES = ("circle", "square", "triangle", "ring", "cross", "diamond")
CLASSES = len(NAMES)
N_TRAIN, N_VAL = 12_800, 2_560
NOISE = 0.06
"""Std of the Gaussian pixel noise, on the 0..1 scale."""
MIN_RADIUS, MAX_RADIUS = 8.0, 22.0
CHUNK = 512
"""Images drawn at once: the masks of a chunk are a few MB, whatever n is."""


def _draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    r = MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * torch.rand(n, generator=gen)
    margin = 1.25 * r  # the diamond's reach; every shape lies whole inside the image
    span = (SIZE - 1) - 2 * margin
    cx = margin + span * torch.rand(n, generator=gen)
    cy = margin + span * torch.rand(n, generator=gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    background = 0.45 * torch.rand(n, 3, 1, 1, generator=gen)
    slope = 0.2 * (torch.rand(n, 2, generator=gen) - 0.5)
    colour = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=gen)
    noise = NOISE * torch.randn(n, 3, SIZE, SIZE, generator=gen)

    grid = torch.arange(SIZE, dtype=torch.float32)
    dx = grid.view(1, 1, SIZE) - cx.view(n, 1, 1)
    dy = grid.view(1, SIZE, 1) - cy.view(n, 1, 1)
    rr = r.view(n, 1, 1)
    d2 = dx**2 + dy**2
    t = (dy * flip.view(n, 1, 1) + rr) / (2 * rr)  # 0 at the triangle's apex, 1 at its base
    arm = 0.3 * rr
    masks = torch.stack([
        d2 <= rr**2,                                                    # circle
        (dx.abs() <= 0.886 * rr) & (dy.abs() <= 0.886 * rr),            # square of about the circle's area
        (t >= 0) & (t <= 1) & (dx.abs() <= t * rr * 1.15),              # triangle, up or down
        (d2 <= rr**2) & (d2 >= (0.6 * rr) ** 2),                        # ring
        ((dx.abs() <= arm) & (dy.abs() <= rr)) | ((dy.abs() <= arm) & (dx.abs() <= rr)),  # cross
        dx.abs() + dy.abs() <= 1.25 * rr,                               # diamond
    ], dim=1)  # (n, CLASSES, SIZE, SIZE)
    mask = masks[torch.arange(n), y].unsqueeze(1).float()  # (n, 1, SIZE, SIZE)
    ramp = (slope[:, 0].view(n, 1, 1) * dx + slope[:, 1].view(n, 1, 1) * dy) / SIZE
    image = (background + ramp.unsqueeze(1)) * (1 - mask) + colour * mask + noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), y


def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 3, SIZE, SIZE) as uint8 and their labels (indices into NAMES), drawn in chunks."""
    xs, ys = [], []
    for start in range(0, n, CHUNK):
        x, y = _draw(min(CHUNK, n - start), gen)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys).long()


def make_data(seed: int) -> Data:
    return split(sample, seed, N_TRAIN, N_VAL)


def make_model() -> nn.Module:
    return resnet18(3, CLASSES)


PRESET = Preset(
    name="shapes64",
    description="64x64 colour images of six shapes; ResNet-18-style CNN, 11M parameters, sized for a GPU "
                "(6 classes)",
    task="classification",
    make_data=make_data,
    make_model=make_model,
    defaults={"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "lr": 0.2,
              "batch_size": 256, "epochs": 15, "scheduler": "onecycle"},
)
