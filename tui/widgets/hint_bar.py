"""One line under the status bar with the latest diagnosis and its remedy.

Hidden until the engine sends its first Hint; the colour follows the
hint's severity (classes in app.tcss). The full text, with the evidence, is
in the event log.
"""

from __future__ import annotations

from rich.text import Text

from tuitrain.engine import events as ev
from tuitrain.tui.widgets.text_panel import TextPanel


class HintBar(TextPanel):
    COMPONENT_CLASSES = {"hint-bar--label", "hint-bar--remedy"}

    def show(self, hint: ev.Hint | None) -> None:
        if hint is None:
            self.remove_class("-shown")
            return
        severity = "info" if hint.severity == "info" else "warning"
        key = (hint.rule, hint.message, hint.remedy, severity)
        if key == self._key:
            return
        self.set_class(severity == "warning", "-warning")
        self.set_class(severity == "info", "-info")
        self.add_class("-shown")  # a layout pass, but only when a hint first appears
        text = Text.assemble(
            (" ▲ hint " if severity == "warning" else " ● hint ", self.get_component_rich_style("hint-bar--label")),
            f" {' '.join(hint.message.split())} ",
            (f"→ {' '.join(hint.remedy.split())}", self.get_component_rich_style("hint-bar--remedy", partial=True)),
            no_wrap=True, overflow="ellipsis",
        )
        self.set_content(text, key)
