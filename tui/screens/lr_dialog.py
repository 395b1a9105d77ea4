"""The `l` dialog: type a new learning rate; only a positive finite number is accepted."""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


def parse_lr(text: str) -> float:
    """'0.001' or '1e-3' -> 0.001; anything else raises ValueError with a message for the user."""
    cleaned = text.strip()
    if not cleaned:
        raise ValueError("type a learning rate, e.g. 0.001 or 1e-3")
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"not a number: {cleaned[:40]!r}") from None
    if not math.isfinite(value):
        raise ValueError("the learning rate must be finite")
    if value <= 0:
        raise ValueError("the learning rate must be greater than zero")
    return value


class LRDialog(ModalScreen[float | None]):
    """Returns the new LR, or None when cancelled (Esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="lr-cancel")]

    def __init__(self, current: float | None) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="lr-dialog"):
            now = "unknown" if self.current is None else f"{self.current:.3g}"
            yield Label(f"Set the learning rate (now {now})", id="lr-title")
            yield Input(placeholder="e.g. 0.001 or 1e-3", id="lr-input")
            yield Static("Enter to apply · Esc to cancel", id="lr-message")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            value = parse_lr(event.value)
        except ValueError as exc:
            message = self.query_one("#lr-message", Static)
            message.update(str(exc))
            message.add_class("-error")
            return
        self.dismiss(value)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#lr-message", Static).remove_class("-error")

    def action_cancel(self) -> None:
        self.dismiss(None)
