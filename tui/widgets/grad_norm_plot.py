"""The total gradient norm (before clipping) over steps, on a log axis.

Exploding or vanishing gradients show up as orders of magnitude, so the y
axis is logarithmic. The points come from a bounded Series thinned to the
plot's width: a redraw costs the same however long the run. The clipping
threshold, when clipping is on, is a horizontal line.
"""

from __future__ import annotations

import math

from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.layer_table import fmt_norm
from tuitrain.tui.widgets.plot_base import TrainPlot, finite_pairs, log10_all


class GradNormPlot(TrainPlot):
    COMPONENT_CLASSES = {"grad-norm-plot--norm", "grad-norm-plot--clip"}

    def replot(self, state: DashboardState, *, clip: float | None = None) -> None:
        series = state.total_grad_norm
        last = series.last
        legend = [("norm", self.colour("grad-norm-plot--norm"), "━")]
        if clip:
            legend.append(("clip", self.colour("grad-norm-plot--clip"), "━"))
        self.start("grad norm · log" if last is None else f"grad norm {fmt_norm(last)} · log", legend)
        plt = self.plt
        if len(series) == 0:
            self.wait("grad norm · waiting")
            self.finish()
            return
        cols = series.thin(self.columns)
        x, y = finite_pairs(cols.x, cols.mean, positive=True)
        y = log10_all(y)
        if x:
            plt.plot(x, y, color=self.colour("grad-norm-plot--norm"), marker="braille")
            lo, hi = min(y), max(y)
            if clip:
                plt.hline(math.log10(clip), self.colour("grad-norm-plot--clip"))
                lo, hi = min(lo, math.log10(clip)), max(hi, math.log10(clip))
            self.integer_xticks(min(x), max(x), count=3)
            self.log_yticks(lo, hi)
        self.finish()
