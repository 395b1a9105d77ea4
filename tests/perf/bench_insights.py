"""Benchmark: what the decision boundary, layer health and hints cost a run.

    python tests/perf/bench_insights.py [--repeats 7] [--epochs 20]

Trains circles with its defaults in one process, alternating between
  (plain)    Trainer(insights=False)                 nothing extra
  (insights) Trainer(insights=True, boundary=True)   boundary frames, layer
             stats at every flush, diagnosis rules over every flush
so machine noise hits both alike, and prints steps/s and the ratio.
Target (issue 4): insights/plain >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

from tuitrain.engine import events as ev  # noqa: E402
from tuitrain.engine.config import RunConfig  # noqa: E402
from tuitrain.engine.trainer import Trainer  # noqa: E402
from tuitrain.presets import load_preset  # noqa: E402


def train(epochs: int, seed: int, insights: bool, root: str, n: int) -> tuple[float, dict[str, int]]:
    preset = load_preset("circles")
    cfg = RunConfig(**{**preset.defaults, "preset": "circles", "epochs": epochs, "seed": seed})
    counts = {"boundary": 0, "layers": 0, "hint": 0}

    def count(e: ev.Event) -> None:
        if e.name in counts:
            counts[e.name] += 1

    trainer = Trainer(cfg, preset, f"{root}/run-{n}-{int(insights)}", insights=insights, boundary=insights,
                      listeners=[count])
    start = time.perf_counter()
    result = trainer.run()
    elapsed = time.perf_counter() - start
    assert result.status == "finished", result.summary
    return result.summary["steps"] / elapsed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    plain: list[float] = []
    full: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        train(2, 0, True, root, -1)  # warm-up
        for i in range(args.repeats):
            first, second = (False, True) if i % 2 == 0 else (True, False)
            for insights in (first, second):
                rate, got = train(args.epochs, i, insights, root, i)
                (full if insights else plain).append(rate)
                if insights:
                    counts = got
            print(f"repeat {i + 1}: plain {plain[-1]:7.0f}  insights {full[-1]:7.0f} steps/s  "
                  f"(last insights run: {counts['boundary']} boundary frames, {counts['layers']} layer "
                  f"stats, {counts['hint']} hints)", flush=True)
    p, f = statistics.median(plain), statistics.median(full)
    print(f"\nmedian steps/s: plain {p:.0f} | boundary + layer health + hints {f:.0f}")
    print(f"insights/plain: {f / p:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
