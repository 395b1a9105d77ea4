"""The top line: preset, device, the run's status word, elapsed time and ETA."""

from __future__ import annotations

import time

from rich.text import Text

from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.text_panel import TextPanel


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class StatusBar(TextPanel):
    COMPONENT_CLASSES = {"status-bar--title", "status-bar--clock", "status-bar--running", "status-bar--starting", "status-bar--paused",
                         "status-bar--stopped", "status-bar--finished", "status-bar--failed",
                         "status-bar--died"}

    def show(self, state: DashboardState) -> None:
        elapsed = fmt_duration(state.elapsed(time.time()))
        eta = state.eta()
        clock = f" elapsed {elapsed}"
        if eta is not None and state.status == "RUNNING":
            clock += f" · ETA {fmt_duration(eta)}"
        if state.status == "STARTING":
            clock = f" {state.phase or 'starting'}…"
        key = (state.preset, state.device, state.status, clock)
        if key == self._key:
            return
        word = self.get_component_rich_style(f"status-bar--{state.status.lower()}", partial=True)
        text = Text.assemble(
            (f" tuitrain · {state.preset} · {state.device} ", self.get_component_rich_style("status-bar--title")),
            (f" {state.status} ", word),
            (clock, self.get_component_rich_style("status-bar--clock")),
        )
        self.set_content(text, key)
