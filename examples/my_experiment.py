"""Four Gaussian blobs, 4-class MLP: an example of your own preset file.

Run it with:  tuitrain --preset ./my_experiment.py
"""

import torch
from torch import nn

from tuitrain.presets import Data

TASK = "classification"          # or "regression"
DESCRIPTION = "four Gaussian blobs, small MLP (4 classes)"
DEFAULTS = {"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 15}

CENTERS = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])


def blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points around the four centres; the label is the blob's index."""
    y = torch.randint(0, len(CENTERS), (n,), generator=gen)
    x = CENTERS[y] + 1.0 * torch.randn(n, 2, generator=gen)
    return x, y  # float32 inputs, int64 class labels


def make_data(seed: int) -> Data:
    """Called once per run with the run's seed: same seed, same data."""
    train = blobs(1600, torch.Generator().manual_seed(seed))
    val = blobs(400, torch.Generator().manual_seed(seed + 1))  # independent draw
    return Data(train=train, val=val)


def make_model() -> nn.Module:
    """Called once per run, after the engine has seeded torch."""
    return nn.Sequential(
        nn.Linear(2, 32), nn.ReLU(),
        nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, len(CENTERS)),
    )


# Optional: defaults to cross-entropy for classification, MSE for regression.
def make_loss() -> nn.Module:
    return nn.CrossEntropyLoss()
