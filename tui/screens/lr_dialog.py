"""The `l` dialog: type a new learning rate; only a positive finite number is accepted
(engine/commands.py check_lr: the engine's own rule, so what the dialog lets through the run takes)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from tuitrain.engine.commands import check_lr

#: A new LR more than this many times the current one asks for a second Enter (1e9 is a typo, not a plan).
CONFIRM_ABOVE = 100.0


def parse_lr(text: str) -> float:
    """'0.001' or '1e-3' -> 0.001; anything else raises ValueError with a message for the user."""
    cleaned = text.strip()
    if not cleaned:
        raise ValueError("type a learning rate, e.g. 0.001 or 1e-3")
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"not a number: {cleaned[:40]!r}") from None
    return check_lr(value)


def needs_confirmation(value: float, current: float | None) -> bool:
    """A jump of more than CONFIRM_ABOVE x the current LR is confirmed first."""
    return current is not None and current > 0 and value > CONFIRM_ABOVE * current


class LRDialog(ModalScreen[float | None]):
    """Returns the new LR, or None when cancelled (Esc).

    Text typed here is shown back literally (markup=False everywhere): `[/]`
    is a bad number, not a crash.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="lr-cancel")]

    def __init__(self, current: float | None) -> None:
        super().__init__()
        self.current = current
        self._confirming: float | None = None
        """The value waiting for its second Enter (a large jump)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="lr-dialog"):
            now = "unknown" if self.current is None else f"{self.current:.3g}"
            yield Label(f"Set the learning rate (now {now})", id="lr-title", markup=False)
            yield Input(placeholder="e.g. 0.001 or 1e-3", id="lr-input")
            yield Static("Enter to apply · Esc to cancel", id="lr-message", markup=False)

    def _say(self, text: str, level: str) -> None:
        message = self.query_one("#lr-message", Static)
        message.update(text)
        message.set_class(level == "error", "-error")
        message.set_class(level == "confirm", "-confirm")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            value = parse_lr(event.value)
        except ValueError as exc:
            self._say(str(exc), "error")
            return
        if needs_confirmation(value, self.current) and self._confirming != value:
            self._confirming = value
            ratio = value / self.current  # type: ignore[operator]
            self._say(f"{value:.3g} is {ratio:.3g}x the current {self.current:.3g}: "
                      f"Enter again to apply it, Esc to cancel", "confirm")
            return
        self.dismiss(value)

    def on_input_changed(self, event: Input.Changed) -> None:
        message = self.query_one("#lr-message", Static)
        message.remove_class("-error")
        if self._confirming is not None:
            self._confirming = None
            self._say("Enter to apply · Esc to cancel", "")

    def action_cancel(self) -> None:
        self.dismiss(None)
