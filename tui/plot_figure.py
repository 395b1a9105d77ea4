"""The picture `tuitrain plot` writes: a run's curves drawn by matplotlib (Agg, no pyplot).

Three panels over the same step axis, as on the dashboard: the training loss
(the column means faint, the TensorBoard-style EMA over them strong, the
validation loss as points), the metric per evaluation (validation and
training), and the LR each step used. Every intervention the run recorded
(DashboardState.marks: LR change, pause, checkpoint, NaN, stop, hint) is a
dashed vertical line at its step on every panel, coloured by kind; in an SVG
each line is a group whose id names it, `<event>-<panel>-<run>-<step>` (for
example `lr_changed-loss-0-120`). Several runs share the panels, one colour
each. The title gives each run's name, preset, status, steps and final numbers.

Every series is thinned to about the picture's width in pixels
(history.Series.thin), so drawing costs the same after a million steps.
Imported only by `tuitrain plot` once matplotlib is known to be there.
"""

from __future__ import annotations

import math
from typing import IO, TYPE_CHECKING, Any, Sequence

import matplotlib

matplotlib.use("Agg")  # never a window: the picture goes to a file

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from tuitrain.engine import events as ev  # noqa: E402

if TYPE_CHECKING:
    from tuitrain.tui.plot import RunRecord

#: A mark's kind (DashboardState.marks) -> the event it stands for (named in the SVG id), its legend
#: label and its colour.
MARKS: dict[str, tuple[str, str, str]] = {
    "lr": (ev.LRChanged.name, "LR change", "#d62728"),
    "pause": (ev.Paused.name, "pause", "#7f7f7f"),
    "checkpoint": (ev.CheckpointSaved.name, "checkpoint", "#2ca02c"),
    "nan": (ev.NonFinite.name, "NaN/Inf", "#ff00ff"),
    "stop": (ev.Stopped.name, "stop", "#000000"),
    "hint": (ev.Hint.name, "hint", "#9467bd"),
}
#: One colour per run, in the order given (repeats after ten runs).
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f")
#: A single run's validation points get their own colour, as on the dashboard.
VAL_COLOUR = "#ff7f0e"
#: Title lines: one per run, at most this many (then "and N more").
TITLE_RUNS = 6
#: matplotlib settings for the picture, applied while it is drawn and saved (never globally).
STYLE: dict[str, Any] = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": "small",
    "legend.framealpha": 0.8,
    "svg.hashsalt": "tuitrain",  # the same run gives the same SVG
    "svg.fonttype": "none",  # text stays text: selectable, searchable, and the file smaller
}
PANELS = ("loss", "metric", "lr")


def draw(runs: Sequence[RunRecord], *, size: tuple[int, int], dpi: int, smoothing: float,
         log_scale: bool) -> Figure:
    """The figure for `runs` (at least one), exactly size[0] x size[1] pixels at `dpi`."""
    width, height = size
    columns = max(64, min(4096, width))  # about one column per pixel: more would not show
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
        loss_ax, metric_ax, lr_ax = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": (2.2, 1, 1)})
        several = len(runs) > 1
        for index, run in enumerate(runs):
            colour = RUN_COLOURS[index % len(RUN_COLOURS)]
            _loss(loss_ax, run, colour, VAL_COLOUR if not several else colour, smoothing, columns)
            _metric(metric_ax, run, colour)
            _lr(lr_ax, run, colour, columns)
        kinds = _marks(runs, dict(zip(PANELS, (loss_ax, metric_ax, lr_ax))))
        _decorate(loss_ax, metric_ax, lr_ax, runs, smoothing=smoothing, log_scale=log_scale, kinds=kinds)
        fig.suptitle(title(runs, smoothing), fontsize="medium", wrap=True)
    return fig


def save(fig: Figure, file: IO[bytes], fmt: str) -> None:
    """Write the picture as `fmt` ('png' or 'svg') at the figure's own size."""
    with matplotlib.rc_context(STYLE):
        fig.savefig(file, format=fmt, dpi=fig.dpi)


# -- the panels -------------------------------------------------------------------------------------

def _finite(values: Sequence[float | None]) -> list[float]:
    """NaN for what cannot be drawn (a gap in the line): None, NaN, +-inf."""
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def _loss(ax: Axes, run: RunRecord, colour: str, val_colour: str, smoothing: float, columns: int) -> None:
    state = run.state
    cols = state.loss.thin(columns)
    if len(cols):
        ax.plot(cols.x, _finite(cols.mean), color=colour, alpha=0.3, linewidth=0.8)
        if smoothing > 0:
            ax.plot(cols.x, _finite(cols.ema(smoothing)), color=colour, linewidth=1.8)
    points = state.val_loss.points()
    if points:
        ax.plot([p.step for p in points], _finite([p.value for p in points]), color=val_colour,
                marker="o", markersize=3.5, linestyle="--", linewidth=0.8)


def _metric(ax: Axes, run: RunRecord, colour: str) -> None:
    state = run.state
    val, train = state.val_metric.points(), state.train_metric.points()
    if val:
        ax.plot([p.step for p in val], _finite([p.value for p in val]), color=colour, marker="o", markersize=3,
                linewidth=1.4)
    if train:
        ax.plot([p.step for p in train], _finite([p.value for p in train]), color=colour, linestyle=":",
                linewidth=1.2)


def _lr(ax: Axes, run: RunRecord, colour: str, columns: int) -> None:
    cols = run.state.lr_used.thin(columns)
    if len(cols):
        ax.plot(cols.x, _finite(cols.mean), color=colour, linewidth=1.4)


def _marks(runs: Sequence[RunRecord], axes: dict[str, Axes]) -> list[str]:
    """Every run's interventions on every panel; returns the kinds drawn, in MARKS order."""
    seen: set[str] = set()
    for index, run in enumerate(runs):
        for mark in run.state.marks:
            if mark.kind not in MARKS:
                continue
            event, _label, colour = MARKS[mark.kind]
            seen.add(mark.kind)
            for panel, ax in axes.items():
                ax.axvline(mark.step, color=colour, linestyle=(0, (4, 3)), linewidth=1.0, alpha=0.75, zorder=1,
                           gid=f"{event}-{panel}-{index}-{mark.step}")
    return [kind for kind in MARKS if kind in seen]


def _decorate(loss_ax: Axes, metric_ax: Axes, lr_ax: Axes, runs: Sequence[RunRecord], *, smoothing: float,
              log_scale: bool, kinds: list[str]) -> None:
    several = len(runs) > 1
    grey = "#555555"
    if several:
        handles = [Line2D([], [], color=RUN_COLOURS[i % len(RUN_COLOURS)], linewidth=2, label=label)
                   for i, label in enumerate(run_labels(runs))]
        base = grey
    else:
        handles = []
        base = RUN_COLOURS[0]
    handles += [Line2D([], [], color=base, alpha=0.3, linewidth=0.8, label="train (raw)")]
    if smoothing > 0:
        handles.append(Line2D([], [], color=base, linewidth=1.8, label=f"train (smoothed {smoothing:.2f})"))
    handles.append(Line2D([], [], color=grey if several else VAL_COLOUR, marker="o", markersize=3.5,
                          linestyle="--", linewidth=0.8, label="val"))
    loss_ax.legend(handles=handles, loc="upper right")
    loss_ax.set_ylabel("loss" + (" (log)" if log_scale else ""))
    if log_scale:
        loss_ax.set_yscale("log")
    if not any(len(run.state.loss) for run in runs):
        loss_ax.text(0.5, 0.5, "no steps recorded yet", transform=loss_ax.transAxes, ha="center", va="center",
                     color=grey)

    metrics = sorted({run.state.metric for run in runs if run.state.val_metric})
    metric_ax.set_ylabel(" / ".join(metrics) if metrics else "metric")
    if metrics:
        metric_ax.legend(handles=[Line2D([], [], color=base, marker="o", markersize=3, linewidth=1.4, label="val"),
                                  Line2D([], [], color=base, linestyle=":", linewidth=1.2, label="train")],
                         loc="best")
    else:
        metric_ax.text(0.5, 0.5, "no evaluations yet", transform=metric_ax.transAxes, ha="center", va="center",
                       color=grey)

    lr_ax.set_ylabel("LR used")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if kinds:
        lr_ax.legend(handles=[Line2D([], [], color=MARKS[k][2], linestyle=(0, (4, 3)), linewidth=1.0,
                                     label=MARKS[k][1]) for k in kinds], loc="best", ncols=min(3, len(kinds)))
    lr_ax.set_xlabel("step")
    lr_ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    lr_ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: short_number(x)))


# -- words --------------------------------------------------------------------------------------------

def short_number(x: float) -> str:
    """A step count for an axis: 950, 12.5k, 1M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{suffix}"
    return f"{x:.4g}"


def _num(value: float | None) -> str:
    return "--" if value is None or not math.isfinite(value) else f"{value:.4g}"


def run_labels(runs: Sequence[RunRecord]) -> list[str]:
    """Each run's name, or its path as given where two runs share a name."""
    names = [run.name for run in runs]
    return [str(run.path) if names.count(run.name) > 1 else run.name for run in runs]


def final_loss(run: RunRecord, smoothing: float) -> float | None:
    """Where the drawn training loss ends: the last smoothed value (the last column's mean at 0)."""
    cols = run.state.loss.thin(512)
    curve = cols.ema(smoothing) if smoothing > 0 else cols.mean
    return next((v for v in reversed(curve) if math.isfinite(v)), None)


def run_line(run: RunRecord, label: str, smoothing: float) -> str:
    """name · preset · STATUS · steps · final loss, val loss, val metric."""
    s = run.state
    parts = [label, s.preset, run.status, f"{s.step:,} steps",
             f"loss {_num(final_loss(run, smoothing))}"]
    val = s.val_loss.last
    if val is not None:
        parts.append(f"val loss {_num(val.value)}")
    metric = s.val_metric.last
    if metric is not None:
        parts.append(f"val {s.metric} {_num(metric.value)}")
    return " · ".join(parts)


def title(runs: Sequence[RunRecord], smoothing: float) -> str:
    labels = run_labels(runs)
    lines = [run_line(run, label, smoothing) for run, label in zip(runs[:TITLE_RUNS], labels)]
    if len(runs) > TITLE_RUNS:
        lines.append(f"and {len(runs) - TITLE_RUNS} more")
    return "\n".join(lines)
