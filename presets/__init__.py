"""Built-in presets and the loader for user presets.

The names are imported on first use (PEP 562), so that `tuitrain
--list-presets` and the registry's names and descriptions need no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BUILTIN",
    "Data",
    "Preset",
    "PresetError",
    "Split",
    "Task",
    "builtin_names",
    "load_preset",
    "preset_name_for_rundir",
]

_WHERE = {
    "Data": "base", "Preset": "base", "Split": "base", "Task": "base",
    "PresetError": "loader", "load_preset": "loader", "preset_name_for_rundir": "loader",
    "BUILTIN": "registry", "builtin_names": "registry",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
