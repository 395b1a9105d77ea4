"""Seeding and RNG state capture, stored as plain tensors.

Checkpoints are loaded with weights_only=True, so every RNG state is kept
as tensors and numbers rather than the tuples/arrays the libraries return.
"""

from __future__ import annotations

import random
from typing import Any

import torch

try:  # numpy is optional; seeded and saved only when it is installed
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if _np is not None:
        _np.random.seed(seed % 2**32)


def capture_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss,
    }
    if _np is not None:
        kind, keys, pos, has_gauss, cached = _np.random.get_state()
        state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # different GPU count: restore what matches
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    internal = tuple(int(v) for v in state["python"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss"]))
    if _np is not None and "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype("uint32")
        _np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached"]))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends on (seed, epoch) alone, so resume can rebuild it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
