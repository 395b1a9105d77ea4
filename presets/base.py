"""What a preset is: data, model, loss, task kind and default hyperparameters.

A preset is deliberately a plain dataclass of factories, so a user's own
experiment file can build one without learning any framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

import torch
from torch import nn
from torch.utils.data import Dataset

Task = Literal["classification", "regression"]

#: One split: a pair of tensors (inputs, targets) for fast in-memory batching,
#: or any map-style torch Dataset (served through a DataLoader).
Split = Union[tuple[torch.Tensor, torch.Tensor], Dataset]


@dataclass(frozen=True)
class Data:
    """Training and validation splits built by a preset."""

    train: Split
    val: Split


@dataclass(frozen=True)
class Preset:
    """One experiment definition.

    The engine seeds every RNG before calling the factories, so a preset that
    draws its data with the global torch RNG (or the seed it is given) is
    reproducible.
    """

    name: str
    description: str
    task: Task
    make_data: Callable[[int], Data]
    """Build the splits; receives the run's seed."""
    make_model: Callable[[], nn.Module]
    make_loss: Callable[[], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None
    """Defaults to cross-entropy for classification and MSE for regression."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """RunConfig fields this preset trains best with (epochs, lr, batch_size, ...)."""
    drop_last: bool = False
    """Drop the last short batch of each epoch (steps per epoch = floor(N/B))."""
    metric: str | None = None
    """Name of the validation metric; defaults to 'acc' (classification) or 'mae' (regression)."""
    on_eval: Callable[[nn.Module, torch.device], str | None] | None = None
    """Called after each end-of-epoch evaluation with the model in eval mode under
    inference_mode; returned text goes to the event log (charlm samples a line)."""
    perplexity: bool = False
    """Report exp(loss) as train_ppl / val_ppl (language models)."""
    boundary: bool | None = None
    """Draw the decision boundary; None = auto (classification on 2-D tensor inputs)."""

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"preset {self.name!r}: task must be 'classification' or 'regression', not {self.task!r}")
        if not callable(self.make_data) or not callable(self.make_model):
            raise ValueError(f"preset {self.name!r}: make_data and make_model must be callables")

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.make_loss is not None:
            return self.make_loss()
        return nn.CrossEntropyLoss() if self.task == "classification" else nn.MSELoss()

    @property
    def metric_name(self) -> str:
        return self.metric or ("acc" if self.task == "classification" else "mae")
