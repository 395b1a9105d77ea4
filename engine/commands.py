"""What comes in: commands from any thread, applied at the next step boundary.

Each command is answered by the engine with an event (see events.py), so
every intervention is on the record.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name = "command"


@dataclass(frozen=True)
class Pause(Command):
    name = "pause"


@dataclass(frozen=True)
class Resume(Command):
    name = "resume"


@dataclass(frozen=True)
class TogglePause(Command):
    """What the `p` key sends: the UI need not know the engine's state."""

    name = "toggle_pause"


@dataclass(frozen=True)
class SetLR(Command):
    """Set the LR now; becomes a multiplier on the schedule (DESIGN.md)."""

    lr: float
    name = "set_lr"


@dataclass(frozen=True)
class SaveCheckpoint(Command):
    name = "save"


@dataclass(frozen=True)
class Evaluate(Command):
    name = "evaluate"


@dataclass(frozen=True)
class Stop(Command):
    """Finish the step, evaluate, save, write the summary.

    `signal` is set when the stop comes from SIGINT/SIGTERM/SIGHUP; the run
    then ends as 'interrupted'.
    """

    reason: str = "user"
    signal: int | None = None
    name = "stop"


class CommandQueue:
    """Thread-safe inbox; the engine polls it once per optimizer step."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()

    def put(self, command: Command) -> None:
        self._queue.put(command)

    def pending(self) -> bool:
        return not self._queue.empty()

    def get_nowait(self) -> Command | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def get(self, timeout: float) -> Command | None:
        """Wait for a command (used while paused)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
