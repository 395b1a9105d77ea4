"""The Lightning callback for the older `pytorch_lightning` package name (its Trainer wants its own Callback).

    from tuitrain.integrations.pytorch_lightning import TuitrainCallback
    trainer = pytorch_lightning.Trainer(callbacks=[TuitrainCallback()])

Everything else is tuitrain.integrations.lightning's.
"""

from __future__ import annotations

from typing import Any

from .lightning import callback_class

__all__ = ["TuitrainCallback"]  # noqa: F822 - made by the module's __getattr__


def __getattr__(name: str) -> Any:
    if name == "TuitrainCallback":
        return callback_class("pytorch_lightning", "pytorch-lightning")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
