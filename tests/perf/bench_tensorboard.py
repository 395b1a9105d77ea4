"""What --tensorboard costs a run, and what an export of a 1,000,000-step run takes.

    python tests/perf/bench_tensorboard.py [--pairs 5] [--epochs 150] [--export-steps 1000000]

1. steps/s of `tuitrain --preset circles --headless` with --tensorboard vs without (target >= 0.98):
   the two alternate (off, on, on, off, off, on ...: each pair in the other order from the last, so
   a drifting machine favours neither), each a fresh process, and the figure is the steps/s of its
   summary.json (training time, start-up excluded): the median of the paired ratios and the ratio of
   the sums.
2. `tuitrain export RUN_DIR --csv` and `--tensorboard` of a synthetic 1,000,000-step metrics.jsonl
   (flushes of 100 steps, an evaluation every 1,000, as tests/test_replay.py writes it): wall seconds
   and the export process's peak RSS (its own rusage), each run in a fresh process.

Not part of the test run; run it alone (it times CPU-bound processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def circles(run_dir: Path, epochs: int, tensorboard: bool) -> float:
    """steps/s of one headless circles run (its summary.json)."""
    argv = [sys.executable, "-m", "tuitrain.tui.cli", "--preset", "circles", "--headless", "--epochs", str(epochs),
            "--run-dir", str(run_dir)] + (["--tensorboard"] if tensorboard else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if "warning" in proc.stderr:
        print(proc.stderr.strip(), file=sys.stderr)
    if tensorboard and not list((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        raise SystemExit("no event file written")
    return float(json.loads((run_dir / "summary.json").read_text())["steps_per_sec"])


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command, measured on its own process."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode})")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=150, help="circles epochs per run (125 steps each)")
    parser.add_argument("--export-steps", type=int, default=1_000_000, help="0: skip the export part")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tensorboard-") as tmp:
        root = Path(tmp)
        ratios, on_total, off_total = [], 0.0, 0.0
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            rates = {}
            for tb in order:
                rates[tb] = circles(root / f"run-{i}-{'on' if tb else 'off'}", args.epochs, tb)
            ratios.append(rates[True] / rates[False])
            on_total, off_total = on_total + rates[True], off_total + rates[False]
            print(f"pair {i + 1}: off {rates[False]:,.0f} steps/s, on {rates[True]:,.0f} steps/s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        if ratios:
            print(f"--tensorboard on/off steps/s: median of paired ratios {statistics.median(ratios):.3f}, "
                  f"ratio of sums {on_total / off_total:.3f} ({args.pairs} pairs, circles {args.epochs} epochs)")

        if args.export_steps:
            run_dir = root / "million"
            run_dir.mkdir()
            # Written by another process: this one stays small (no torch), since a child's peak RSS
            # as Linux counts it starts from its parent's size at the fork.
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "from test_replay import synthetic_run; synthetic_run(sys.argv[2], int(sys.argv[3]))",
                            str(HERE.parent), str(run_dir / "metrics.jsonl"), str(args.export_steps)], check=True)
            size = (run_dir / "metrics.jsonl").stat().st_size
            print(f"synthetic run: {args.export_steps:,} steps, {size / 1e6:.0f} MB of metrics.jsonl")
            cli = [sys.executable, "-m", "tuitrain.tui.cli", "export", str(run_dir)]
            for what, extra in (("csv", ["--csv", str(root / "out.csv")]),
                                ("csv --evals", ["--csv", str(root / "evals.csv"), "--evals"]),
                                ("tensorboard", ["--tensorboard", str(root / "tb")])):
                wall, rss = timed(cli + extra)
                print(f"export --{what}: {wall:.1f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
