"""Thin adapters that attach a framework's trainer to tuitrain: Lightning and Hugging Face.

    from tuitrain.integrations.lightning import TuitrainCallback      # lightning.pytorch
    from tuitrain.integrations.pytorch_lightning import TuitrainCallback  # the older package name
    from tuitrain.integrations.hf import TuitrainCallback             # transformers.Trainer

Each callback is a `tuitrain.attach()` run underneath: it takes attach's keyword arguments and
finds the model, optimizer, scheduler and step count in the trainer itself.

Why the class is made on first use: a callback must subclass the framework's own base class, but
`import tuitrain.integrations.lightning` must work where Lightning is not installed (tuitrain
never depends on it). So each module defines the class inside a function, called by the module's
`__getattr__` when `TuitrainCallback` is first asked for; without the framework that lookup raises
ImportError with the pip line to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, pip_name: str, adapter: str) -> ModuleType:
    """The framework's module, or ImportError with the one line that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{adapter} needs {pip_name}: pip install {pip_name}") from exc
