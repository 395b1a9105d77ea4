"""The learning-rate plan from the engine's preview, the LR used so far, and now."""

from __future__ import annotations

from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.plot_base import TrainPlot, finite_pairs


class LRPlot(TrainPlot):
    COMPONENT_CLASSES = {"lr-plot--plan", "lr-plot--used", "lr-plot--now"}

    def replot(self, state: DashboardState) -> None:
        title = "LR" if state.lr is None else f"LR {state.lr:.2e}"
        used = ("used", self.colour("lr-plot--used"), "━")
        if state.own_loop and not state.plan_steps:
            # A user's own loop: its scheduler's plan is not known ahead, only the LR each step used.
            self.start(title, [("used (no plan)", used[1], used[2])])
        else:
            self.start(title, [("plan", self.colour("lr-plot--plan"), "━"), used])
        plt = self.plt
        px, py = finite_pairs(state.plan_steps, state.plan_lrs)
        if px:
            plt.plot(px, py, color=self.colour("lr-plot--plan"))
        if len(state.lr_used):
            cols = state.lr_used.thin(self.columns)
            ux, uy = finite_pairs(cols.x, cols.last)
            if ux:
                plt.plot(ux, uy, color=self.colour("lr-plot--used"))
                plt.scatter([ux[-1]], [uy[-1]], color=self.colour("lr-plot--now"), marker="o")
        xs = px + [int(v) for v in (state.lr_used.thin(2).x if len(state.lr_used) else [])]
        ys = py + (uy if len(state.lr_used) and ux else [])
        if xs:
            self.integer_xticks(min(xs), max(xs), count=4)
        if ys:
            self.linear_yticks(min(ys), max(ys))
        else:
            self.wait(title)
        self.waiting = self.waiting or state.lr is None
        self.finish()
