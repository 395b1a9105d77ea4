"""Benchmark for `tuitrain plot` (issue 15): seconds and peak memory for a 1,000,000-step run.

    python tests/perf/bench_plot.py [--steps 1000000] [--repeats 3]

A finished run is synthesised in the engine's own format (bench_watch.synthesise:
~100 MB of metrics.jsonl), and so is a 1,000-step one. Each is plotted by the
installed `tuitrain plot` in a fresh process (interpreter start, imports,
reading, drawing, writing the PNG), timed from the parent; the peak RSS is
the child's own, from wait4(). Memory is bounded when the million-step run
needs about what the thousand-step one does: the reader takes the file a
chunk at a time and the series keep a fixed number of buckets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_watch import synthesise  # noqa: E402  (the one synthetic run of the benchmarks)

TUITRAIN = str(Path(sys.executable).with_name("tuitrain"))


def plot_once(run_dir: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `tuitrain plot RUN_DIR -o OUT` process."""
    started = time.perf_counter()
    proc = subprocess.Popen([TUITRAIN, "plot", str(run_dir), "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"tuitrain plot exited {proc.returncode}: {err}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tuitrain-bench-plot-"))
    try:
        small, big = root / "small", root / "big"
        synthesise(small, 1_000)
        started = time.perf_counter()
        synthesise(big, args.steps)
        size = (big / "metrics.jsonl").stat().st_size
        print(f"synthesised {args.steps:,} steps ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
        results = {}
        for name, run_dir in (("1,000 steps", small), (f"{args.steps:,} steps", big)):
            for fmt in ("png", "svg"):
                runs = [plot_once(run_dir, root / f"out.{fmt}") for _ in range(args.repeats)]
                seconds = statistics.median(r[0] for r in runs)
                rss = max(r[1] for r in runs)
                results[(name, fmt)] = (seconds, rss)
                print(f"  {name:>17} -> {fmt}: {seconds:.2f} s (median of {args.repeats}), peak RSS {rss:.0f} MB")
        big_rss = max(v[1] for k, v in results.items() if k[0] != "1,000 steps")
        small_rss = max(v[1] for k, v in results.items() if k[0] == "1,000 steps")
        print(f"peak RSS, {args.steps:,} steps vs 1,000 steps: {big_rss:.0f} MB vs {small_rss:.0f} MB "
              f"(+{big_rss - small_rss:.0f} MB for {size / 1e6:.0f} MB of records)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
