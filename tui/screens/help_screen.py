"""The `?` screen: every key and what it does now (the rows come from tui/keys.py)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help-close")]

    def __init__(self, keys: list[tuple[str, str]], title: str = "tuitrain keys") -> None:
        """`keys`: (key, text) rows, from tui/keys.py for what this viewer offers."""
        super().__init__()
        self.key_lines = keys
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
