"""What comes in: commands from any thread, applied at the next step boundary.

Each command is answered by the engine with an event (see events.py), so
every intervention is on the record.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Hashable


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


#: Commands waiting at most, over every source, and per watcher connection; a Stop never counts.
MAX_PENDING = 64
MAX_PER_SOURCE = 16

_CONTROL = {ord(c): " " for c in "\t\n\r\x0b\x0c"}


def clean_text(text: object, limit: int = 200) -> str:
    """One printable line from text someone else sent: no newlines, no escape sequences, bounded.

    Used for every string a client controls (a stop reason) before it is kept or printed, so
    a watcher can neither break a log line nor send escape codes to a terminal.
    """
    out = str(text).translate(_CONTROL)
    if not out.isprintable():
        out = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?" for ch in out)
    return out if len(out) <= limit else out[:limit - 1] + "\u2026"


LR_RULE = "the learning rate must be a positive finite number"
"""The one error text for a bad LR, wherever it is refused (the `l` dialog, the engine's rejected event)."""


def check_lr(lr: object) -> float:
    """The one rule for a learning rate, as a float: a real number (not a bool), finite, above zero.

    The dialog, the control socket's commands and the engine all ask this, so
    a value one of them accepts the others accept too. ValueError (LR_RULE,
    then what came) otherwise; an integer too big for a float is refused,
    never an OverflowError.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"{LR_RULE}, got {clean_text(repr(lr), 40)}")
    try:
        value = float(lr)
    except OverflowError:
        raise ValueError(f"{LR_RULE}, got an integer of {len(str(abs(lr)))} digits") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{LR_RULE}, got {value:g}")
    return value


def valid_lr(lr: object) -> bool:
    """check_lr without the message."""
    try:
        check_lr(lr)
    except ValueError:
        return False
    return True


class CommandQueue:
    """Thread-safe inbox; the engine polls it once per optimizer step.

    Bounded, so that a flood of commands can neither grow the process nor hold
    the run at a step boundary: at most MAX_PENDING commands wait (MAX_PER_SOURCE
    per watcher connection, the `source` of put()), one save, one evaluate and
    one valid set_lr at a time (a later set_lr replaces the waiting one). What
    is dropped is counted and answered by the engine with `rejected` events
    (take_dropped), one per kind and reason. A Stop jumps the queue, and a stop
    from a signal wins over a stop from a watcher.
    """

    def __init__(self, max_pending: int = MAX_PENDING, max_per_source: int = MAX_PER_SOURCE) -> None:
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[tuple[Command, Hashable | None]] = deque()
        self._stop: Stop | None = None
        self._per_source: dict[Hashable, int] = {}
        self._dropped: dict[tuple[str, str], int] = {}
        self._any = False
        """Something to take or to report (read without the lock, once per step)."""
        self._signal_stop: Stop | None = None

    def put(self, command: Command, source: Hashable | None = None) -> bool:
        """Queue a command; False if it was dropped (it is then answered by a `rejected` event)."""
        with self._cond:
            accepted = self._put(command, source)
            self._any = True
            self._cond.notify()
            return accepted

    def _put(self, command: Command, source: Hashable | None) -> bool:
        if isinstance(command, Stop):
            if self._stop is None or (command.signal is not None and self._stop.signal is None):
                self._stop = command
                return True
            return self._drop(command, "the run is already stopping")
        if isinstance(command, (SaveCheckpoint, Evaluate)) and any(type(c) is type(command) for c, _ in self._items):
            return self._drop(command, f"a {command.name} is already waiting for the next step")
        if isinstance(command, SetLR) and valid_lr(command.lr):
            for i, (waiting, owner) in enumerate(self._items):
                if isinstance(waiting, SetLR) and valid_lr(waiting.lr):
                    self._items[i] = (command, source)  # the newest value, in the older one's place
                    self._count(owner, -1)
                    self._count(source, +1)
                    self._drop(waiting, "replaced by a later set_lr before it was applied")
                    return True
        if len(self._items) >= self.max_pending:
            return self._drop(command, f"too many commands waiting (at most {self.max_pending})")
        if source is not None and self._per_source.get(source, 0) >= self.max_per_source:
            return self._drop(command, f"too many commands waiting from this watcher (at most {self.max_per_source})")
        self._items.append((command, source))
        self._count(source, +1)
        return True

    def _count(self, source: Hashable | None, delta: int) -> None:
        if source is None:
            return
        n = self._per_source.get(source, 0) + delta
        if n > 0:
            self._per_source[source] = n
        else:
            self._per_source.pop(source, None)

    def _drop(self, command: Command, reason: str) -> bool:
        key = (getattr(command, "name", type(command).__name__), reason)
        self._dropped[key] = self._dropped.get(key, 0) + 1
        return False

    def pending(self) -> bool:
        """Anything to apply or to answer: one attribute read, cheap enough for every step."""
        return self._any

    def take_dropped(self) -> list[tuple[str, str, int]]:
        """(command name, reason, how many) for each kind of drop since the last call."""
        with self._cond:
            dropped, self._dropped = self._dropped, {}
            self._refresh()
        return [(name, reason, n) for (name, reason), n in dropped.items()]

    def put_from_signal(self, stop: Stop) -> None:
        """A Stop from a signal handler: no lock taken, since the handler may have interrupted this very
        thread while it held the lock (put() would then wait for itself for ever). Seen at the next step
        boundary, or within a get() timeout while paused."""
        self._signal_stop = stop
        self._any = True

    def _take(self) -> Command | None:
        signalled, self._signal_stop = self._signal_stop, None
        if signalled is not None and (self._stop is None or self._stop.signal is None):
            self._stop = signalled
        if self._stop is not None:
            command: Command | None = self._stop
            self._stop = None
        elif self._items:
            command, source = self._items.popleft()
            self._count(source, -1)
        else:
            command = None
        self._refresh()
        return command

    def _refresh(self) -> None:
        self._any = (self._stop is not None or self._signal_stop is not None or bool(self._items)
                     or bool(self._dropped))

    def take_all(self) -> list[Command]:
        """What waits now, at most one queue's worth: commands that keep arriving wait for the next step."""
        taken: list[Command] = []
        with self._cond:
            for _ in range(self.max_pending + 1):
                command = self._take()
                if command is None:
                    break
                taken.append(command)
        return taken

    def get_nowait(self) -> Command | None:
        with self._cond:
            return self._take()

    def get(self, timeout: float) -> Command | None:
        """Wait for a command (used while paused)."""
        with self._cond:
            if self._stop is None and self._signal_stop is None and not self._items:
                self._cond.wait(timeout)
            return self._take()

    def __len__(self) -> int:
        """Commands waiting (a pending Stop included)."""
        return len(self._items) + (self._stop is not None or self._signal_stop is not None)
