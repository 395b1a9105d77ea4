"""The top line: preset, device, the run's status word, elapsed time and ETA."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tuitrain.tui.state import DashboardState

STATUS_CLASSES = ("-running", "-paused", "-stopped", "-finished", "-failed")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class StatusBar(Horizontal):
    DEFAULT_CSS = """
    StatusBar { height: 1; }
    StatusBar > Static { width: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static("tuitrain", id="status-title")
        yield Static("RUNNING", id="status-word", classes="-running")
        yield Static("", id="status-clock")

    def show(self, state: DashboardState) -> None:
        self.query_one("#status-title", Static).update(f" tuitrain · {state.preset} · {state.device} ")
        word = self.query_one("#status-word", Static)
        word.update(f" {state.status} ")
        word.set_classes(f"-{state.status.lower()}")
        eta = state.eta()
        tail = f" elapsed {fmt_duration(state.elapsed(time.time()))}"
        if eta is not None and state.status == "RUNNING":
            tail += f" · ETA {fmt_duration(eta)}"
        self.query_one("#status-clock", Static).update(tail)
