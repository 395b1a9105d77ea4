"""Training loss per step (raw and smoothed) and validation loss per epoch.

With overlays (`tuitrain watch a b`), one colour per run instead: each run's
smoothed training loss and its validation points, labelled by run directory.
"""

from __future__ import annotations

from typing import Sequence

from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.plot_base import RUN_COMPONENTS, TrainPlot, finite_pairs, flat, log10_all

MARK_COMPONENTS = {"lr": "loss-plot--mark-lr", "pause": "loss-plot--mark-pause",
                   "checkpoint": "loss-plot--mark-checkpoint", "nan": "loss-plot--mark-nan"}


class LossPlot(TrainPlot):
    COMPONENT_CLASSES = {"loss-plot--raw", "loss-plot--smoothed", "loss-plot--val", *MARK_COMPONENTS.values(),
                         *RUN_COMPONENTS}

    def replot(self, state: DashboardState, *, smoothing: float, log_scale: bool,
               overlays: Sequence[tuple[str, DashboardState]] = ()) -> None:
        """`overlays`: (label, state) of every run to compare, `state` among them; empty for one run."""
        title = f"loss · smooth {smoothing:.2f}{' · log' if log_scale else ''}"
        if overlays:
            self.start(title, [(label, self.colour(RUN_COMPONENTS[i % len(RUN_COMPONENTS)]), "━")
                               for i, (label, _) in enumerate(overlays)], xlabel="step · lines: train, dots: val")
            self._compare(overlays, smoothing=smoothing, log_scale=log_scale)
            self.finish()
            return
        legend = [("train", self.colour("loss-plot--raw"), "━")]
        if smoothing > 0:
            legend.append(("smoothed", self.colour("loss-plot--smoothed"), "━"))
        legend.append(("val", self.colour("loss-plot--val"), "•"))
        self.start(title, legend)
        plt = self.plt
        if len(state.loss) == 0:
            self.wait("loss · waiting for the first steps")
            self.finish()
            return
        cols = state.loss.thin(self.columns)
        x, y = finite_pairs(cols.x, cols.mean, positive=log_scale)
        scale = log10_all if log_scale else list
        y = scale(y)
        if x:
            plt.plot(x, y, color=self.colour("loss-plot--raw"))
        sx, sy = state.loss.ema(smoothing, self.columns)
        sx, sy = finite_pairs(sx, sy, positive=log_scale)
        sy = scale(sy)
        if sx and smoothing > 0:
            plt.plot(sx, sy, color=self.colour("loss-plot--smoothed"))
        vx, vy = finite_pairs([p[1] for p in state.val_loss.points()], [p[2] for p in state.val_loss.points()],
                              positive=log_scale)
        vy = scale(vy)
        if vx:
            plt.plot(vx, vy, color=self.colour("loss-plot--val"), marker="dot")
        lo, hi = (cols.x[0], cols.x[-1]) if cols.x else (0, 1)
        for step, kind, _label in state.marks.in_range(lo, hi):
            if kind in MARK_COMPONENTS:  # stops and hints are drawn in pictures (tui/plot.py), not here
                plt.vline(step, self.colour(MARK_COMPONENTS[kind]))
        all_x = x + vx
        if all_x:
            self.integer_xticks(min(all_x), max(all_x))
        all_y = y + (sy if smoothing > 0 else []) + vy
        if log_scale and all_y:
            self.log_yticks(min(all_y), max(all_y))
        elif all_y and flat(min(all_y), max(all_y)):
            self.linear_yticks(min(all_y), max(all_y))  # a loss that does not move: one clean label
        self.finish()

    def _compare(self, runs: Sequence[tuple[str, DashboardState]], *, smoothing: float, log_scale: bool) -> None:
        """Each run in its colour: the (smoothed) training loss, validation points; bounded by the width."""
        plt, scale = self.plt, (log10_all if log_scale else list)
        all_x: list[float] = []
        all_y: list[float] = []
        for index, (label, state) in enumerate(runs):
            colour = self.colour(RUN_COMPONENTS[index % len(RUN_COMPONENTS)])
            if len(state.loss):
                if smoothing > 0:
                    x, y = state.loss.ema(smoothing, self.columns)
                else:
                    cols = state.loss.thin(self.columns)
                    x, y = cols.x, cols.mean
                x, y = finite_pairs(x, y, positive=log_scale)
                y = scale(y)
                if x:
                    plt.plot(x, y, color=colour)
                    all_x += [x[0], x[-1]]
                    all_y += [min(y), max(y)]
            points = state.val_loss.points()
            vx, vy = finite_pairs([p[1] for p in points], [p[2] for p in points], positive=log_scale)
            vy = scale(vy)
            if vx:
                plt.scatter(vx, vy, color=colour, marker="dot")
                all_x += [vx[0], vx[-1]]
                all_y += [min(vy), max(vy)]
        if not all_x:
            self.wait("loss · waiting for the first steps")
            return
        self.integer_xticks(min(all_x), max(all_x))
        if log_scale:
            self.log_yticks(min(all_y), max(all_y))
