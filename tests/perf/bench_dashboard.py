"""Benchmarks for the dashboard (issue 3), each printed as a ratio or a bound.

    python tests/perf/bench_dashboard.py [--repeats 3] [--epochs 60] [--skip-throughput | --only-throughput]

1. throughput: `tuitrain --preset circles` with the dashboard in a real
   terminal (tmux, 120x40) against `--headless`, same config, alternating;
   steps/s from each run's summary.json. Target >= 0.90.
2. plot cost: LossPlot.replot + render from a 1,000,000-step history
   against a 1,000-step one. Target <= 2x.
3. key to engine answer: `p` pressed in the app (Pilot) until the engine
   emits paused/resumed, while training runs and a second process keeps
   the other core busy. Target p95 <= 200 ms.
4. memory: what a 1,000,000-step history adds to the process. Target <= 64 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import psutil  # noqa: E402

TUITRAIN = str(Path(sys.executable).with_name("tuitrain"))


# -- 1. throughput -----------------------------------------------------------------------
def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.1)  # wait-ok: poll interval inside a condition wait with a deadline


def run_headless(root: Path, epochs: int, n: int) -> float:
    run_dir = root / f"headless-{n}"
    subprocess.run([TUITRAIN, "--preset", "circles", "--headless", "--epochs", str(epochs), "--run-dir",
                    str(run_dir)], check=True, capture_output=True)
    return json.loads((run_dir / "summary.json").read_text())["steps_per_sec"]


def run_dashboard(root: Path, epochs: int, n: int) -> float:
    run_dir = root / f"dash-{n}"
    session = f"tuitrain-bench-{os.getpid()}-{n}"
    done = root / f"dash-{n}.exit"
    command = (f"{TUITRAIN} --preset circles --epochs {epochs} --run-dir {run_dir}; "
               f"echo $? > {done}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], check=True)
    try:
        _wait_for(run_dir / "summary.json", timeout=600)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        _wait_for(done, timeout=60)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    return json.loads((run_dir / "summary.json").read_text())["steps_per_sec"]


def bench_throughput(repeats: int, epochs: int) -> None:
    if shutil.which("tmux") is None:
        print("1. throughput: skipped (no tmux)")
        return
    dash, head = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(repeats):
            head.append(run_headless(root, epochs, i))
            dash.append(run_dashboard(root, epochs, i))
            print(f"   repeat {i + 1}: headless {head[-1]:,.0f} steps/s, dashboard {dash[-1]:,.0f} steps/s",
                  flush=True)
    ratio = statistics.median(dash) / statistics.median(head)
    print(f"1. throughput dashboard/headless: {ratio:.3f} (target >= 0.90)")


# -- 2 and 4: plot cost and memory ---------------------------------------------------------
def _state_with(steps: int):
    from tuitrain.engine.events import StepStats
    from tuitrain.tui.state import DashboardState

    state = DashboardState()
    batch = 1000
    for start in range(1, steps + 1, batch):
        n = min(batch, steps - start + 1)
        xs = list(range(start, start + n))
        losses = [1.0 / (1 + s * 1e-3) + (5.0 if s == steps // 2 else 0.0) for s in xs]
        state.apply(StepStats(xs[-1], 0.0, epoch=1, steps=xs, loss=losses, lr=[1e-3] * n, grad_norm=None,
                              epoch_step=0, steps_per_epoch=steps, steps_per_sec=0.0, samples_per_sec=0.0))
    return state


async def _plot_cost() -> tuple[float, float]:
    from textual.app import App, ComposeResult

    from tuitrain.tui.widgets.loss_plot import LossPlot

    small, big = _state_with(1_000), _state_with(1_000_000)

    class PlotApp(App[None]):
        CSS = "LossPlot { width: 80; height: 24; }"

        def compose(self) -> ComposeResult:
            yield LossPlot()

    app = PlotApp()
    async with app.run_test(size=(120, 40)):
        plot = app.query_one(LossPlot)

        def cost(state) -> float:
            best = float("inf")
            for _ in range(15):
                t0 = time.perf_counter()
                plot.replot(state, smoothing=0.6, log_scale=False)
                plot.render()
                best = min(best, time.perf_counter() - t0)
            return best

        return cost(small), cost(big)


def bench_plot_cost() -> None:
    small, big = asyncio.run(_plot_cost())
    print(f"2. loss plot build+render: 1k steps {small * 1e3:.1f} ms, 1M steps {big * 1e3:.1f} ms, "
          f"ratio {big / small:.2f} (target <= 2)")


def bench_memory() -> None:
    process = psutil.Process()
    _state_with(10_000)  # warm-up: imports, allocator arenas
    tracemalloc.start()
    rss0 = process.memory_info().rss
    state = _state_with(1_000_000)
    _, peak = tracemalloc.get_traced_memory()
    rss1 = process.memory_info().rss
    tracemalloc.stop()
    assert len(state.loss) == 1_000_000
    print(f"4. 1M-step history: RSS +{(rss1 - rss0) / 2**20:.1f} MB, traced peak {peak / 2**20:.1f} MB "
          f"(target <= 64 MB)")


# -- 3. key to engine answer ------------------------------------------------------------------
def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


async def _key_latency(presses: int) -> list[float]:
    from tuitrain.engine.config import RunConfig
    from tuitrain.engine.events import Paused, Resumed
    from tuitrain.engine.trainer import Trainer
    from tuitrain.presets import load_preset
    from tuitrain.tui.app import TuitrainApp

    answered: list[float] = []

    def listener(event) -> None:
        if isinstance(event, (Paused, Resumed)):
            answered.append(time.perf_counter())

    preset = load_preset("circles")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(**{**preset.defaults, "preset": "circles", "epochs": 10_000})
        trainer = Trainer(cfg, preset, Path(tmp) / "run", listeners=[listener])
        app = TuitrainApp(trainer)
        latencies = []
        async with app.run_test(size=(120, 40)) as pilot:
            while app.state.step < 200:
                await pilot.pause(0.05)
            for _ in range(presses):
                before = len(answered)
                t0 = time.perf_counter()
                await pilot.press("p")
                while len(answered) == before:
                    await asyncio.sleep(0.002)  # wait-ok: poll interval inside a condition wait with a deadline
                latencies.append(answered[-1] - t0)
                await pilot.pause(0.1)
            if app.state.status == "PAUSED":
                await pilot.press("p")
            await pilot.press("q")
            deadline = time.monotonic() + 60
            while not app.engine_done.is_set() and time.monotonic() < deadline:
                await pilot.pause(0.05)
    return latencies


def bench_key_latency(presses: int = 40) -> None:
    burner = multiprocessing.Process(target=_burn, args=(time.time() + 120,), daemon=True)
    burner.start()
    try:
        latencies = asyncio.run(_key_latency(presses))
    finally:
        burner.terminate()
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"3. key to engine answer ({presses} presses, both cores busy): median "
          f"{statistics.median(latencies) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms (target <= 200 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--only-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_throughput:
        bench_throughput(args.repeats, args.epochs)
    if args.only_throughput:
        return
    bench_plot_cost()
    bench_key_latency()
    bench_memory()


if __name__ == "__main__":
    main()
