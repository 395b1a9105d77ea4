"""Name the training patterns tutorials teach people to spot, as short hints.

Each rule is a small pure function over the metric history that returns a
`Finding` (what pattern, the evidence in steps/epochs and numbers, the usual
remedy) or None. `Diagnostician` owns the bounded history in the engine thread,
runs the rules, and hands back only the findings that are new, so the dashboard
gets one hint per episode, not one per flush.

Step losses are summarised in fixed-size `Window`s of WINDOW_STEPS optimizer
steps (finite losses only), and the step rules run every CHECK_EVERY windows.
Windows and checks are cut by step count, not by flush, so the same run gives
the same hints on a fast machine and a slow one, and a run whose whole life
fits in one flush (a tiny model diverging in 30 steps) still has a trend to
read. The very first window holds the first step alone: the loss before any
update, the only clean "start" level when a huge learning rate blows the loss
up at step 2. Every rule compares levels (window means) with the run's own
start, best or noise, never raw per-step variance, so batch-size-1 noise is not
mistaken for a too-high learning rate.

Thresholds were calibrated on recorded runs of the built-in presets (see
tests/perf/calibrate_diagnosis.py): each constant says what it separates.

Standard library only: runs in the engine thread, imports neither torch nor textual.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

__all__ = [
    "Diagnostician", "EpochPoint", "Finding", "Window",
    "input_bound", "lr_too_high", "lr_too_low", "nan_rule", "overfitting", "underfitting",
]

_isfinite = math.isfinite

# -- windows and memory ----------------------------------------------------------------
WINDOW_STEPS = 25
"""Finite losses per window: 400 samples at batch 16, 25 at batch 1 (enough for a mean
that the rules then compare over 3-4 windows), while a rise that lasts 3 windows
(75 steps) is already called sustained."""
CHECK_EVERY = 2
"""The step rules run after every 2nd window closes (every 50 steps): at fixed steps, so
the hints do not depend on how many steps a flush carries, at a cost that does not grow
with the step rate faster than the steps themselves (about 60 us per check)."""
HEAD_WINDOWS = 4
"""Windows kept from the start of the run (step 1 alone, then 3 full windows): the
'since the start' reference, whatever the run's length."""
RECENT_WINDOWS = 48
"""Latest windows kept (1,200 steps): the lowest of them is the 'best' a divergence
is measured from; the other rules read the last 8."""
EPOCHS_KEPT = 64
"""Latest evaluations kept for the epoch rules (they look at the last few)."""
WAITS_KEPT = 8
"""Latest data-wait fractions kept (about 2 s of flushes at 4 Hz)."""

# -- LR too high -----------------------------------------------------------------------
HIGH_RECENT = 3
"""Windows that must all be elevated (their lowest mean is the 'recent level'), so a
single spike that recovers never counts: it lifts one window, not three."""
EXPLODE_FACTOR = 20.0
"""A step loss 20x the start level is an explosion... Recorded healthy runs peak at
1-2.3x, batch 1 at 11x (one confidently wrong sample, cross-entropy 7.6 against a
start of 0.69); Adam at lr 1 on circles jumps 150x at step 2, lr 10 37,000x."""
EXPLODE_MEAN_FACTOR = 3.0
"""...and that window's mean at least 3x the start: a whole window blown up, not one
heavy-tailed sample (healthy recorded runs, batch 1 included, never lift a window's
mean above 1.12x the start; Adam lr 1 on circles lifts steps 2-26 to 7.5x)."""
STUCK_FRACTION = 0.9
"""After an explosion, a recent level still above 90% of the first loss means the run
never recovered (Adam lr 1-10 on circles sits at 0.72-1.6 against a start of 0.69-0.71;
healthy circles, moons and xor runs are below 50% of their start within 100 steps)."""
ABOVE_START = 1.1
"""Recent level 10% above the mean of the first ~25 steps, for 3 windows running: the
updates make the model worse than untrained (SGD lr 1 on circles: 0.72-0.87 against 0.63;
lr 10: 2-12 against 3.6). Healthy runs never come back to their start level."""
DIVERGE_RATIO = 2.0
LOST_FRACTION = 0.5
"""Divergence after learning: the recent level at least doubled from the best window
and gave back at least half of the progress made since the start. A converged run's
noisy windows (circles, lr 0.01: best 0.013, worst run of 3 windows 0.054 against a
start of 0.6) give back about 7%."""

# -- LR too low ------------------------------------------------------------------------
LOW_MIN_STEPS = 300
"""Steps before judging slowness: by step 300 every built-in preset at its defaults has
shed 44-95% of its starting loss (3 seeds each; spiral, the slowest, only 4-6% by
step 100, so an earlier verdict would be wrong)."""
LOW_MIN_WINDOWS = 8
LOW_RECENT = 4
"""Windows averaged for the recent level (100 steps)."""
LOW_PROGRESS = 0.10
"""Less than 10% of the starting loss shed after >= 300 steps is 'barely moving'
(circles at lr 1e-4 has shed 3% by step 300 and 8% by step 625; at the default lr
0.01, 52-64% by step 100)."""
LOW_TREND = 0.01
"""Only wording: the last 100 steps at least 1% (of the start) below the 100 before them
is a slow but real descent ('falling, but slowly': circles at lr 1e-4, 1.6% at step 375);
less is flat ('not moving': a linear model on circles sits at 0.69, a coin toss), which
a too-low LR explains no better than a bug or a model that cannot fit."""
LOW_MAX_RISE = 0.05
"""A recent level more than 5% above the start is not 'slow' but 'worse': LR too high's
territory, never called too low."""

# -- overfitting / underfitting -----------------------------------------------------------
OVERFIT_EPOCHS = 4
"""Epochs without a better validation loss before a rise counts (with early stopping
set: min(4, patience), at least 1). SGD lr 0.1 on circles rises 3 epochs running
(0.037 -> 0.069) and then recovers: validation noise, not overfitting."""
OVERFIT_RECENT = 3
"""The 'now' level is the median of the last 3 epochs: two of them must be up, so one
bad epoch is not a rise."""
OVERFIT_MIN_RISE = 0.08
"""'Now' at least 8% above the best validation loss,"""
OVERFIT_MIN_ABS = 0.05
"""...by at least 5% of the loss before training: near zero a validation loss doubles
on noise alone (circles, seed 2: 0.015 -> 0.04 at epoch 27 is 4% of its start 0.63),"""
OVERFIT_NOISE = 2.5
"""...and by at least 2.5x the validation loss's own noise (its standard deviation,
estimated from the median second difference between epochs, which a steady trend does
not inflate). Healthy recorded runs (circles, moons, xor, spiral, 3-4 seeds each) never
pass all three tests (the closest: circles seed 3, 1.9x); the overfit preset passes at
epoch 14 (best 0.475 at epoch 8, median of epochs 12-14 0.566, train 0.36 -> 0.25,
patience 6/10 used), with seeds 1 and 3 at epochs 17 and 9; an earlier version of it,
kept in the tests, at epoch 17 of 22."""
OVERFIT_TRAIN_FALL = 0.02
"""Over the same epochs the training loss fell by at least 2% (both rising is
instability, not the train/val divergence that defines overfitting)."""
UNDER_MIN_EPOCHS = 5
UNDER_PLATEAU_EPOCHS = 3
UNDER_PLATEAU = 0.02
"""Plateau: the last 3 epochs improved the best train and val loss by less than 2%."""
UNDER_FLAT = 0.05
"""...and the last 3 train and validation losses lie within 5% of each other and of the
best before them (a flat line, not the bouncing of a too-high LR nor a rise; the
emulated overfit run bounces 10%)."""
UNDER_HIGH = 0.5
"""High: the validation loss is still at least half of the loss before training
(a linear model on circles stays at 95%, a 3-unit spiral model at 91%; healthy circles,
moons and xor runs end at 3-16%)."""
UNDER_GAP = 0.7
"""Train loss at least 70% of the validation loss: both high, no generalisation gap."""

# -- input-bound -----------------------------------------------------------------------
INPUT_MIN_WINDOWS = 4
INPUT_BOUND_FRACTION = 0.3
"""The median flush spent >= 30% of its step time waiting for the next batch: the input
pipeline, not the model, sets the pace (in-memory tensor batches wait < 5%)."""
INPUT_CLEAR_FRACTION = 0.15
GPU_BUSY_UTIL = 80.0
"""On a GPU, utilisation at or above 80% means the waiting overlaps with busy compute."""

# -- hysteresis ------------------------------------------------------------------------
REARM_WINDOWS = 20
"""A step rule fires again only after it stopped holding for 20 new windows (500 steps):
SGD at lr 100 on circles dips below its start level for a few hundred steps at a time."""
REARM_EPOCHS = 3
REARM_FLUSHES = 8


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what pattern, the evidence, the usual remedy (a Hint event's body)."""

    rule: str
    """'nan', 'lr_too_high', 'lr_too_low', 'overfitting', 'underfitting' or 'input_bound'."""
    message: str
    evidence: str
    remedy: str
    severity: str = "warning"
    """'warning' or 'info'."""
    step: int | None = None
    """The optimizer step the pattern was judged at (set by the Diagnostician): it depends on
    the run alone, not on when a flush came, so a resumed run's hints match a never-stopped one's."""


@dataclass(frozen=True)
class Window:
    """The finite losses of consecutive optimizer steps, summarised."""

    first_step: int
    last_step: int
    mean: float
    min: float
    max: float
    count: int


@dataclass(frozen=True)
class EpochPoint:
    """One end-of-epoch evaluation."""

    epoch: int
    step: int
    train_loss: float | None
    val_loss: float


def _g(value: float) -> str:
    """Numbers in evidence strings: 3 significant digits."""
    return f"{value:.3g}"


def _steps(w: Window) -> str:
    return f"step {w.first_step}" if w.first_step == w.last_step else f"steps {w.first_step}-{w.last_step}"


def _span(a: Window, b: Window) -> str:
    return f"step {a.first_step}" if a.first_step == b.last_step else f"steps {a.first_step}-{b.last_step}"


# -- rules -----------------------------------------------------------------------------
_NAN_REMEDY = ("lower the learning rate (press l), 3-10x, or clip gradients (--grad-clip 1); "
               "check the data for NaN/Inf; with float16 AMP try bfloat16")


def nan_rule(step: int, action: str, what: str = "training loss",
             rolled_back_to: int | None = None, count: int = 1) -> Finding:
    """The loss went NaN/Inf: always a finding; the evidence says what the NaN guard did."""
    if action == "pause":
        done = (f"paused; weights rolled back to the checkpoint at step {rolled_back_to}"
                if rolled_back_to is not None else "paused; no checkpoint to roll back to")
    elif action == "skip":
        done = (f"{count} steps skipped from step {step}" if count > 1 else f"step {step} skipped") + \
            " (--on-nan skip)"
    else:
        done = "the run stopped (--on-nan stop)"
    return Finding("nan", f"{what[:1].upper()}{what[1:]} became NaN/Inf at step {step}", done, _NAN_REMEDY,
                   step=step)


class _Start(NamedTuple):
    """Where a run started, estimated from its first windows."""

    first: float
    """The first window's mean: the Diagnostician's first window is step 1 alone, the
    loss before any update, the only clean level when a huge LR blows up step 2."""
    typical: float
    """The larger of `first` and the lower of the next two windows' means: robust to a
    lucky first batch (batch size 1)."""
    early: float
    """The mean over the first ~WINDOW_STEPS steps."""
    early_steps: str
    """Those steps, for evidence strings."""


def _start(windows: Sequence[Window]) -> _Start:
    first = windows[0].mean
    nxt = [w.mean for w in windows[1:3]]
    typical = max(first, min(nxt)) if len(nxt) == 2 else first
    limit = windows[0].first_step + WINDOW_STEPS
    used = [w for w in windows if w.first_step <= limit]
    return _Start(first, typical, _mean(used), _span(used[0], used[-1]))


def _mean(windows: Sequence[Window]) -> float:
    """Mean loss over the steps of several windows."""
    return sum(w.mean * w.count for w in windows) / sum(w.count for w in windows)


def _positive(windows: Sequence[Window]) -> bool:
    """Relative rules need a loss that cannot go negative (a negative NLL has no 'x times
    higher'); single steps at exactly 0 are fine (batch-1 cross-entropy underflows to 0)."""
    return all(w.min >= 0 and w.mean > 0 and _isfinite(w.max) and _isfinite(w.mean) for w in windows)


def _exploded(windows: Sequence[Window], typical: float) -> bool:
    """Some window after the first jumped: its largest loss and its mean both far above the start."""
    return any(w.max >= EXPLODE_FACTOR * typical and w.mean >= EXPLODE_MEAN_FACTOR * typical
               for w in windows[1:])


def lr_too_high(windows: Sequence[Window], nonfinite_step: int | None = None) -> Finding | None:
    """The loss exploded and never recovered, sits above where it started, or diverged.

    `windows` run from the start of the run (windows[0] is its first window) to now.
    Every test needs HIGH_RECENT windows after the first that are all elevated, so
    per-step noise (batch size 1) and a single spike that recovers do not count. With
    `nonfinite_step` (the loss just went NaN/Inf there) one window is enough: the run
    is ending and the finite losses before the NaN are all the evidence there is.
    """
    k = HIGH_RECENT if nonfinite_step is None else 1
    # Every test compares with the run's start: without step 1 (a run resumed from a
    # checkpoint that carried no diagnosis state) there is no start to compare with.
    if len(windows) < 1 + k or windows[0].first_step > 1 or not _positive(windows):
        return None
    start = _start(windows)
    first, typical, early = start.first, start.typical, start.early
    recent = windows[-min(HIGH_RECENT, len(windows) - 1):]
    level = min(w.mean for w in recent)
    tail = f", then NaN/Inf at step {nonfinite_step}" if nonfinite_step is not None else ""
    remedy = "lower the learning rate (press l), 3-10x; --grad-clip 1 also tames spikes"

    peak = max(windows[1:], key=lambda w: w.max)
    if _exploded(windows, typical) and level >= STUCK_FRACTION * first:
        return Finding(
            "lr_too_high", "LR too high: the loss exploded and has not recovered",
            f"loss jumped from {_g(first)} ({_steps(windows[0])}) to {_g(peak.max)} ({_steps(peak)}); "
            f"mean still at least {_g(level)} over {_span(recent[0], recent[-1])}{tail}", remedy)
    if level >= ABOVE_START * early:
        return Finding(
            "lr_too_high", "LR too high: the loss is above where it started",
            f"mean loss at least {_g(level)} over {_span(recent[0], recent[-1])} against {_g(early)} over "
            f"{start.early_steps}{tail}", remedy)
    before = windows[1:len(windows) - len(recent)]
    if before:
        best = min(before, key=lambda w: w.mean)
        lost = (level - best.mean) / (early - best.mean) if early > best.mean else math.inf
        if level >= DIVERGE_RATIO * best.mean and lost >= LOST_FRACTION:
            return Finding(
                "lr_too_high", "LR too high: the loss is diverging",
                f"mean loss rose from {_g(best.mean)} ({_steps(best)}) to at least {_g(level)} "
                f"({_span(recent[0], recent[-1])}){tail}", remedy)
    return None


def lr_too_low(windows: Sequence[Window]) -> Finding | None:
    """After many steps the loss has barely moved from where it started: LR too low, or a bug.

    Judged only from the start of training (windows[0] begins at step 1): a resumed
    or rolled-back run that is already converged also 'barely moves'. Never when
    the loss is above its start or exploded (that is LR too high, the opposite advice).
    """
    if len(windows) < LOW_MIN_WINDOWS or windows[0].first_step > 1 or not _positive(windows):
        return None
    if windows[-1].last_step - windows[0].first_step + 1 < LOW_MIN_STEPS:
        return None
    start = _start(windows)
    typical, early = start.typical, start.early
    if _exploded(windows, typical):
        return None
    recent = windows[-LOW_RECENT:]
    level = _mean(recent)
    progress = (early - level) / early
    if progress >= LOW_PROGRESS or level > early * (1 + LOW_MAX_RISE):
        return None
    before = windows[-2 * LOW_RECENT:-LOW_RECENT] if len(windows) > 2 * LOW_RECENT else []
    falling = bool(before) and (_mean(before) - level) >= LOW_TREND * early
    message = ("LR too low: the loss is falling, but slowly" if falling
               else "LR too low, or a bug: the loss is not moving")
    if progress >= 0.005:
        change = f"{progress:.0%} lower"
    else:
        change = "no lower" if progress > -0.005 else f"{-progress:.0%} higher"
    return Finding(
        "lr_too_low", message,
        f"mean loss {_g(early)} over {start.early_steps}, "
        f"{_g(level)} over {_span(recent[0], recent[-1])}: {change} after {windows[-1].last_step} steps",
        "raise the learning rate (press l), 3-10x; if it still does not move, check the labels, "
        "the loss and the model's size")


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _noise(values: Sequence[float]) -> float:
    """Standard deviation of the noise around a smooth trend: median |second difference| / 1.65.

    For white noise of deviation s a second difference has deviation s*sqrt(6), and the
    median of its absolute value is 0.674 * 2.449 * s = 1.65 * s; a linear trend adds nothing.
    """
    if len(values) < 3:
        return 0.0
    return _median([abs(values[i + 1] - 2 * values[i] + values[i - 1]) for i in range(1, len(values) - 1)]) / 1.65


def overfitting(epochs: Sequence[EpochPoint], patience: int | None = None, bad_epochs: int = 0,
                initial_loss: float | None = None) -> Finding | None:
    """Validation loss rising for several epochs while the training loss falls.

    'Rising' is the median of the last few epochs against the best epoch, and the rise
    must stand out from the validation loss's own epoch-to-epoch noise and be a real
    share of `initial_loss` (the loss before training; without it, the first epoch's
    training loss, or the highest validation loss kept).
    """
    pts = [p for p in epochs if _isfinite(p.val_loss)]
    need = OVERFIT_EPOCHS if not patience else max(1, min(OVERFIT_EPOCHS, patience))
    if len(pts) < need + 2:
        return None
    best_i = min(range(len(pts)), key=lambda i: pts[i].val_loss)
    best, last = pts[best_i], pts[-1]
    if len(pts) - 1 - best_i < need or best.val_loss <= 0:
        return None
    recent = pts[-min(OVERFIT_RECENT, need):]
    now = _median([p.val_loss for p in recent])
    rise = now - best.val_loss
    if initial_loss is None or not _isfinite(initial_loss):
        first_train = pts[0].train_loss
        initial_loss = (first_train if pts[0].epoch == 1 and first_train is not None and _isfinite(first_train)
                        else max(p.val_loss for p in pts))
    if (rise < OVERFIT_MIN_RISE * best.val_loss or rise < OVERFIT_MIN_ABS * initial_loss
            or rise < OVERFIT_NOISE * _noise([p.val_loss for p in pts])):
        return None
    trains = [p.train_loss for p in recent if p.train_loss is not None and _isfinite(p.train_loss)]
    if best.train_loss is None or not _isfinite(best.train_loss) or not trains:
        return None
    train_now = sum(trains) / len(trains)
    if train_now > best.train_loss * (1 - OVERFIT_TRAIN_FALL):
        return None
    where = f"epoch {last.epoch}" if len(recent) == 1 else f"median of epochs {recent[0].epoch}-{last.epoch}"
    evidence = (f"val loss rose from {_g(best.val_loss)} (epoch {best.epoch}) to {_g(now)} ({where}) "
                f"while train loss fell from {_g(best.train_loss)} to {_g(train_now)}")
    if patience:
        evidence += f"; early stopping patience {bad_epochs}/{patience} used"
        remedy = "best.pt keeps the best epoch; add weight decay (--weight-decay) or dropout, or use more data"
    else:
        remedy = ("stop at the best epoch (--patience 5 keeps best.pt), add weight decay "
                  "(--weight-decay) or dropout, or use more data")
    return Finding("overfitting", "Overfitting: validation loss rising while training loss falls",
                   evidence, remedy)


def underfitting(epochs: Sequence[EpochPoint], initial_loss: float | None = None) -> Finding | None:
    """Train and validation loss both flat and still high: the model cannot fit the data (yet).

    'High' is relative to `initial_loss` (the loss before training); without it, to
    the first epoch's training loss when that is epoch 1, else not judged (a resumed,
    converged run is flat too).
    """
    pts = [p for p in epochs if _isfinite(p.val_loss) and p.train_loss is not None
           and _isfinite(p.train_loss)]
    if len(pts) < UNDER_MIN_EPOCHS:
        return None
    if initial_loss is None:
        if pts[0].epoch != 1:
            return None
        initial_loss = pts[0].train_loss
    if initial_loss is None or not _isfinite(initial_loss) or initial_loss <= 0:
        return None
    older, last3 = pts[:-UNDER_PLATEAU_EPOCHS], pts[-UNDER_PLATEAU_EPOCHS:]
    vals = [p.val_loss for p in last3]
    trains = [p.train_loss for p in last3]
    if min(vals) <= 0 or min(trains) <= 0:  # type: ignore[type-var]
        return None
    for now, before in ((vals, [p.val_loss for p in older]), (trains, [p.train_loss for p in older])):
        lo, best_before = min(now), min(before)  # type: ignore[type-var]
        if lo < best_before * (1 - UNDER_PLATEAU):  # still improving
            return None
        if lo > best_before * (1 + UNDER_FLAT) or max(now) > lo * (1 + UNDER_FLAT):  # rising or bouncing
            return None
    last = pts[-1]
    train_last: float = last.train_loss  # type: ignore[assignment]
    if last.val_loss < UNDER_HIGH * initial_loss or train_last < UNDER_GAP * last.val_loss:
        return None
    return Finding(
        "underfitting", "Underfitting: train and validation loss both plateaued high",
        f"val loss {_g(min(vals))}-{_g(max(vals))} and train loss {_g(train_last)} over epochs "
        f"{last3[0].epoch}-{last.epoch}, {last.val_loss / initial_loss:.0%} of the starting loss {_g(initial_loss)}",
        "use a bigger model, train longer, or raise the learning rate (press l)", severity="info")


def input_bound(waits: Sequence[float], gpu_util: float | None = None, device_type: str = "cpu",
                step_range: tuple[int, int] | None = None) -> Finding | None:
    """The loop spends a large share of its step time waiting for the next batch.

    `waits` are the latest flush windows' data-wait fractions (0-1). On a GPU a
    known utilisation at or above GPU_BUSY_UTIL means the compute is busy anyway.
    """
    vals = sorted(w for w in waits if w is not None and _isfinite(w))
    if len(vals) < INPUT_MIN_WINDOWS:
        return None
    median = _median(vals)
    if median < INPUT_BOUND_FRACTION:
        return None
    gpu = device_type not in ("cpu", "")
    if gpu and gpu_util is not None and gpu_util >= GPU_BUSY_UTIL:
        return None
    where = f" (steps {step_range[0]}-{step_range[1]})" if step_range else ""
    evidence = f"waiting for the next batch {median:.0%} of step time over the last {len(vals)} log windows{where}"
    if gpu and gpu_util is not None:
        evidence += f"; GPU utilisation {gpu_util:.0f}%"
    remedy = "raise --num-workers" + (" and use pin_memory" if gpu else "") + \
        "; keep small datasets as in-memory tensors"
    return Finding("input_bound", f"Input-bound: {median:.0%} of step time waiting for data",
                   evidence, remedy, severity="info")


# -- the stateful part -----------------------------------------------------------------
STATE_VERSION = 1
"""Of Diagnostician.state_dict(), saved in checkpoints as `diagnosis`."""


def _at(findings: list[Finding], step: int) -> list[Finding]:
    """The findings, marked with the step they were judged at."""
    return [f if f.step is not None else replace(f, step=step) for f in findings]


def _window(values: Sequence[Any]) -> Window:
    first, last, mean, lo, hi, count = values
    return Window(int(first), int(last), float(mean), float(lo), float(hi), int(count))


class _Gate:
    """De-duplication with hysteresis for one rule.

    A rule fires when it starts holding; while it keeps holding it is silent; once it
    stopped holding for `rearm` ticks (windows, epochs or flushes) it may fire again.
    """

    __slots__ = ("active", "quiet", "rearm", "key")

    def __init__(self, rearm: int) -> None:
        self.active = False
        self.quiet = 0
        self.rearm = rearm
        self.key: object = None

    def update(self, finding: Finding | None, ticks: int = 1, key: object = None) -> Finding | None:
        """The finding if it is new; `key` names an episode (overfitting: the best epoch),
        and a finding for the same episode never repeats, however long the pause."""
        if finding is not None:
            self.quiet = 0
            if self.active or (key is not None and key == self.key):
                return None
            self.active = True
            self.key = key
            return finding
        if self.active:
            self.quiet += ticks
            if self.quiet >= self.rearm:
                self.active = False
        return None

    def clear(self) -> None:
        self.active = False
        self.quiet = 0
        self.key = None


class Diagnostician:
    """Bounded history + de-duplication, owned by the engine thread.

    Memory is O(1) in the run's length: the first HEAD_WINDOWS windows, the last
    RECENT_WINDOWS, one partial window, the last EPOCHS_KEPT evaluations and
    WAITS_KEPT data-wait fractions.
    """

    def __init__(self, *, patience: int | None = None, device_type: str = "cpu") -> None:
        self.patience = patience or None
        self.device_type = device_type
        self._head: list[Window] = []
        self._recent: deque[Window] = deque(maxlen=RECENT_WINDOWS)
        self._epochs: deque[EpochPoint] = deque(maxlen=EPOCHS_KEPT)
        self._waits: deque[float] = deque(maxlen=WAITS_KEPT)
        self._wait_steps: deque[int] = deque(maxlen=WAITS_KEPT)
        self._last_step = 0
        self._closed = 0
        self._open_partial()
        self._gates = {
            "lr_too_high": _Gate(REARM_WINDOWS), "lr_too_low": _Gate(REARM_WINDOWS),
            "overfitting": _Gate(REARM_EPOCHS), "underfitting": _Gate(REARM_EPOCHS),
            "input_bound": _Gate(REARM_FLUSHES),
        }

    # -- steps -----------------------------------------------------------------------
    def _open_partial(self) -> None:
        self._p_first = self._p_last = 0
        self._p_sum = 0.0
        self._p_count = 0
        self._p_min = math.inf
        self._p_max = -math.inf

    def _partial(self) -> Window | None:
        if not self._p_count:
            return None
        return Window(self._p_first, self._p_last, self._p_sum / self._p_count, self._p_min,
                      self._p_max, self._p_count)

    def _close(self) -> None:
        w = self._partial()
        assert w is not None
        if len(self._head) < HEAD_WINDOWS:
            self._head.append(w)
        else:
            self._recent.append(w)
        self._open_partial()

    def _target(self) -> int:
        """Steps in the window being filled: the run's first window is its first step alone."""
        return 1 if not self._head else WINDOW_STEPS

    def _fold(self, steps: Sequence[int], values: Sequence[float], i: int, j: int) -> None:
        """Add values[i:j] (all finite, fitting in the partial window) to the partial window."""
        chunk = values[i:j]
        if not self._p_count:
            self._p_first = steps[i]
        self._p_last = steps[j - 1]
        self._p_sum += sum(chunk)
        self._p_count += j - i
        lo, hi = min(chunk), max(chunk)
        if lo < self._p_min:
            self._p_min = lo
        if hi > self._p_max:
            self._p_max = hi

    def windows(self, partial: bool = False) -> list[Window]:
        """The closed windows (head, then recent) in step order; with `partial` the one being filled too."""
        out = list(self._head)
        last = out[-1].last_step if out else 0
        out.extend(w for w in self._recent if w.first_step > last)
        part = self._partial() if partial else None
        if part is not None:
            out.append(part)
        return out

    def observe_steps(self, steps: list[int], losses: list[float], data_wait: float | None = None,
                      gpu_util: float | None = None) -> list[Finding]:
        """One flush: every optimizer step since the last one. Returns the findings that are new.

        One pass over the values in C-speed slices: the sum of a slice is finite only
        if every value is, so the common all-finite case needs no per-value check.
        Non-finite losses are left out of the windows (the NaN guard reports them).
        `gpu_util` (percent, None when unknown) only matters for input_bound on a GPU.
        """
        n = len(steps)
        if n != len(losses):
            raise ValueError(f"{n} steps but {len(losses)} losses")
        found: list[Finding] = []
        if n:
            self._forget_from(steps[0])
            self._last_step = steps[-1]
            nonfinite_step: int | None = None
            i = 0
            while i < n:
                j = min(n, i + self._target() - self._p_count)
                if _isfinite(sum(losses[i:j])):
                    self._fold(steps, losses, i, j)
                else:
                    for k in range(i, j):
                        if _isfinite(losses[k]):
                            self._fold(steps, losses, k, k + 1)
                        elif nonfinite_step is None:
                            nonfinite_step = steps[k]
                if self._p_count >= self._target():
                    self._close()
                    self._closed += 1
                    if self._closed % CHECK_EVERY == 0:
                        found += self._check_steps(CHECK_EVERY)
                i = j
            if nonfinite_step is not None:
                found += self._check_steps(1, nonfinite_step)
        if data_wait is not None and _isfinite(data_wait):
            found += self._check_wait(float(data_wait), gpu_util)
        return found

    def _forget_from(self, first: int) -> None:
        """Steps that repeat (a roll-back redoes them) replace the windows that held them."""
        if self._p_count and first <= self._p_last:
            self._open_partial()
        while self._recent and self._recent[-1].last_step >= first:
            self._recent.pop()
        while self._head and self._head[-1].last_step >= first:
            self._head.pop()

    def _check_steps(self, ticks: int, nonfinite_step: int | None = None) -> list[Finding]:
        """Run the step rules on the closed windows; before a NaN also on the partial one,
        since the run is likely ending there and every finite loss counts."""
        wins = self.windows(partial=nonfinite_step is not None)
        if not wins:
            return []
        out: list[Finding] = []
        high_gate = self._gates["lr_too_high"]
        high = lr_too_high(wins, nonfinite_step)
        r = high_gate.update(high, ticks)
        if r is not None:
            out.append(r)
        # Never 'too low' while 'too high' holds or has just held: opposite advice.
        low = None if high_gate.active else lr_too_low(wins)
        r = self._gates["lr_too_low"].update(low, ticks)
        if r is not None:
            out.append(r)
        return _at(out, nonfinite_step if nonfinite_step is not None else wins[-1].last_step)

    def _check_wait(self, wait: float, gpu_util: float | None) -> list[Finding]:
        self._waits.append(wait)
        self._wait_steps.append(self._last_step)
        span = (self._wait_steps[0], self._wait_steps[-1]) if self._wait_steps[-1] else None
        found = input_bound(self._waits, gpu_util, self.device_type, span)
        gate = self._gates["input_bound"]
        if found is None and gate.active and _median(self._waits) >= INPUT_CLEAR_FRACTION:
            gate.quiet = 0  # between the clear and the fire level: still holding
            return []
        r = gate.update(found)
        return _at([r], self._last_step) if r is not None else []

    def observe_nonfinite(self, step: int, action: str, what: str = "training loss",
                          rolled_back_to: int | None = None, count: int = 1) -> Finding:
        """A NonFinite event: always a finding (the event is on the record once each time too)."""
        return nan_rule(step, action, what, rolled_back_to, count)

    def reset_steps(self) -> None:
        """After a NaN roll-back or a resume: forget the step windows and re-arm the step rules.

        The head (the run's first windows) stays, so 'since the start' still means the
        start of training; steps that repeat replace the head windows that held them.
        """
        self._recent.clear()
        self._open_partial()
        self._gates["lr_too_high"].clear()
        self._gates["lr_too_low"].clear()

    # -- epochs ----------------------------------------------------------------------
    def observe_eval(self, epoch: int, step: int, train_loss: float | None, val_loss: float,
                     bad_epochs: int = 0) -> list[Finding]:
        """One end-of-epoch evaluation. Returns the findings that are new.

        An epoch that is not after the last one recorded (a roll-back redoes it)
        replaces the points from it on.
        """
        while self._epochs and self._epochs[-1].epoch >= epoch:
            self._epochs.pop()
        if train_loss is not None and not _isfinite(train_loss):
            train_loss = None
        self._epochs.append(EpochPoint(epoch, step, train_loss, val_loss))
        out: list[Finding] = []
        initial = self._initial_loss()
        over = overfitting(self._epochs, self.patience, bad_epochs, initial)
        best = min((p for p in self._epochs if _isfinite(p.val_loss)), key=lambda p: p.val_loss, default=None)
        r = self._gates["overfitting"].update(over, key=best.epoch if best is not None else None)
        if r is not None:
            out.append(r)
        # A high plateau that an LR problem or overfitting explains is not underfitting.
        under = None
        if over is None and not self._gates["lr_too_high"].active:
            under = underfitting(self._epochs, initial)
        r = self._gates["underfitting"].update(under)
        if r is not None:
            out.append(r)
        return _at(out, step)

    def _initial_loss(self) -> float | None:
        """Mean loss over the run's first WINDOW_STEPS steps, if the run was seen from step 1."""
        if not self._head or self._head[0].first_step != 1:
            return None
        return _start(self._head).early

    # -- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the rules need to judge a resumed run as if it never stopped: the windows,
        the evaluations, the gates. Plain numbers and lists (a checkpoint's `diagnosis`),
        so it loads with torch.load(weights_only=True)."""
        def win(w: Window) -> list[float]:
            return [w.first_step, w.last_step, w.mean, w.min, w.max, w.count]

        return {
            "version": STATE_VERSION,
            "head": [win(w) for w in self._head],
            "recent": [win(w) for w in self._recent],
            "partial": [self._p_first, self._p_last, self._p_sum, self._p_count, self._p_min, self._p_max],
            "epochs": [[p.epoch, p.step, p.train_loss, p.val_loss] for p in self._epochs],
            "waits": list(self._waits),
            "wait_steps": list(self._wait_steps),
            "last_step": self._last_step,
            "closed": self._closed,
            "gates": {name: [g.active, g.quiet, g.key] for name, g in self._gates.items()},
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore state_dict(); anything malformed is a ValueError and changes nothing."""
        try:
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError("unknown version")
            head = [_window(w) for w in state["head"]]
            recent = [_window(w) for w in state["recent"]]
            p_first, p_last, p_sum, p_count, p_min, p_max = state["partial"]
            epochs = [EpochPoint(int(e), int(s), None if t is None else float(t), float(v))
                      for e, s, t, v in state["epochs"]]
            waits = [float(w) for w in state["waits"]]
            wait_steps = [int(s) for s in state["wait_steps"]]
            gates = {name: (bool(a), int(q), k if k is None else int(k))
                     for name, (a, q, k) in state["gates"].items()}
            last_step, closed = int(state["last_step"]), int(state["closed"])
            if len(head) > HEAD_WINDOWS or set(gates) != set(self._gates) or len(waits) != len(wait_steps):
                raise ValueError("wrong sizes")
            partial = (int(p_first), int(p_last), float(p_sum), int(p_count), float(p_min), float(p_max))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed diagnosis state ({exc})") from None
        self._head = head
        self._recent = deque(recent, maxlen=RECENT_WINDOWS)
        self._p_first, self._p_last, self._p_sum, self._p_count, self._p_min, self._p_max = partial
        self._epochs = deque(epochs, maxlen=EPOCHS_KEPT)
        self._waits = deque(waits, maxlen=WAITS_KEPT)
        self._wait_steps = deque(wait_steps, maxlen=WAITS_KEPT)
        self._last_step, self._closed = last_step, closed
        for name, (active, quiet, key) in gates.items():
            gate = self._gates[name]
            gate.active, gate.quiet, gate.key = active, quiet, key

    # -- introspection (tests, memory bound) ----------------------------------------------
    def sizes(self) -> dict[str, int]:
        """How many items each container holds: O(1) whatever the run's length."""
        return {"head": len(self._head), "recent": len(self._recent), "epochs": len(self._epochs),
                "waits": len(self._waits), "wait_steps": len(self._wait_steps), "partial": self._p_count}
