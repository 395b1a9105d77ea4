"""Metric series for the dashboard's plots: compact, bounded memory, thinned to a plot's width.

A plot's cost must not grow with the run's length. `Series` keeps a fixed
number of buckets (default 4096), whatever the number of points it has been
given, in compact columns (typed arrays and fixed-length lists of floats; never
one object per point):

- while fewer than `capacity` points have arrived, every bucket holds one
  point, so the series is exact;
- when the buckets are full, adjacent pairs are merged and every bucket then
  covers twice as many consecutive points (its `span` doubles). A bucket keeps
  the first and last step it covers, the number of points, the number of
  finite points, their min, max and sum (for the mean) and the last value.

So a million points cost the memory of 4,096. A few coarser copies of the
buckets (2, 4, 8 ... at a time, together no bigger than the buckets
themselves) let `Series.thin(width)` read about 8 buckets per column at most:
its cost depends on the plot's width, not on how many points were ever added.
Min and max survive every merge, so a single spike stays visible as the max of
its column however long the run.

Non-finite values (NaN, +-inf: a diverging loss) are counted in `len()` and in
each column's `count` but kept out of min, max and mean; a column whose points
are all non-finite has NaN min, max and mean.

`EpochSeries` holds the few per-epoch values (validation loss, accuracy, the
lr at an epoch's end) as plain lists, and `Marks` the interventions drawn on
the x axis (lr change, pause, checkpoint), in a bounded deque.

Standard library only: the viewer's plots use it (the engine records, it never
plots), and it imports neither torch nor textual.
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

__all__ = ["DEFAULT_SMOOTHING", "MAX_SMOOTHING", "Curve", "EpochPoint", "EpochSeries", "Mark", "Marks", "Series",
           "Thinned", "ema"]

#: The loss curve's EMA weight (see `ema`): what the dashboard opens with ([ and ] change it by 0.1)
#: and what `tuitrain plot` draws unless --smoothing says otherwise, so the picture matches the screen.
DEFAULT_SMOOTHING = 0.6
#: The most smoothing either offers (`ema` needs a weight below 1).
MAX_SMOOTHING = 0.99

_INF = math.inf
_NAN = math.nan
_isfinite = math.isfinite


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: a debiased exponential moving average.

    `weight` in [0, 1): 0 returns the values unchanged, closer to 1 smooths
    more. Debiased (as TensorBoard does since 2.x): the average starts at 0 and
    is divided by 1 - weight**k after k finite values, so the first value is not
    pulled toward 0. A non-finite value is passed through as it is and does not
    move the average.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"ema weight must be in [0, 1), got {weight!r}")
    out: list[float] = []
    acc = 0.0
    k = 0
    for v in values:
        if not _isfinite(v):
            out.append(v)
            continue
        acc = acc * weight + (1.0 - weight) * v
        k += 1
        out.append(acc / (1.0 - weight**k))
    return out


class Curve(NamedTuple):
    """A plain line: `xs, ys = series.ema(0.6, 120)`."""

    x: list[int]
    y: list[float]


@dataclass(frozen=True)
class Thinned:
    """A series reduced to at most `width` columns, one entry per column in every list.

    Columns are in increasing step order. Column i covers the points with steps
    `first_step[i]` .. `last_step[i]`; `x[i]` is the step in their middle (the
    step itself when a column holds one point). `min`/`max`/`mean` are over the
    column's finite values (NaN if it has none), `last` is the value of its last
    point as given (it may be NaN), `count` the number of points, finite or not.
    """

    x: list[int]
    first_step: list[int]
    last_step: list[int]
    min: list[float]
    max: list[float]
    mean: list[float]
    last: list[float]
    count: list[int]

    def __len__(self) -> int:
        return len(self.x)

    def ema(self, weight: float) -> list[float]:
        """Debiased EMA of the column means (see `ema`); aligned with `x`."""
        return ema(self.mean, weight)

    def value_range(self) -> tuple[float, float] | None:
        """(lowest min, highest max) over the columns: the y range a plot needs; None if no finite value."""
        lo = min((v for v in self.min if _isfinite(v)), default=None)
        hi = max((v for v in self.max if _isfinite(v)), default=None)
        if lo is None or hi is None:
            return None
        return lo, hi


_EMPTY = Thinned([], [], [], [], [], [], [], [])


class _Buckets:
    """One level of buckets: a column per field, one entry per bucket.

    Steps and counts are typed arrays; the float columns are lists of floats,
    because min/max/sum over a list slice run about 1.5x faster than over an
    array('d') (no boxing), and that is most of what `thin` does.
    """

    __slots__ = ("first", "last_step", "count", "finite", "min", "max", "sum", "last")

    def __init__(self) -> None:
        self.first = array("q")       # first step
        self.last_step = array("q")   # last step
        self.count = array("q")       # points, finite or not
        self.finite = array("q")      # finite points
        self.min: list[float] = []    # min of the finite values (+inf if none)
        self.max: list[float] = []    # max of the finite values (-inf if none)
        self.sum: list[float] = []    # sum of the finite values
        self.last: list[float] = []   # last value as given (may be NaN)

    def __len__(self) -> int:
        return len(self.count)

    def columns(self) -> tuple[array | list[float], ...]:
        return (self.first, self.last_step, self.count, self.finite, self.min, self.max, self.sum, self.last)

    def open(self, step: int) -> None:
        """Start an empty bucket."""
        self.first.append(step)
        self.last_step.append(step)
        self.count.append(0)
        self.finite.append(0)
        self.min.append(_INF)
        self.max.append(-_INF)
        self.sum.append(0.0)
        self.last.append(_NAN)

    def fold(self, count: int, finite: int, lo: float, hi: float, total: float, last: float,
             last_step: int) -> None:
        """Add consecutive points, given by their aggregates, to the last bucket."""
        self.count[-1] += count
        if finite:
            self.finite[-1] += finite
            self.sum[-1] += total
            if lo < self.min[-1]:
                self.min[-1] = lo
            if hi > self.max[-1]:
                self.max[-1] = hi
        self.last[-1] = last
        self.last_step[-1] = last_step

    def append_merged(self, other: _Buckets, a: int, b: int) -> None:
        """Append one bucket that merges `other`'s buckets a .. b-1."""
        self.open(other.first[a])
        self.fold(sum(other.count[a:b]), sum(other.finite[a:b]), min(other.min[a:b]),
                  max(other.max[a:b]), sum(other.sum[a:b]), other.last[b - 1], other.last_step[b - 1])

    def coarsen(self) -> _Buckets:
        """A new level whose bucket i merges buckets 2i and 2i+1 (an odd last one stays alone)."""
        add = operator.add
        out = _Buckets()
        out.first = self.first[0::2]
        out.last_step = self.last_step[1::2]
        out.count = array("q", map(add, self.count[0::2], self.count[1::2]))
        out.finite = array("q", map(add, self.finite[0::2], self.finite[1::2]))
        out.min = list(map(min, self.min[0::2], self.min[1::2]))
        out.max = list(map(max, self.max[0::2], self.max[1::2]))
        out.sum = list(map(add, self.sum[0::2], self.sum[1::2]))
        out.last = self.last[1::2]
        if len(self) % 2:
            out.last_step.append(self.last_step[-1])
            out.count.append(self.count[-1])
            out.finite.append(self.finite[-1])
            out.min.append(self.min[-1])
            out.max.append(self.max[-1])
            out.sum.append(self.sum[-1])
            out.last.append(self.last[-1])
        return out

    def truncate(self, keep: int) -> None:
        for col in self.columns():
            del col[keep:]


class Series:
    """A per-step series (training loss per optimizer step) in a fixed number of buckets.

    Feed it with `extend(steps, values)` in increasing step order. Memory is
    O(capacity) whatever the number of points; `thin` costs O(width) and never
    more than O(capacity).

    Level 0 holds at most `capacity` buckets of `span` consecutive points each
    (all full but the last). To keep `thin` from reading thousands of buckets
    for a 120-column plot, a few coarser levels are kept beside it (a pyramid,
    as for image mipmaps): bucket i of level k merges level-0 buckets
    i*2**k .. (i+1)*2**k - 1. They are updated with every point, cost less than
    level 0 together, and make the pair merge of a full level 0 free: level 1
    becomes level 0. Levels stop at `_MIN_LEVEL` buckets.
    """

    #: thin() reads the finest level with at most this many buckets per column.
    _BUCKETS_PER_COLUMN = 8
    #: the coarsest level kept holds at least this many buckets (capacity / 2**k).
    _MIN_LEVEL = 32

    __slots__ = ("_capacity", "_span", "_total", "_nonfinite", "_levels")

    def __init__(self, capacity: int = 4096) -> None:
        if not isinstance(capacity, int) or capacity < 2 or capacity % 2:
            raise ValueError(f"capacity must be an even int >= 2, got {capacity!r}")
        self._capacity = capacity
        self._clear()

    def _clear(self) -> None:
        self._span = 1          # points a full level-0 bucket holds
        self._total = 0         # points added, less those dropped by reset_after
        self._nonfinite = 0     # of which NaN or +-inf
        depth = 1
        while self._capacity >> depth >= self._MIN_LEVEL:
            depth += 1
        self._levels = [_Buckets() for _ in range(depth)]

    # -- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        """Points added (finite or not), less those dropped by `reset_after`."""
        return self._total

    def __bool__(self) -> bool:
        return self._total > 0

    def __repr__(self) -> str:
        return (f"Series(len={self._total}, buckets={self.buckets}/{self._capacity}, "
                f"span={self._span})")

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def buckets(self) -> int:
        """Level-0 buckets in use; never more than `capacity`."""
        return len(self._levels[0])

    @property
    def span(self) -> int:
        """Consecutive points a full level-0 bucket covers (1 while the series is exact)."""
        return self._span

    @property
    def exact(self) -> bool:
        """True while every bucket holds a single point."""
        return self._span == 1

    @property
    def nonfinite(self) -> int:
        """Points that were NaN or +-inf (counted in len, not in min/max/mean)."""
        return self._nonfinite

    @property
    def nbytes(self) -> int:
        """Bytes held by all levels: each column, plus the float objects in the list columns."""
        size = 0
        for lv in self._levels:
            size += sum(sys.getsizeof(col) for col in lv.columns())
            size += sum(sys.getsizeof(v) for col in (lv.min, lv.max, lv.sum, lv.last) for v in col)
        return size

    @property
    def last(self) -> float | None:
        """The last value added (possibly NaN), None when empty."""
        lv = self._levels[0]
        return lv.last[-1] if lv.last else None

    @property
    def last_step(self) -> int | None:
        """The step of the last value added, None when empty."""
        lv = self._levels[0]
        return lv.last_step[-1] if lv.last_step else None

    @property
    def first_step(self) -> int | None:
        lv = self._levels[0]
        return lv.first[0] if lv.first else None

    # -- writing -------------------------------------------------------------------

    def append(self, step: int, value: float) -> None:
        self.extend((step,), (value,))

    def extend(self, steps: Sequence[int], values: Sequence[float]) -> None:
        """Add points; `steps` must increase, within the batch and past `last_step`.

        Only the batch's ends are checked (a full check would cost a Python
        comparison per point); the steps inside a batch are trusted to increase,
        as the engine's StepStats batches do.
        """
        n = len(steps)
        if n != len(values):
            raise ValueError(f"{n} steps but {len(values)} values")
        if n == 0:
            return
        if steps[n - 1] < steps[0]:
            raise ValueError("steps must increase")
        levels = self._levels
        lv0 = levels[0]
        if lv0.last_step and steps[0] <= lv0.last_step[-1]:
            raise ValueError(f"step {steps[0]} does not come after the last step {lv0.last_step[-1]}")
        bad = 0
        i = 0
        while i < n:
            count = lv0.count
            if not count or count[-1] >= self._span:
                if len(count) >= self._capacity:
                    self._merge()
                    levels = self._levels
                    lv0 = levels[0]
                index = len(lv0)
                step = steps[i]
                lv0.open(step)
                for k in range(1, len(levels)):
                    if index & ((1 << k) - 1):
                        break
                    levels[k].open(step)
            j = min(n, i + self._span - lv0.count[-1])
            if j - i == 1:
                lo = hi = total = float(values[i])
                fin = 1
                if not _isfinite(lo):
                    fin = 0
                    bad += 1
            else:
                chunk = values[i:j]
                total = sum(chunk)
                fin = j - i
                # The sum is finite only if every value is (NaN and inf propagate), so
                # the common case needs no per-point check.
                good = chunk
                if not _isfinite(total):
                    good = [v for v in chunk if _isfinite(v)]
                    total = sum(good)
                    fin = len(good)
                    bad += j - i - fin
                lo, hi = (float(min(good)), float(max(good))) if fin else (_NAN, _NAN)
            last = float(values[j - 1])
            last_step = steps[j - 1]
            for lv in levels:
                lv.fold(j - i, fin, lo, hi, total, last, last_step)
            i = j
        self._total += n
        self._nonfinite += bad

    def _merge(self) -> None:
        """Level 0 is full: every bucket now covers twice the points.

        Level 1 already holds the pair merges of level 0, so it becomes level 0,
        and every level moves down one; only the new coarsest level is computed.
        """
        levels = self._levels
        self._levels = levels[1:] + [levels[-1].coarsen()]
        self._span *= 2

    def reset_after(self, step: int) -> None:
        """Drop the points after `step` (a run rolled back or resumed from an earlier checkpoint).

        Exact while the series is exact. Past that it works at bucket granularity:
        a bucket that straddles `step` is dropped whole, so no point after `step`
        remains, but up to `span - 1` points at or before it may go too.
        Afterwards `last_step <= step`, and `extend` accepts steps after `last_step`.
        """
        lv0 = self._levels[0]
        n = len(lv0)
        keep = bisect_right(lv0.last_step, step)
        if keep >= n:
            return
        if keep == 0:
            self._clear()
            return
        dropped = sum(lv0.count[keep:])
        self._nonfinite -= dropped - sum(lv0.finite[keep:])
        self._total -= dropped
        lv0.truncate(keep)
        for k in range(1, len(self._levels)):
            lv = self._levels[k]
            whole = keep >> k
            lv.truncate(whole)
            if whole << k < keep:  # a coarse bucket lost part of its level-0 buckets
                lv.append_merged(lv0, whole << k, keep)

    def clear(self) -> None:
        self._clear()

    # -- thinning ------------------------------------------------------------------

    def thin(self, width: int, since_step: int | None = None) -> Thinned:
        """At most `width` columns over the whole step range, or over steps >= `since_step`.

        When there are no more buckets than `width`, every bucket is one column, so
        an exact series (fewer points than `capacity`) comes back point for point.
        Otherwise the finest level with at most 8 buckets per column is read, the
        step range is cut into `width` equal slices and every bucket goes to the
        slice holding its first step (a slice with none, a gap in the steps, makes
        no column). With `since_step`, a bucket straddling it is included whole.
        Cost O(width): at most about 8 * width buckets are read, whatever the
        number of points ever added.
        """
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width!r}")
        levels = self._levels
        k = 0
        lv = levels[0]
        start = 0 if since_step is None else bisect_left(lv.last_step, since_step)
        n = len(lv)
        m = n - start
        if m <= 0:
            return _EMPTY
        if m <= width:
            fs = lv.first[start:].tolist()
            ls = lv.last_step[start:].tolist()
            fin = lv.finite[start:].tolist()
            lo = [v if f else _NAN for v, f in zip(lv.min[start:], fin)]
            hi = [v if f else _NAN for v, f in zip(lv.max[start:], fin)]
            mean = [s / f if f else _NAN for s, f in zip(lv.sum[start:], fin)]
            return Thinned([(a + b) // 2 for a, b in zip(fs, ls)], fs, ls, lo, hi, mean,
                           lv.last[start:], lv.count[start:].tolist())

        limit = self._BUCKETS_PER_COLUMN * width
        while m > limit and k + 1 < len(levels):
            k += 1
            lv = levels[k]
            start = 0 if since_step is None else bisect_left(lv.last_step, since_step)
            n = len(lv)
            m = n - start
        first, last_step, finite = lv.first, lv.last_step, lv.finite
        mins, maxs, sums, lasts = lv.min, lv.max, lv.sum, lv.last
        lo_step = first[start]
        steps = last_step[n - 1] - lo_step + 1
        # Bucket index where each slice starts: the first bucket whose first step is in it.
        edges = [start]
        for c in range(1, width):
            edges.append(bisect_left(first, lo_step + (c * steps) // width, edges[-1], n))
        edges.append(n)
        xs: list[int] = []
        fs_out: list[int] = []
        ls_out: list[int] = []
        lo_out: list[float] = []
        hi_out: list[float] = []
        mean_out: list[float] = []
        last_out: list[float] = []
        cnt_out: list[int] = []
        span = self._span << k
        short = span - lv.count[n - 1]  # every bucket but the last holds exactly `span` points
        all_finite = self._nonfinite == 0
        a = start
        for b in edges[1:]:
            if b == a:
                continue
            f0 = first[a]
            l1 = last_step[b - 1]
            xs.append((f0 + l1) // 2)
            fs_out.append(f0)
            ls_out.append(l1)
            cnt = (b - a) * span - (short if b == n else 0)
            cnt_out.append(cnt)
            last_out.append(lasts[b - 1])
            fin = cnt if all_finite else sum(finite[a:b])
            if fin:
                lo_out.append(min(mins[a:b]))
                hi_out.append(max(maxs[a:b]))
                mean_out.append(sum(sums[a:b]) / fin)
            else:
                lo_out.append(_NAN)
                hi_out.append(_NAN)
                mean_out.append(_NAN)
            a = b
        return Thinned(xs, fs_out, ls_out, lo_out, hi_out, mean_out, last_out, cnt_out)

    def ema(self, weight: float, width: int, since_step: int | None = None) -> Curve:
        """TensorBoard-style debiased EMA, computed over the column means of `thin(width)`.

        It smooths the thinned series, not the raw points: once the series holds
        more points than `width` columns, each column's mean already averages its
        points and the EMA runs over those means, so the same `weight` smooths more
        (in steps) on a long run than on a short one. With weight 0 it returns the
        column means; a constant series gives that constant.
        """
        t = self.thin(width, since_step)
        return Curve(t.x, t.ema(weight))

    def _check(self) -> None:
        """Assert the internal invariants (tests): every level is level 0 merged 2**k at a time."""
        lv0 = self._levels[0]
        n = len(lv0)
        assert n <= self._capacity
        assert all(c == self._span for c in lv0.count[:-1]), "level-0 buckets not full"
        assert sum(lv0.count) == self._total
        assert self._total - sum(lv0.finite) == self._nonfinite
        for k in range(1, len(self._levels)):
            want = _Buckets()
            for a in range(0, n, 1 << k):
                want.append_merged(lv0, a, min(n, a + (1 << k)))
            got = self._levels[k]
            assert len(got) == len(want)
            for g, w in zip(got.columns(), want.columns()):
                if g is got.sum:  # the same values added in another order: equal up to rounding
                    assert all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) or x == y
                               for x, y in zip(g, w)), f"level {k} sums differ from level 0"
                else:
                    assert list(g) == list(w), f"level {k} differs from level 0"


class EpochPoint(NamedTuple):
    epoch: int
    step: int
    value: float


class EpochSeries:
    """Per-epoch values (validation loss, accuracy, lr at an epoch's end).

    Epochs are few, so these are plain lists of (epoch, step, value), exact.
    `best()` looks for the lowest value unless `higher_is_better` is set.
    """

    __slots__ = ("_epochs", "_steps", "_values", "higher_is_better")

    def __init__(self, higher_is_better: bool = False) -> None:
        self.higher_is_better = higher_is_better
        self._epochs: list[int] = []
        self._steps: list[int] = []
        self._values: list[float] = []

    def add(self, epoch: int, step: int, value: float) -> None:
        self._epochs.append(int(epoch))
        self._steps.append(int(step))
        self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def __iter__(self) -> Iterator[EpochPoint]:
        return iter(self.points())

    def points(self) -> list[EpochPoint]:
        return [EpochPoint(e, s, v) for e, s, v in zip(self._epochs, self._steps, self._values)]

    @property
    def last(self) -> EpochPoint | None:
        if not self._values:
            return None
        return EpochPoint(self._epochs[-1], self._steps[-1], self._values[-1])

    def best(self) -> tuple[float, int] | None:
        """(best value, its epoch): the lowest (highest if `higher_is_better`) finite value.

        The earliest epoch wins a tie; None when there is no finite value.
        """
        best: tuple[float, int] | None = None
        for e, v in zip(self._epochs, self._values):
            if not _isfinite(v):
                continue
            if best is None or (v > best[0] if self.higher_is_better else v < best[0]):
                best = (v, e)
        return best

    def reset_after(self, step: int) -> None:
        """Drop the values recorded after `step` (exact)."""
        keep = [i for i, s in enumerate(self._steps) if s <= step]
        self._epochs = [self._epochs[i] for i in keep]
        self._steps = [self._steps[i] for i in keep]
        self._values = [self._values[i] for i in keep]


class Mark(NamedTuple):
    step: int
    kind: str
    label: str = ""


class Marks:
    """Interventions to draw on the x axis (lr change, pause, checkpoint, NaN, stop, hint): the latest `maxlen`."""

    __slots__ = ("_marks",)

    def __init__(self, maxlen: int = 512) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen!r}")
        self._marks: deque[Mark] = deque(maxlen=maxlen)

    @property
    def maxlen(self) -> int:
        return self._marks.maxlen or 0

    def add(self, step: int, kind: str, label: str = "") -> None:
        self._marks.append(Mark(int(step), kind, label))

    def in_range(self, lo: int, hi: int) -> list[Mark]:
        """Marks with lo <= step <= hi, in the order they were added."""
        return [m for m in self._marks if lo <= m.step <= hi]

    def reset_after(self, step: int) -> None:
        """Drop the marks after `step`."""
        kept = [m for m in self._marks if m.step <= step]
        self._marks.clear()
        self._marks.extend(kept)

    def __len__(self) -> int:
        return len(self._marks)

    def __iter__(self) -> Iterator[Mark]:
        return iter(self._marks)
