"""Shared plumbing for the dashboard's plotext plots.

Colours come from the widget's component classes, so they live in app.tcss
with the rest of the styling. A plot redraws only when `replot` is called
with changed data, and draws at most one point per terminal column.
"""

from __future__ import annotations

import math
from typing import Iterable

from rich.style import Style
from rich.text import Text
from textual_plotext import PlotextPlot

#: A legend entry: (label, colour as plotext takes it, glyph).
LegendItem = tuple[str, "tuple[int, int, int] | str", str]


#: One colour per run when `tuitrain watch a b` overlays runs (colours in app.tcss).
RUN_COMPONENTS = ("plot--run-0", "plot--run-1", "plot--run-2", "plot--run-3", "plot--run-4", "plot--run-5")


def flat(lo: float, hi: float) -> bool:
    """No range to draw: equal, or apart only by float noise (a smoothed constant is 1.00000000000000022)."""
    return hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1e-300)


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

    #: True while the last replot had nothing to draw: the app draws the first data at once.
    waiting: bool = True

    def start(self, title: str, legend: Iterable[LegendItem] = (), xlabel: str = "step") -> None:
        """A fresh figure. The title and the legend go on the panel's border, not over the data
        (where the first losses and the best accuracies are); plotext draws only the left and
        lower axes, so every other row holds data."""
        self.drawn_width = self.size.width
        self.waiting = False
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xaxes(True, False)
        plt.yaxes(True, False)
        self.set_titles(title, legend, xlabel)

    def set_titles(self, title: str, legend: Iterable[LegendItem] = (), xlabel: str = "") -> None:
        """Border title (text, then each legend entry in its colour) and subtitle; literal text, no markup."""
        text = Text(title)
        for label, colour, glyph in legend:
            text.append(" ")
            text.append(glyph, Style(color=_rich_colour(colour), bold=True))
            text.append(f" {label}")
        self.border_title = text
        self.border_subtitle = Text(xlabel) if xlabel else None

    def wait(self, title: str) -> None:
        """Nothing to draw yet: say so in the title; the app redraws as soon as data arrives."""
        self.set_titles(title)
        self.waiting = True

    def integer_xticks(self, lo: float, hi: float, count: int = 5) -> None:
        """Steps and epochs are whole numbers: label the x axis with round integers (0, 50k, 100k ...)."""
        lo, hi = int(lo), int(hi)
        if hi <= lo:
            self.plt.xticks([lo], [f"{lo:,}"])
            return
        self.plt.xlim(lo, hi)
        ticks = [int(t) for t in nice_ticks(lo, hi, count)] or [lo, hi]
        self.plt.xticks(ticks, [fmt_tick(t) for t in ticks])

    def linear_yticks(self, lo: float, hi: float, count: int = 3) -> None:
        """A few round values on a linear y axis (0.002, 0.004 ...), not plotext's 0.0083-style ones.

        A constant (a fixed LR, a loss that does not move) is one labelled value in the middle of a
        range around it: plotext would label its zero-width range 1.00000000000000022."""
        if flat(lo, hi):
            pad = abs(lo) * 0.1 or 1.0
            self.plt.ylim(lo - pad, lo + pad)
            self.plt.yticks([lo], [f"{lo:.4g}"])
            return
        ticks = [t for t in nice_ticks(lo, hi, count) if lo <= t <= hi]
        if len(ticks) >= 2:
            self.plt.yticks(ticks, [f"{t:.2g}" for t in ticks])

    def log_yticks(self, lo: float, hi: float, count: int = 4) -> None:
        """Label a y axis that holds log10 values with the values themselves.

        The plots take log10 themselves instead of plt.yscale("log"): plotext
        applies its log scale to the stored data on every build, so a repaint
        without new data (a resize) took the log twice and crashed. The ticks
        are round values (decades, or 1-2-5 steps) inside the data's range, at
        least two of them, none on the corner row where the x labels start.
        """
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        pad = (hi - lo) * 0.04
        lo, hi = lo - pad, hi + pad
        self.plt.ylim(lo, hi)
        inner_lo = lo + (hi - lo) * 0.08  # keep the lowest label off the x axis row
        values = log_ticks(10 ** inner_lo, 10 ** hi, count)
        ticks = [math.log10(v) for v in values]
        self.plt.yticks(ticks, [f"{v:.3g}" for v in values])

    def finish(self) -> None:
        self.refresh()


def _rich_colour(colour: "tuple[int, int, int] | str") -> str | None:
    if isinstance(colour, tuple):
        return f"rgb({colour[0]},{colour[1]},{colour[2]})"
    return None if colour == "default" else colour


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values (multiples of 1, 2, 2.5 or 5 x 10^k) between lo and hi: the widest spacing that
    still gives at least count - 1 of them (and two)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    magnitude = 10 ** math.floor(math.log10((hi - lo) / max(1, count - 1)))
    want = max(2, count - 1)
    for m in (10, 5, 2.5, 2, 1, 0.5, 0.25, 0.2, 0.1):
        step = m * magnitude
        first = math.ceil(lo / step - 1e-9)
        last = math.floor(hi / step + 1e-9)
        if last - first + 1 >= want:
            return [round(k * step, 12) for k in range(first, last + 1)]
    return [lo, hi]


def log_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Tick values for a log axis over [lo, hi] (positive): decades when the range spans
    two or more, else the 1-2-5 values inside it, else round linear values; never fewer than two."""
    a, b = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    if b - a >= 1:
        step = max(1, math.ceil((b - a + 1) / count))
        decades = [10.0 ** e for e in range(a, b + 1, step)]
        if len(decades) >= 2:
            return decades
    values = [m * 10.0 ** e for e in range(a - 1, b + 1) for m in (1, 2, 5)]
    inside = [v for v in values if lo <= v <= hi]
    if 2 <= len(inside) <= count + 1:
        return inside
    linear = [v for v in nice_ticks(lo, hi, count) if v > 0]
    return linear if len(linear) >= 2 else [lo, hi]


def fmt_tick(value: float) -> str:
    """An axis label: 250,000 as '250k', 1,500,000 as '1.5M', small numbers as they are."""
    for divisor, limit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e3, 1e4, "k")):
        if abs(value) >= limit:
            return f"{value / divisor:.4g}{suffix}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.3g}"


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
