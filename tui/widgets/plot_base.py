"""Shared plumbing for the dashboard's plotext plots.

Colours come from the widget's component classes, so they live in app.tcss
with the rest of the styling. A plot redraws only when `replot` is called
with changed data, and draws at most one point per terminal column.
"""

from __future__ import annotations

import math
from typing import Iterable

from textual_plotext import PlotextPlot


#: One colour per run when `tuitrain watch a b` overlays runs (colours in app.tcss).
RUN_COMPONENTS = ("plot--run-0", "plot--run-1", "plot--run-2", "plot--run-3", "plot--run-4", "plot--run-5")


class TrainPlot(PlotextPlot):
    """A PlotextPlot with colours from tcss and helpers for thinned series."""

    def colour(self, component: str) -> tuple[int, int, int] | str:
        style = self.get_component_rich_style(component, partial=True)
        if style.color is None:
            return "default"
        triplet = style.color.get_truecolor()
        return (triplet.red, triplet.green, triplet.blue)

    @property
    def columns(self) -> int:
        """How many x positions the plot area has (roughly: minus the y-axis labels)."""
        return max(10, self.size.width - 10)

    #: The width the last replot thinned its series to (0: never drawn).
    drawn_width: int = 0

    def start(self, title: str) -> None:
        self.drawn_width = self.size.width
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title)

    def integer_xticks(self, lo: float, hi: float, count: int = 5) -> None:
        """Steps and epochs are whole numbers: label the x axis with integers."""
        lo, hi = int(lo), int(hi)
        if hi <= lo:
            self.plt.xticks([lo])
            return
        ticks = sorted({round(lo + (hi - lo) * i / (count - 1)) for i in range(count)})
        self.plt.xticks(ticks, [f"{t:,}" for t in ticks])

    def log_yticks(self, lo: float, hi: float, count: int = 4) -> None:
        """Label a y axis that holds log10 values with the values themselves.

        The plots take log10 themselves instead of plt.yscale("log"): plotext
        applies its log scale to the stored data on every build, so a repaint
        without new data (a resize) took the log twice and crashed.
        """
        a, b = math.floor(lo), math.ceil(hi)
        if b - a >= 2:  # whole decades
            step = max(1, math.ceil((b - a) / (count - 1)))
            ticks = [float(t) for t in range(a, b + 1, step)]
        elif hi > lo:
            ticks = [lo + (hi - lo) * i / (count - 1) for i in range(count)]
        else:
            ticks = [lo]
        self.plt.yticks(ticks, [f"{10 ** t:.3g}" for t in ticks])

    def finish(self) -> None:
        self.refresh()


def log10_all(values: list[float]) -> list[float]:
    """log10 of values already filtered to be positive (finite_pairs(..., positive=True))."""
    return [math.log10(v) for v in values]


def finite_pairs(xs: Iterable[float], ys: Iterable[float | None], *, positive: bool = False) -> tuple[list, list]:
    """Drop points plotext cannot draw (None, NaN, Inf; non-positive on a log axis)."""
    out_x, out_y = [], []
    for x, y in zip(xs, ys):
        if y is None or not math.isfinite(y) or (positive and y <= 0):
            continue
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y
