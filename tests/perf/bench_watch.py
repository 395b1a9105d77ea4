"""Benchmarks for `tuitrain watch` (issue 6), each printed as a figure against its target.

    python tests/perf/bench_watch.py [--steps 1000000] [--repeats 5] [--epochs 200]
                                     [--skip-first-frame | --only-first-frame]

1. first frame: `tuitrain watch` on a finished run with a 1,000,000-step
   metrics.jsonl (synthesised in the engine's own format, ~100 MB). A fresh
   process (interpreter start, imports, the app) runs the real WatchApp
   headless (App.run_test) and reports when the loss plot has drawn data
   and when that frame was painted (the refresh after it), measured from
   just before the process was started; also when the whole history is in.
   Target: first frame painted <= 3 s.
2. throughput with a watcher: `tuitrain --preset circles --detach`, with and
   without a `tuitrain watch` attached in a real terminal (tmux, 120x40),
   alternating; steps/s from each run's summary.json; the median ratio.
   Target >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TUITRAIN = str(Path(sys.executable).with_name("tuitrain"))


# -- 1. first frame ----------------------------------------------------------------------------
def synthesise(run_dir: Path, steps: int, per_flush: int = 500, steps_per_epoch: int = 125) -> None:
    """A finished circles-like run: started, `steps` step lines in flushes of `per_flush`, an eval per
    epoch, ended; the lines formatted as engine/events.py writes them."""
    run_dir.mkdir(parents=True)
    t0 = 1_790_000_000.0
    epochs = math.ceil(steps / steps_per_epoch)
    config = {"preset": "circles", "epochs": epochs, "batch_size": 16, "accumulate": 1, "grad_clip": 0.0,
              "patience": None}
    (run_dir / "config.json").write_text(json.dumps(config))
    started = {"kind": "event", "event": "started", "step": 0, "t": t0, "run_dir": str(run_dir),
               "preset": "circles", "task": "classification", "metric": "acc", "device": "cpu",
               "device_name": "cpu", "config": config, "epoch": 0, "steps_per_epoch": steps_per_epoch,
               "total_steps": steps, "train_size": 2000, "val_size": 500, "parameters": 1218, "amp": "off"}
    rate = 2000.0
    best = math.inf
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.write(json.dumps(started) + "\n")
        step = 0
        while step < steps:
            end = min(steps, step + per_flush)
            t = f"{t0 + end / rate:.3f}"
            lines = []
            for s in range(step + 1, end + 1):
                loss = 0.7 * math.exp(-s / (steps / 8)) + 0.02 * ((s * 7919) % 101) / 101
                lines.append(f'{{"kind":"step","step":{s},"epoch":{(s - 1) // steps_per_epoch + 1},"t":{t},'
                             f'"loss":{loss!r},"lr":0.01}}')
                if s % steps_per_epoch == 0:
                    epoch = s // steps_per_epoch
                    val = 0.6 * math.exp(-s / (steps / 8)) + 0.02
                    improved = val < best
                    best = min(best, val)
                    lines.append(json.dumps({
                        "kind": "eval", "step": s, "epoch": epoch, "t": float(t), "train_loss": val,
                        "train_metric": 0.9, "val_loss": val, "val_metric": 0.95, "metric": "acc", "lr": 0.01,
                        "best_val_loss": best, "best_epoch": epoch, "improved": improved, "patience_used": 0,
                        "patience": None, "epoch_end": True, "val_acc": 0.95, "train_acc": 0.9}))
            f.write("\n".join(lines) + "\n")
            step = end
        summary = {"status": "finished", "reason": "completed all epochs", "preset": "circles", "epochs": epochs,
                   "steps": steps, "best_val_loss": best, "steps_per_sec": rate, "train_seconds": steps / rate,
                   "run_dir": str(run_dir)}
        f.write(json.dumps({"kind": "event", "event": "ended", "step": steps, "t": t0 + steps / rate,
                            "status": "finished", "summary": summary}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))


#: Runs in a fresh interpreter; argv: run_dir, the parent's time.time() just before starting it.
FIRST_FRAME = r"""
import asyncio, sys, time
run_dir, t0 = sys.argv[1], float(sys.argv[2])
from tuitrain.tui.remote_run import RemoteRun
from tuitrain.tui.watch import WatchApp
from tuitrain.tui.widgets.loss_plot import LossPlot

first = {}
replot = LossPlot.replot
def timed(self, state, **kw):
    replot(self, state, **kw)
    if len(state.loss) and "frame" not in first:
        first["frame"] = time.time() - t0
        first["steps"] = len(state.loss)
LossPlot.replot = timed

async def main():
    remote = RemoteRun(run_dir)
    app = WatchApp(remote)
    async with app.run_test(size=(120, 40)) as pilot:
        while not remote.first_frame.is_set():  # set by the app after the refresh that painted the steps
            await asyncio.sleep(0.005)  # wait-ok: poll interval of a condition wait
        painted = time.time() - t0
        while app.state.status != "FINISHED":
            await asyncio.sleep(0.05)  # wait-ok: poll interval of a condition wait
        full = time.time() - t0
        print(f"{first['frame']:.3f} {painted:.3f} {first['steps']} {full:.3f} {len(app.state.loss)}")
        app.exit()

asyncio.run(main())
"""


def first_frame(run_dir: Path) -> tuple[float, float, int, float, int]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", FIRST_FRAME, str(run_dir), repr(t0)], capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    a, b, steps, full, total = out.stdout.split()
    return float(a), float(b), int(steps), float(full), int(total)


# -- 2. throughput with a watcher ---------------------------------------------------------------
def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)  # wait-ok: poll interval inside a condition wait with a deadline


def detached_run(root: Path, epochs: int, n: int, watch: bool) -> float:
    from tuitrain.engine.rundir import pid_alive, read_pid

    run_dir = root / f"{'watched' if watch else 'alone'}-{n}"
    subprocess.run([TUITRAIN, "--preset", "circles", "--epochs", str(epochs), "--detach", "--run-dir",
                    str(run_dir)], check=True, capture_output=True, cwd=root)
    pid = read_pid(run_dir)["pid"]
    session = f"tuitrain-bench-watch-{os.getpid()}-{n}"
    if watch:
        env = dict(os.environ)
        env.pop("TMUX", None)
        subprocess.run(["tmux", "-L", session, "new-session", "-d", "-s", "w", "-x", "120", "-y", "40",
                        f"{TUITRAIN} watch {run_dir}; sleep 600"], check=True, env=env)
    try:
        _wait(lambda: not pid_alive(pid), 600, "the run to finish")
    finally:
        if watch:
            screen = subprocess.run(["tmux", "-L", session, "capture-pane", "-p", "-t", "w"], capture_output=True,
                                    text=True).stdout
            subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True)
            if "FINISHED" not in screen:
                raise RuntimeError(f"the watcher did not follow the run to its end:\n{screen}")
    return json.loads((run_dir / "summary.json").read_text())["steps_per_sec"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200, help="circles epochs per throughput run (125 steps each)")
    parser.add_argument("--frame-repeats", type=int, default=3)
    parser.add_argument("--skip-first-frame", action="store_true")
    parser.add_argument("--only-first-frame", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tuitrain-bench-watch-"))
    try:
        if not args.skip_first_frame:
            run_dir = root / "big"
            started = time.perf_counter()
            synthesise(run_dir, args.steps)
            size = (run_dir / "metrics.jsonl").stat().st_size
            print(f"synthesised {args.steps:,} steps ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
            results = [first_frame(run_dir) for _ in range(args.frame_repeats)]
            for frame, painted, steps, full, total in results:
                print(f"  first frame: loss plot drawn {frame:.2f} s after process start ({steps:,} steps in it), "
                      f"painted {painted:.2f} s; whole history ({total:,} steps) in {full:.2f} s")
            median = statistics.median(r[1] for r in results)
            print(f"first frame (median of {args.frame_repeats}): {median:.2f} s  target <= 3 s  {'OK' if median <= 3 else 'MISSED'}")
        if not args.only_first_frame:
            if shutil.which("tmux") is None:
                print("throughput: skipped (tmux is not installed)")
                return 0
            alone, watched = [], []
            for n in range(args.repeats):
                alone.append(detached_run(root, args.epochs, n, watch=False))
                watched.append(detached_run(root, args.epochs, n, watch=True))
                print(f"  pair {n + 1}: alone {alone[-1]:,.0f} steps/s, watched {watched[-1]:,.0f} steps/s")
            ratio = statistics.median(watched) / statistics.median(alone)
            print(f"throughput with one watcher / without (medians of {args.repeats}): {ratio:.3f}  "
                  f"target >= 0.95  {'OK' if ratio >= 0.95 else 'MISSED'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
