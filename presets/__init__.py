"""Built-in presets and the loader for user presets."""

from .base import Data, Preset, Split, Task
from .loader import PresetError, load_preset, preset_name_for_rundir
from .registry import BUILTIN, builtin_names

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
