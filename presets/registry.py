"""The built-in presets, in the order `--list-presets` shows them.

Names and descriptions are a static table, so that `--list-presets` and a
mistyped name answer without importing torch (seconds); a preset's module,
and torch with it, is imported only when the preset is used.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Preset

#: name -> (module in this package, attribute, description). A test checks each row
#: against the Preset the module defines, so the table cannot drift from the code.
TABLE: dict[str, tuple[str, str, str]] = {
    "circles": ("circles", "PRESET", "two noisy concentric rings, 2-layer MLP (2 classes)"),
    "moons": ("moons", "PRESET", "two interleaving noisy half-moons, 2-layer MLP (2 classes)"),
    "spiral": ("spiral", "PRESET", "three interleaved noisy spirals, wider 2-layer MLP (3 classes)"),
    "xor": ("xor", "PRESET", "four noisy quadrants labelled by sign(x1*x2), 2-layer MLP (2 classes)"),
    "sine": ("sine", "PRESET", "y = sin(x) + noise on [-pi, pi], 2-layer tanh MLP (regression, MSE)"),
    "shapes": ("shapes", "PRESET",
               "noisy 20x20 grey circles, squares, triangles; small CNN, BatchNorm + Dropout (3 classes)"),
    "shapes-aug": ("shapes", "AUG_PRESET",
                   "shapes with random flips and shifts in training only (augmentation), same CNN (3 classes)"),
    "shapes64": ("shapes64", "PRESET",
                 "64x64 colour images of six shapes; ResNet-18-style CNN, 11M parameters, sized for a GPU "
                 "(6 classes)"),
    "charlm": ("charlm", "PRESET",
               "character-level tiny transformer (2 layers, causal attention) on Python's own docstrings"),
    "explode": ("explode", "PRESET",
                "circles, SGD at lr 10 with momentum: the loss goes NaN in epoch 1 (shows the NaN guard and hint)"),
    "overfit": ("overfit", "PRESET",
                "50 noisy points, 3x256 MLP, no weight decay: val loss turns up, early stopping (patience 10) "
                "ends it"),
}


class _Builtin(Mapping[str, "Preset"]):
    """name -> Preset; the preset's module is imported on first access."""

    def __getitem__(self, name: str) -> "Preset":
        module, attr, _ = TABLE[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    def __contains__(self, name: object) -> bool:
        return name in TABLE

    def __iter__(self) -> Iterator[str]:
        return iter(TABLE)

    def __len__(self) -> int:
        return len(TABLE)


BUILTIN: Mapping[str, "Preset"] = _Builtin()


def builtin_names() -> list[str]:
    """Names of the built-in presets in a stable order."""
    return list(TABLE)


def description(name: str) -> str:
    """A built-in preset's one-line description, without importing it."""
    return TABLE[name][2]


def closest_name(spec: str) -> str | None:
    """The built-in name a mistyped `spec` most likely meant ('cirles' -> 'circles'), if any."""
    found = difflib.get_close_matches(spec.strip().lower(), builtin_names(), n=1, cutoff=0.6)
    return found[0] if found else None
