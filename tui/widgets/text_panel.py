"""A panel whose content is one renderable, redrawn without a layout pass.

Static.update() asks for a new layout of the whole screen on every call,
which at several updates a second costs more CPU than the training loop can
spare (the UI and the engine share the GIL). Panels here have fixed sizes in
app.tcss, so new content only needs a repaint, and only when it changed.
"""

from __future__ import annotations

from rich.console import RenderableType
from textual.widget import Widget


class TextPanel(Widget):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self._content: RenderableType = ""
        self._key: object = None

    def render(self) -> RenderableType:
        return self._content

    def set_content(self, content: RenderableType, key: object) -> None:
        """Show `content`; `key` is a cheap summary of it: the same key means no repaint."""
        if key == self._key:
            return
        self._key = key
        self._content = content
        self.refresh()
