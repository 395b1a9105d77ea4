"""Every intervention and its answer, checkpoints, warnings and errors, with time stamps."""

from __future__ import annotations

import time
from collections import deque

from rich.text import Text
from textual.widgets import RichLog

from tuitrain.tui.state import LogLine


class EventLog(RichLog):
    COMPONENT_CLASSES = {"event-log--info", "event-log--action", "event-log--warning", "event-log--error"}

    def __init__(self, **kwargs: object) -> None:
        # min_width=1: RichLog otherwise renders at least 78 columns wide, and at 80 columns the last
        # characters of a wrapped line went under the scrollbar ("1,218" shown as "1,2").
        super().__init__(max_lines=2000, wrap=True, markup=False, highlight=False, min_width=1,
                         **kwargs)  # type: ignore[arg-type]
        self.entries: deque[str] = deque(maxlen=2000)
        """The logical lines written, unwrapped (the screen wraps long ones)."""

    def add(self, lines: list[LogLine]) -> None:
        """One write per batch: each write costs a refresh, whatever its size."""
        text = Text()
        for i, line in enumerate(lines):
            style = self.get_component_rich_style(f"event-log--{line.level}", partial=True)
            stamp = time.strftime("%H:%M:%S", time.localtime(line.t))
            self.entries.append(f"{stamp} {line.text}")
            if i:
                text.append("\n")
            text.append(f"{stamp} ", "dim")
            text.append(line.text, style)
        # expand: wrap at the log's own width, not at the longest line's (a wide terminal's log used 78).
        self.write(text, expand=True)
