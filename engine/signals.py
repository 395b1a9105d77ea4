"""The three signals that stop a run, installed and put back as they were.

Standard library only: the viewer passes them on to its run with the same code.
"""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP routed to `_handle`, and put back as they were by restore().

    A signal the parent set to be ignored (nohup ignores SIGHUP) stays ignored. Shared by the run's
    SignalRelay (tui/run_process.py), the dashboard's SignalForwarder (tui/launch.py) and a user's
    loop that asked tuitrain.attach() to handle them (engine/attach.py).
    """

    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue
            self._previous[sig] = current
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
