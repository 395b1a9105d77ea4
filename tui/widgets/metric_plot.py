"""Training and validation metric per epoch (accuracy, or the preset's regression metric)."""

from __future__ import annotations

from typing import Sequence

from tuitrain.tui.state import DashboardState
from tuitrain.tui.widgets.plot_base import RUN_COMPONENTS, TrainPlot, finite_pairs


class MetricPlot(TrainPlot):
    COMPONENT_CLASSES = {"metric-plot--train", "metric-plot--val", *RUN_COMPONENTS}

    def replot(self, state: DashboardState, overlays: Sequence[tuple[str, DashboardState]] = ()) -> None:
        """`overlays` (`tuitrain watch a b`): each run's validation metric in its own colour."""
        name = "accuracy" if state.metric == "acc" else state.metric
        plt = self.plt
        if overlays:
            self.start(f"val {name}", [(label, self.colour(RUN_COMPONENTS[i % len(RUN_COMPONENTS)]), "•")
                                                   for i, (label, _) in enumerate(overlays)], xlabel="epoch")
            epochs = []
            for index, (label, run) in enumerate(overlays):
                points = run.val_metric.points()
                x, y = finite_pairs([p[0] for p in points], [p[2] for p in points])
                if x:
                    plt.plot(x, y, color=self.colour(RUN_COMPONENTS[index % len(RUN_COMPONENTS)]), marker="dot")
                    epochs += [x[0], x[-1]]
            if epochs:
                self.integer_xticks(min(epochs), max(epochs), count=min(5, max(epochs) - min(epochs) + 1))
            else:
                self.wait(f"{name} · after the first epoch")
            self.finish()
            return
        self.start(name, [("train", self.colour("metric-plot--train"), "•"),
                                         ("val", self.colour("metric-plot--val"), "•")], xlabel="epoch")
        for series, label, component in ((state.train_metric, "train", "metric-plot--train"),
                                         (state.val_metric, "val", "metric-plot--val")):
            points = series.points()
            x, y = finite_pairs([p[0] for p in points], [p[2] for p in points])
            if x:
                plt.plot(x, y, color=self.colour(component), marker="dot")
        epochs = [p.epoch for p in state.val_metric.points()] + [p.epoch for p in state.train_metric.points()]
        if epochs:
            self.integer_xticks(min(epochs), max(epochs), count=min(5, max(epochs) - min(epochs) + 1))
        if not state.val_metric.points():
            self.wait(f"{name} · after the first epoch")
        self.finish()
