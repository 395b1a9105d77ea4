"""Training loss per step (raw and smoothed) and validation loss per epoch."""

from __future__ import annotations

from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.plot_base import TrainPlot, finite_pairs, log10_all

MARK_COMPONENTS = {"lr": "loss-plot--mark-lr", "pause": "loss-plot--mark-pause",
                   "checkpoint": "loss-plot--mark-checkpoint", "nan": "loss-plot--mark-nan"}


class LossPlot(TrainPlot):
    COMPONENT_CLASSES = {"loss-plot--raw", "loss-plot--smoothed", "loss-plot--val", *MARK_COMPONENTS.values()}

    def replot(self, state: DashboardState, *, smoothing: float, log_scale: bool) -> None:
        title = f"loss  (smoothing {smoothing:.2f}{', log' if log_scale else ''})"
        self.start(title)
        plt = self.plt
        if len(state.loss) == 0:
            plt.title("loss: waiting for the first steps")
            self.finish()
            return
        cols = state.loss.thin(self.columns)
        x, y = finite_pairs(cols.x, cols.mean, positive=log_scale)
        scale = log10_all if log_scale else list
        y = scale(y)
        if x:
            plt.plot(x, y, color=self.colour("loss-plot--raw"), label="train")
        sx, sy = state.loss.ema(smoothing, self.columns)
        sx, sy = finite_pairs(sx, sy, positive=log_scale)
        sy = scale(sy)
        if sx and smoothing > 0:
            plt.plot(sx, sy, color=self.colour("loss-plot--smoothed"), label="smoothed")
        vx, vy = finite_pairs([p[1] for p in state.val_loss.points()], [p[2] for p in state.val_loss.points()],
                              positive=log_scale)
        vy = scale(vy)
        if vx:
            plt.plot(vx, vy, color=self.colour("loss-plot--val"), marker="dot", label="val")
        lo, hi = (cols.x[0], cols.x[-1]) if cols.x else (0, 1)
        for step, kind, _label in state.marks.in_range(lo, hi):
            plt.vline(step, self.colour(MARK_COMPONENTS.get(kind, "loss-plot--mark-lr")))
        all_x = x + vx
        if all_x:
            self.integer_xticks(min(all_x), max(all_x))
        all_y = y + (sy if smoothing > 0 else []) + vy
        if log_scale and all_y:
            self.log_yticks(min(all_y), max(all_y))
        plt.xlabel("step")
        self.finish()
