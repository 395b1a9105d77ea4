"""The `?` screen: every key and what it does now."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("p", "pause / resume training (the system panel keeps updating)"),
    ("l", "set the learning rate (a multiplier on the schedule from now on)"),
    ("s", "save a checkpoint now (checkpoints/step-<N>.pt)"),
    ("x", "stop early: finish the step, evaluate, save; the dashboard stays open"),
    ("q", "quit (stops and saves first while training)"),
    ("d", "detach: save, keep training in the background, return the shell (tuitrain watch RUN_DIR)"),
    ("[ / ]", "less / more smoothing of the loss curve"),
    ("y", "log scale for the loss"),
    ("b", "decision boundary on / off: the predicted class over the input (2-D presets)"),
    ("h", "layer health in the middle row: gradient norm, per-layer table"),
    ("?", "this help"),
    ("ctrl+p", "command palette: every action by name"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help-close")]

    def __init__(self, keys: list[tuple[str, str]] | None = None, title: str = "tuitrain keys") -> None:
        """`keys` replaces the dashboard's list (`tuitrain watch` has its own meanings for q and d)."""
        super().__init__()
        self.key_lines = KEYS if keys is None else keys
        self.title_text = title

    def compose(self) -> ComposeResult:
        # A two-column grid: a long description wraps under itself (a hanging indent), not under the key.
        # markup=False: the texts are shown as written ("[ / ]" is a key, not a tag).
        with Vertical(id="help"):
            yield Static(self.title_text, id="help-title", markup=False)
            with Grid(id="help-keys"):
                for key, text in self.key_lines:
                    yield Static(key, classes="help-key", markup=False)
                    yield Static(text, classes="help-text", markup=False)
            yield Static("Esc, q or ? to close", id="help-footer", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
