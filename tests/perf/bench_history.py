"""Benchmark: a plot's cost and a history's memory do not grow with the run's length.

    python tests/perf/bench_history.py [--repeats 50] [--width 120] [--batch 500]

1. Ingests 1,000,000 steps in batches of `--batch` (a list of steps and a list
   of losses per batch, as StepStats brings them) and reports the process RSS
   growth (psutil; measured first, on a fresh process) and, in a second pass,
   the tracemalloc peak. Target: both <= 64 MB. Also prints the ingest rate and
   the series' own storage size.
2. Builds a 1,000-step and a 1,000,000-step training-loss history
   (tui.history.Series, default capacity) and times thin(width) on each,
   the min over `--repeats` calls, alternating the two so machine noise hits
   both alike. Target: 1M / 1k <= 2.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time
import tracemalloc

import psutil

from tuitrain.tui.history import Series

MB = 2**20
STEPS_BIG = 1_000_000
STEPS_SMALL = 1_000


def loss_at(step: int, rng: random.Random) -> float:
    """A plausible training loss: decays, noisy, with rare spikes and a rare NaN."""
    r = rng.random()
    if r < 1e-5:
        return math.nan
    spike = 20.0 if r > 1 - 1e-5 else 0.0
    return 2.5 * math.exp(-step / 150_000) + 0.1 + 0.05 * rng.random() + spike


def ingest(n: int, batch: int, seed: int = 0) -> Series:
    rng = random.Random(seed)
    series = Series()
    for b in range(0, n, batch):
        steps = list(range(b, min(n, b + batch)))
        series.extend(steps, [loss_at(s, rng) for s in steps])
    return series


def best_of(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="thin() calls per timing (min taken)")
    parser.add_argument("--width", type=int, default=120, help="plot width in columns")
    parser.add_argument("--batch", type=int, default=500, help="steps per extend() call")
    args = parser.parse_args()

    # -- 1. memory while ingesting a million steps --------------------------------
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    series = ingest(STEPS_BIG, args.batch, seed=3)
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss_growth = proc.memory_info().rss - rss0
    storage = series.nbytes
    del series
    gc.collect()

    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    series = ingest(STEPS_BIG, args.batch, seed=3)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_growth = peak - base

    print(f"ingest {STEPS_BIG:,} steps in batches of {args.batch}: {elapsed:.2f} s "
          f"({STEPS_BIG / elapsed / 1e6:.2f} M steps/s, loss generation included)")
    print(f"  series storage (nbytes, all levels): {storage / MB:.2f} MB; "
          f"{series.buckets} buckets of {series.span} steps (capacity {series.capacity})")
    ok_rss = rss_growth <= 64 * MB
    ok_peak = peak_growth <= 64 * MB
    print(f"  process RSS growth:  {rss_growth / MB:7.2f} MB  (target <= 64 MB)  {'OK' if ok_rss else 'MISSED'}")
    print(f"  tracemalloc peak:    {peak_growth / MB:7.2f} MB  (target <= 64 MB)  {'OK' if ok_peak else 'MISSED'}")
    del series

    # -- 2. thin() time against the run's length ---------------------------------
    small = ingest(STEPS_SMALL, args.batch, seed=1)
    big = ingest(STEPS_BIG, args.batch, seed=2)
    t_small = t_big = math.inf
    for _ in range(5):
        t_small = min(t_small, best_of(lambda: small.thin(args.width), args.repeats))
        t_big = min(t_big, best_of(lambda: big.thin(args.width), args.repeats))
    ratio = t_big / t_small
    print(f"\nthin(width={args.width}), min of {5 * args.repeats} calls:")
    print(f"  {STEPS_SMALL:>9,} steps: {t_small * 1e6:8.1f} us  ({small!r})")
    print(f"  {STEPS_BIG:>9,} steps: {t_big * 1e6:8.1f} us  ({big!r})")
    print(f"  ratio 1M / 1k: {ratio:.2f}  (target <= 2)  {'OK' if ratio <= 2 else 'MISSED'}")
    t_ema = best_of(lambda: big.ema(0.6, args.width), args.repeats)
    print(f"  ema(0.6, {args.width}) on 1M steps: {t_ema * 1e6:.1f} us")


if __name__ == "__main__":
    main()
