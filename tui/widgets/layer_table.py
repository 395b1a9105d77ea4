"""Layer health: per parameter tensor, its weight norm, gradient norm and update size.

One row per tensor, grouped by module (the module's name on its first row
only). The rows are built once per model; afterwards only the cells whose
text changed are updated, without a layout pass, and the app calls `show`
at most once a second.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import DataTable

from tuitrain.engine import events as ev

#: (key, header, width) of the value columns; widths fit the formats below.
VALUE_COLUMNS = (("w", "|w|", 7), ("g", "|∇|", 7), ("r", "upd/w", 7), ("flag", "", 8))
#: Longest module or tensor name shown in full.
NAME_WIDTH = 24


def fmt_sci(value: float | None) -> str:
    """1.2e-3: short enough for a narrow column, exact enough to compare orders of magnitude."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_norm(value: float | None) -> str:
    """Plain digits for ordinary norms, scientific for very small or large ones."""
    if value is not None and math.isfinite(value) and (value == 0 or 1e-2 <= abs(value) < 1e4):
        return f"{value:.3g}"
    return fmt_sci(value)


def fmt_flag(growth: float | None) -> str:
    """'▲ x4.1': the flagged tensor and how many times its gradient norm grew."""
    if growth is None:
        return "▲"
    if not math.isfinite(growth):
        return "▲ x∞"
    return f"▲ x{growth:.1f}" if growth < 10 else f"▲ x{min(growth, 99999):.0f}"


def split_name(name: str) -> tuple[str, str]:
    """'net.0.weight' -> ('net.0', 'weight'); a top-level parameter has module ''."""
    module, _, tensor = name.rpartition(".")
    return module, tensor


class LayerTable(DataTable, can_focus=False):
    """Not focusable: the dashboard's keys stay with the app; the mouse wheel still scrolls."""

    COMPONENT_CLASSES = {"layer-table--module", "layer-table--flag", "layer-table--none"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes, cursor_type="none", show_cursor=False, zebra_stripes=False)
        self._names: list[str] | None = None
        self._cells: dict[tuple[str, str], str] = {}
        """What each (row, column) shows now: a cell is updated only when its text changes."""
        self.border_title = "layer health · waiting for the first stats"
        self._stats: ev.LayerStats | None = None
        self._built_width = 0

    def on_resize(self) -> None:
        """The last column takes the slack, so that the header's highlight spans the panel."""
        if self._stats is not None and self.size.width != self._built_width:
            stats, self._names = self._stats, None
            self.show(stats)

    def show(self, stats: ev.LayerStats | None) -> None:
        if stats is None:
            return
        self._stats = stats
        if stats.names != self._names:
            self._build(stats)
        flag_style = self.get_component_rich_style("layer-table--flag", partial=True)
        for i, name in enumerate(stats.names):
            flagged = name == stats.flagged
            flag = fmt_flag(stats.growth) if flagged else ""
            values = {"w": fmt_norm(_at(stats.weight_norm, i)), "g": fmt_norm(_at(stats.grad_norm, i)),
                      "r": fmt_sci(_at(stats.update_ratio, i)), "flag": flag,
                      "tensor": ("!" if flagged else "") + split_name(name)[1]}
            for column, text in values.items():
                key = (str(i), column)
                if self._cells.get(key) == text:
                    continue
                self._cells[key] = text
                shown = text.removeprefix("!") if column == "tensor" else text
                style = flag_style if flagged and column in ("tensor", "flag") else ""
                self.update_cell(str(i), column, Text(shown, style=style, justify="left" if column in (
                    "tensor", "flag") else "right"))
        title = f"layer health · step {stats.step:,}"
        if self.border_title != title:
            self.border_title = title

    def _build(self, stats: ev.LayerStats) -> None:
        """Columns and rows for a new model: the only time the table changes shape."""
        self.clear(columns=True)
        self._cells.clear()
        self._names = list(stats.names)
        parts = [split_name(n) for n in stats.names]
        shapes = ["×".join(str(d) for d in shape) or "scalar" for shape in stats.shapes]
        module_style = self.get_component_rich_style("layer-table--module", partial=True)
        module_width = min(NAME_WIDTH, max([len("module")] + [len(m) for m, _ in parts]))
        tensor_width = min(NAME_WIDTH, max([len("tensor")] + [len(t) for _, t in parts]))
        self.add_column(Text("module"), width=module_width, key="module")
        self.add_column(Text("tensor"), width=tensor_width, key="tensor")
        self.add_column(Text("shape", justify="right"), width=max([5] + [len(s) for s in shapes]), key="shape")
        self._built_width = self.size.width
        used = module_width + tensor_width + max([5] + [len(s) for s in shapes])
        used += sum(width for _, _, width in VALUE_COLUMNS) + 2 * self.cell_padding * (3 + len(VALUE_COLUMNS))
        slack = max(0, self.scrollable_content_region.width - used)
        for key, header, width in VALUE_COLUMNS:
            width += slack if key == "flag" else 0
            self.add_column(Text(header, justify="right" if key != "flag" else "left"), width=width, key=key)
        previous = None
        for i, ((module, tensor), shape) in enumerate(zip(parts, shapes)):
            # Text, not str: a DataTable parses str cells as markup, and these names are the user's.
            shown_module = Text(module, style=module_style) if module != previous else Text("")
            previous = module
            self.add_row(shown_module, Text(tensor), Text(shape, justify="right"), "", "", "", "", key=str(i))
            self._cells[(str(i), "tensor")] = tensor


def _at(values: list[float | None], i: int) -> float | None:
    return values[i] if i < len(values) else None
