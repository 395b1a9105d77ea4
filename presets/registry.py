"""The built-in presets, in the order `--list-presets` shows them."""

from __future__ import annotations

from . import charlm, circles, explode, moons, overfit, shapes, sine, spiral, xor
from .base import Preset

BUILTIN: dict[str, Preset] = {
    p.name: p
    for p in (
        circles.PRESET, moons.PRESET, spiral.PRESET, xor.PRESET, sine.PRESET,
        shapes.PRESET, shapes.AUG_PRESET, charlm.PRESET, explode.PRESET, overfit.PRESET,
    )
}


def builtin_names() -> list[str]:
    """Names of the built-in presets in a stable order."""
    return list(BUILTIN)
