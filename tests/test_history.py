"""tui/history.py: bounded metric series, thinned to a plot's width.

The oracle for `Series.thin` is the raw input: every column covers a run of
consecutive points (first_step .. last_step), and its count, min, max and mean
must be those of the input points in that run, whatever merges happened.
"""

from __future__ import annotations

import ast
import gc
import math
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuitrain.tui import history
from tuitrain.tui.history import EpochSeries, Marks, Series, ema

NAN, INF = math.nan, math.inf


class DeepSeries(Series):
    """Keeps coarse levels down to 2 buckets, so small capacities exercise the whole pyramid."""

    _MIN_LEVEL = 2


def feed(series: Series, steps: list[int], values: list[float], cuts: list[int] = ()) -> None:
    """Extend in batches split at `cuts`."""
    edges = [0, *sorted(c for c in set(cuts) if 0 < c < len(steps)), len(steps)]
    for a, b in zip(edges, edges[1:]):
        series.extend(steps[a:b], values[a:b])


def oracle_check(series: Series, steps: list[int], values: list[float], width: int) -> None:
    """Every column of thin(width) agrees with the raw points it covers."""
    t = series.thin(width)
    assert len(t) <= width
    assert sum(t.count) == len(series) == len(steps)
    index = {s: i for i, s in enumerate(steps)}
    expect_next = 0
    scale = max([1.0] + [abs(v) for v in values if math.isfinite(v)])
    for c in range(len(t)):
        a, b = index[t.first_step[c]], index[t.last_step[c]]
        assert a == expect_next, "columns must partition the points in order"
        expect_next = b + 1
        assert t.first_step[c] <= t.x[c] <= t.last_step[c]
        pts = values[a:b + 1]
        assert t.count[c] == len(pts)
        fin = [v for v in pts if math.isfinite(v)]
        if fin:
            assert t.min[c] == min(fin)
            assert t.max[c] == max(fin)
            assert t.mean[c] == pytest.approx(math.fsum(fin) / len(fin), rel=1e-9, abs=1e-9 * scale)
        else:
            assert math.isnan(t.min[c]) and math.isnan(t.max[c]) and math.isnan(t.mean[c])
        assert t.last[c] == pts[-1] or (math.isnan(t.last[c]) and math.isnan(pts[-1]))
    assert expect_next == len(steps)


# -- exact below capacity --------------------------------------------------------------

def test_below_capacity_thin_returns_every_point():
    steps = list(range(10, 1010))
    values = [math.sin(s / 7) for s in steps]
    s = Series(capacity=4096)
    feed(s, steps, values, cuts=list(range(0, 1000, 37)))
    assert s.exact and s.buckets == 1000 and len(s) == 1000
    for width in (1000, 5000):
        t = s.thin(width)
        assert t.x == steps and t.first_step == steps and t.last_step == steps
        assert t.min == values and t.max == values and t.mean == values and t.last == values
        assert t.count == [1] * 1000
    assert s.last == values[-1] and s.last_step == 1009 and s.first_step == 10


def test_thin_since_step_window():
    s = Series(capacity=64)
    feed(s, list(range(1000)), [float(i) for i in range(1000)], cuts=[100, 555])
    t = s.thin(10, since_step=700)
    assert len(t) <= 10
    assert t.last_step[-1] == 999
    assert all(ls >= 700 for ls in t.last_step)
    assert t.first_step[0] <= 700 < t.first_step[0] + s.span  # at most the straddling bucket before it
    assert sum(t.count) == 1000 - t.first_step[0]
    assert s.thin(10, since_step=1000) == history.Thinned([], [], [], [], [], [], [], [])
    exact = Series()
    exact.extend(list(range(50)), [float(i) for i in range(50)])
    assert exact.thin(100, since_step=20).x == list(range(20, 50))


def test_thin_bins_by_step_so_gaps_make_no_columns():
    s = Series(capacity=4096)
    s.extend(list(range(0, 100)), [1.0] * 100)
    s.extend(list(range(10_000, 10_100)), [2.0] * 100)
    t = s.thin(50)
    assert len(t) < 50  # the empty slices across the gap give nothing
    assert sum(t.count) == 200
    assert {m for m in t.mean} == {1.0, 2.0}
    assert all(b < a for a, b in zip(t.first_step[1:], t.last_step))


# -- a known sequence ------------------------------------------------------------------

def test_columns_of_a_known_sequence():
    # 0..999 with capacity 16: buckets of 64 points; thin(4) puts 4 buckets per column.
    s = Series(capacity=16)
    s.extend(list(range(1000)), [float(i) for i in range(1000)])
    assert s.span == 64 and s.buckets == 16
    t = s.thin(4)
    assert t.first_step == [0, 256, 512, 768]
    assert t.last_step == [255, 511, 767, 999]
    assert t.min == [0.0, 256.0, 512.0, 768.0]
    assert t.max == [255.0, 511.0, 767.0, 999.0]
    assert t.mean == [127.5, 383.5, 639.5, 883.5]
    assert t.count == [256, 256, 256, 232]
    assert t.last == [255.0, 511.0, 767.0, 999.0]
    assert t.x == [127, 383, 639, 883]
    assert t.value_range() == (0.0, 999.0)


def test_nan_and_inf_are_counted_but_not_in_min_max_mean():
    for capacity in (4096, 4):  # exact, and merged into buckets
        s = Series(capacity=capacity)
        s.extend([1, 2, 3, 4, 5, 6, 7, 8], [3.0, NAN, INF, -INF, 1.0, 5.0, NAN, NAN])
        assert len(s) == 8 and s.nonfinite == 5
        assert math.isnan(s.last) and s.last_step == 8
        t = s.thin(1)
        assert t.count == [8] and t.min == [1.0] and t.max == [5.0] and t.mean == [3.0]
        assert math.isnan(t.last[0])
        s._check()
    only_bad = Series(capacity=2)
    only_bad.extend([1, 2, 3], [NAN, INF, NAN])
    t = only_bad.thin(5)
    assert sum(t.count) == 3 and all(math.isnan(v) for v in t.min + t.max + t.mean)
    assert t.value_range() is None


def test_extend_rejects_bad_input():
    s = Series()
    with pytest.raises(ValueError):
        s.extend([1, 2], [1.0])
    s.extend([5, 6], [1.0, 2.0])
    with pytest.raises(ValueError):
        s.extend([6, 7], [1.0, 2.0])
    with pytest.raises(ValueError):
        s.extend([9, 8], [1.0, 2.0])
    s.extend([], [])
    assert len(s) == 2
    with pytest.raises(ValueError):
        Series(capacity=7)
    with pytest.raises(ValueError):
        s.thin(0)


# -- hypothesis: random sequences, batches, capacities, widths -----------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
value = st.one_of(finite, finite, finite, st.sampled_from([NAN, INF, -INF]))


@st.composite
def runs(draw):
    values = draw(st.lists(value, min_size=1, max_size=300))
    gaps = draw(st.lists(st.integers(1, 5), min_size=len(values), max_size=len(values)))
    start = draw(st.integers(-10, 10))
    steps, step = [], start
    for g in gaps:
        step += g
        steps.append(step)
    cuts = draw(st.lists(st.integers(0, len(values)), max_size=8))
    capacity = draw(st.sampled_from([2, 4, 6, 8, 16, 64]))
    deep = draw(st.booleans())
    return steps, values, cuts, capacity, deep


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.integers(1, 40))
def test_thin_matches_the_raw_points(run, width):
    steps, values, cuts, capacity, deep = run
    s = (DeepSeries if deep else Series)(capacity=capacity)
    feed(s, steps, values, cuts)
    s._check()
    assert s.buckets <= capacity and len(s) == len(values)
    assert s.nonfinite == sum(not math.isfinite(v) for v in values)
    oracle_check(s, steps, values, width)
    oracle_check(s, steps, values, 10_000)
    t = s.thin(width)
    fin = [v for v in values if math.isfinite(v)]
    assert t.value_range() == ((min(fin), max(fin)) if fin else None)
    if len(values) <= capacity:
        assert s.exact and s.thin(len(values)).x == steps


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.integers(-20, 1000), st.data())
def test_reset_after_drops_later_steps(run, cut, data):
    steps, values, cuts, capacity, deep = run
    s = (DeepSeries if deep else Series)(capacity=capacity)
    feed(s, steps, values, cuts)
    span = s.span
    was_exact = s.exact
    s.reset_after(cut)
    s._check()
    kept = [i for i, st_ in enumerate(steps) if st_ <= cut]
    assert len(s) <= len(kept)
    assert len(kept) - len(s) < span  # at most the straddling bucket is lost
    if was_exact:
        assert len(s) == len(kept)
    if len(s):
        assert s.last_step <= cut
        n = len(s)
        oracle_check(s, steps[:n], values[:n], data.draw(st.integers(1, 40)))
    else:
        assert s.last_step is None and s.last is None
    # the run goes on from after the kept points
    nxt = (s.last_step if len(s) else -100) + 1
    more = [nxt + i for i in range(50)]
    s.extend(more, [float(i) for i in range(50)])
    s._check()
    n = len(s) - 50
    oracle_check(s, steps[:n] + more, values[:n] + [float(i) for i in range(50)], 7)


def test_reset_after_exact_and_resume():
    s = Series()
    s.extend(list(range(100)), [float(i) for i in range(100)])
    s.reset_after(49)
    assert len(s) == 50 and s.last_step == 49 and s.last == 49.0
    assert s.thin(1000).x == list(range(50))
    s.extend([50, 51], [7.0, 8.0])
    assert s.thin(1000).mean[-2:] == [7.0, 8.0]
    s.reset_after(1_000)
    assert len(s) == 52
    s.reset_after(-1)
    assert len(s) == 0 and s.thin(10) == history.Thinned([], [], [], [], [], [], [], [])


# -- ema -----------------------------------------------------------------------------------

def test_ema_of_a_constant_is_the_constant():
    s = Series(capacity=64)
    s.extend(list(range(5000)), [0.25] * 5000)
    for w in (0.0, 0.5, 0.9, 0.99):
        curve = s.ema(w, 50)
        assert curve.x == s.thin(50).x
        assert curve.y == pytest.approx([0.25] * len(curve.y), rel=1e-12)


def test_ema_weight_zero_equals_the_column_means_and_is_debiased():
    s = Series(capacity=32)
    s.extend(list(range(1000)), [math.sin(i) + i / 100 for i in range(1000)])
    assert s.ema(0.0, 20).y == s.thin(20).mean
    # debiased: the first value is not pulled toward 0
    assert ema([1.0, 2.0], 0.5) == pytest.approx([1.0, (0.25 + 1.0) / 0.75])
    assert ema([10.0], 0.99) == pytest.approx([10.0])
    # non-finite column means pass through and do not move the average
    out = ema([1.0, NAN, 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx((0.25 + 1.5) / 0.75)
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError):
            s.ema(bad, 20)


# -- a million points ------------------------------------------------------------------------

BIG = 1_000_000
SPIKE_STEP = 654_321


@pytest.fixture(scope="module")
def million():
    """1M loss-like points in batches of 1000 with one spike, ingested under tracemalloc.

    The steps of a batch are a range (a Sequence, as extend accepts): a list of
    1000 ints per batch would triple the time tracemalloc adds, for nothing.
    Returns the series, the traced peak growth, and the storage size of a series
    holding exactly `capacity` points (level 0 full, just before the first merge).
    """
    base = [1.0 + 0.01 * math.sin(i) for i in range(1000)]
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        s = Series()
        for b in range(0, BIG, 1000):
            vals = base
            if b <= SPIKE_STEP < b + 1000:
                vals = list(base)
                vals[SPIKE_STEP - b] = 1e9
            s.extend(range(b, b + 1000), vals)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = Series()
    full.extend(list(range(full.capacity)), [1.0 + 0.01 * math.sin(i) for i in range(full.capacity)])
    assert full.buckets == full.capacity and full.exact
    return s, peak - before, full.nbytes


def test_memory_stays_bounded_over_a_million_points(million):
    s, peak_growth, full_nbytes = million
    assert len(s) == BIG
    assert s.buckets <= s.capacity
    assert s.span >= BIG // s.capacity
    # The storage at 1M points is no bigger than when the buckets first filled (4,096 points).
    assert s.nbytes <= 1.25 * full_nbytes
    assert s.nbytes < 4 * 2**20
    # Everything allocated while ingesting, batches included: a small constant, far under 64 MB.
    assert peak_growth < 8 * 2**20, f"{peak_growth / 2**20:.1f} MiB"
    s._check()


def test_a_single_spike_stays_visible(million):
    s, _, _ = million
    t = s.thin(100)
    assert len(t) <= 100
    hits = [c for c in range(len(t)) if t.max[c] == 1e9]
    assert len(hits) == 1
    c = hits[0]
    assert t.first_step[c] <= SPIKE_STEP <= t.last_step[c]
    assert all(m < 1.02 for i, m in enumerate(t.max) if i != c)
    assert min(t.min) >= 0.99
    # and in a window, and in the smoothed curve's source
    assert max(s.thin(37, since_step=600_000).max) == 1e9
    assert t.mean[c] > 1.02  # the spike lifts its column's mean too
    assert sum(t.count) == BIG


def best_time(fn, repeats: int = 20) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def test_thin_cost_does_not_grow_with_the_run(million):
    big, _, _ = million
    small = Series()
    small.extend(list(range(1000)), [1.0 + 0.01 * math.sin(i) for i in range(1000)])
    # Interleave the two so machine noise hits both alike; min of 20 repeats each.
    t_small = t_big = math.inf
    for _ in range(3):
        t_small = min(t_small, best_time(lambda: small.thin(200)))
        t_big = min(t_big, best_time(lambda: big.thin(200)))
    ratio = t_big / t_small
    assert ratio <= 2.0, f"thin(200): 1k points {t_small * 1e3:.3f} ms, 1M points {t_big * 1e3:.3f} ms"


# -- epochs and marks ------------------------------------------------------------------------

def test_epoch_series():
    e = EpochSeries()
    assert e.best() is None and e.last is None and len(e) == 0
    for epoch, (step, v) in enumerate([(10, 0.9), (20, 0.5), (30, NAN), (40, 0.5), (50, 0.7)], 1):
        e.add(epoch, step, v)
    assert [p.epoch for p in e.points()] == [1, 2, 3, 4, 5]
    assert e.points()[1] == (2, 20, 0.5)
    assert e.best() == (0.5, 2)  # the earliest epoch wins a tie; NaN is never best
    assert e.last == (5, 50, 0.7)
    e.reset_after(30)
    assert [p.step for p in e] == [10, 20, 30]
    acc = EpochSeries(higher_is_better=True)
    for epoch, v in enumerate([0.5, 0.8, 0.7], 1):
        acc.add(epoch, epoch * 10, v)
    assert acc.best() == (0.8, 2)


def test_marks_are_bounded_and_filtered_by_range():
    m = Marks(maxlen=4)
    for step in range(10):
        m.add(step * 10, "lr_changed", f"lr {step}")
    assert len(m) == 4 and m.maxlen == 4
    assert [x.step for x in m] == [60, 70, 80, 90]
    assert [x.step for x in m.in_range(65, 90)] == [70, 80, 90]
    assert m.in_range(0, 50) == []
    got = m.in_range(80, 80)[0]
    assert (got.step, got.kind, got.label) == (80, "lr_changed", "lr 8")
    m.reset_after(75)
    assert [x.step for x in m] == [60, 70]
    assert Marks().maxlen == 512


# -- the module stays standard-library only ----------------------------------------------------

def test_history_uses_only_the_standard_library():
    tree = ast.parse(Path(history.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, tuitrain.tui.history; "
         "bad = [m for m in ('torch', 'textual', 'rich') if m in sys.modules]; assert not bad, bad"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
