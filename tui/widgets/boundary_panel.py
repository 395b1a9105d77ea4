"""The decision boundary of a 2-D classifier, with the validation points on top.

The engine sends the predicted class on a fixed grid (BoundaryGrid); this
panel scales it to its own size (nearest neighbour) and draws two grid rows
per terminal row with half blocks (upper cell in the foreground colour, lower
in the background), so the picture has square-ish pixels. A frame costs
O(width x height) of the panel, whatever the run's length, and is rebuilt
only when a new grid arrived or the panel was resized.
"""

from __future__ import annotations

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from tuitrain.engine import events as ev

#: Colours defined in app.tcss; classes beyond these reuse them in turn.
PALETTE_SIZE = 6
#: Glyph per class for the points (colour and shape both tell the label).
POINT_GLYPHS = ("•", "×", "+", "◦", "*", "#")
#: At most one point per this many terminal cells, so the regions stay visible.
CELLS_PER_POINT = 4
#: How far the picture may be stretched away from the data's aspect ratio to fill the panel.
MAX_STRETCH = 1.5
HALF_BLOCK = "▀"
LOWER_HALF_BLOCK = "▄"


class BoundaryPanel(Widget):
    COMPONENT_CLASSES = {
        *(f"boundary-panel--region-{i}" for i in range(PALETTE_SIZE)),
        *(f"boundary-panel--point-{i}" for i in range(PALETTE_SIZE)),
        "boundary-panel--wait",
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self._points: ev.BoundaryPoints | None = None
        self._grid: ev.BoundaryGrid | None = None
        self._lines: list[Strip] = []
        self._built_for: object = None
        self.border_title = "decision boundary"

    # -- feeding -------------------------------------------------------------------
    def show(self, points: ev.BoundaryPoints | None, grid: ev.BoundaryGrid | None, *, running: bool) -> None:
        """Take the latest grid (at most at the plot rate); repaint only if it is new."""
        if points is self._points and grid is self._grid:
            return
        self._points, self._grid = points, grid
        self.border_title = self.title_for(grid, running=running)
        self.refresh()

    @staticmethod
    def title_for(grid: ev.BoundaryGrid | None, *, running: bool) -> str:
        if grid is None:
            return "decision boundary"
        if grid.epoch_end or not running:
            return f"boundary · epoch {grid.epoch}"
        return f"boundary · live · ep {grid.epoch}"  # short: the panel is narrow at 80 columns

    # -- drawing -------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width, height = self.size
        key = (id(self._grid), id(self._points), width, height)
        if key != self._built_for:
            self._lines = self._build(width, height)
            self._built_for = key
        return self._lines[y] if 0 <= y < len(self._lines) else Strip.blank(width)

    def colour(self, component: str) -> Color | None:
        return self.get_component_rich_style(component, partial=True).color

    def _build(self, width: int, height: int) -> list[Strip]:
        grid, points = self._grid, self._points
        if width <= 0 or height <= 0:
            return []
        if grid is None:
            text = "waiting for the first grid"[:width]
            wait = self.get_component_rich_style("boundary-panel--wait", partial=True)
            pad = max(0, width - len(text))
            line = Strip([Segment(" " * (pad // 2)), Segment(text, wait), Segment(" " * (pad - pad // 2))])
            blank = Strip.blank(width)
            return [line if y == height // 2 else blank for y in range(height)]
        # The picture's size in pixels (one column by half a row each), close to the data's aspect.
        px_w, px_h = _fit(width, height * 2, grid.x_range, grid.y_range)
        left = (width - px_w) // 2
        top = (height * 2 - px_h) // 2
        top -= top % 2  # keep pixel rows paired with terminal rows
        cols, rows, cells = grid.cols, grid.rows, grid.cells
        col_of = [min(cols - 1, (x * cols) // px_w) for x in range(px_w)]
        row_of = [min(rows - 1, (y * rows) // px_h) for y in range(px_h)]
        regions = [self.colour(f"boundary-panel--region-{i}") for i in range(PALETTE_SIZE)]
        brights = [self.colour(f"boundary-panel--point-{i}") for i in range(PALETTE_SIZE)]

        def region(py: int, px: int) -> int | None:
            """Class at picture pixel (py, px), None outside the picture."""
            y, x = py - top, px - left
            if not (0 <= y < px_h and 0 <= x < px_w):
                return None
            return (ord(cells[row_of[y] * cols + col_of[x]]) - 48) % PALETTE_SIZE

        budget = max(1, (px_w * px_h // 2) // CELLS_PER_POINT)
        marks = _point_cells(points, grid, px_w, px_h, left, top, budget) if points is not None else {}
        styles: dict[tuple[int | None, int | None], Style] = {}
        lines = []
        for ty in range(height):
            segments: list[Segment] = []
            run_style: Style | None = None
            run_text: list[str] = []
            for tx in range(width):
                upper, lower = region(2 * ty, tx), region(2 * ty + 1, tx)
                mark = marks.get((tx, ty))
                if mark is not None:
                    label, half = mark
                    under = upper if half == 0 else lower
                    style = Style(color=brights[label % PALETTE_SIZE],
                                  bgcolor=regions[under] if under is not None else None, bold=True)
                    char = POINT_GLYPHS[label % len(POINT_GLYPHS)]
                else:
                    style = styles.get((upper, lower))
                    if style is None:
                        if upper == lower:  # one colour: a space on that background (no glyph to draw)
                            style = Style(bgcolor=regions[upper] if upper is not None else None)
                        else:
                            style = Style(color=regions[upper] if upper is not None else None,
                                          bgcolor=regions[lower] if lower is not None else None)
                        styles[(upper, lower)] = style
                    char = " " if upper == lower else HALF_BLOCK
                    if upper is None and lower is not None:  # the picture's edge: the lower half only
                        style, char = Style(color=regions[lower]), LOWER_HALF_BLOCK
                if style is not run_style and run_text:
                    segments.append(Segment("".join(run_text), run_style))
                    run_text = []
                run_style = style
                run_text.append(char)
            if run_text:
                segments.append(Segment("".join(run_text), run_style))
            lines.append(Strip(segments, width))
        return lines


def _fit(width: int, height: int, x_range: list[float], y_range: list[float]) -> tuple[int, int]:
    """Pixels (w, h) inside width x height whose ratio is within MAX_STRETCH of the data's."""
    x_span = max(1e-12, float(x_range[1]) - float(x_range[0]))
    y_span = max(1e-12, float(y_range[1]) - float(y_range[0]))
    want = x_span / y_span
    have = width / height
    if have > want * MAX_STRETCH:
        return max(1, min(width, round(height * want * MAX_STRETCH))), height
    if have < want / MAX_STRETCH:
        return width, max(1, min(height, round(width / (want / MAX_STRETCH))))
    return width, height


def _point_cells(points: ev.BoundaryPoints, grid: ev.BoundaryGrid, px_w: int, px_h: int, left: int,
                 top: int, budget: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(terminal column, terminal row) -> (label, which half): the first `budget` points on free cells.

    The engine's sample is in random order, so its first points are a fair sample too.
    """
    (x0, x1), (y0, y1) = grid.x_range, grid.y_range
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for x, y, label in points.points:
        px = int((x - x0) / x_span * px_w)
        py = int((y1 - y) / y_span * px_h)
        if 0 <= px < px_w and 0 <= py < px_h:
            py += top
            cell = (px + left, py // 2)
            if cell not in out:
                out[cell] = (int(label), py % 2)
                if len(out) >= budget:
                    break
    return out
