"""Calibrate engine/diagnosis.py on real runs: train the classic experiments headless, then
replay each run's metrics.jsonl through a Diagnostician and print which hints fire, where.

    .venv/bin/python tests/perf/calibrate_diagnosis.py               # run all, then replay
    .venv/bin/python tests/perf/calibrate_diagnosis.py --only lr10 default
    .venv/bin/python tests/perf/calibrate_diagnosis.py --replay /tmp/some-run-dir

Step records are grouped into flushes by their shared "t" (one StepStats per flush),
so the replay sees what the engine's call sites see. Not a test: it trains for real
and takes a minute or two on a laptop core.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tuitrain.engine.diagnosis import Diagnostician, Finding

ROOT = Path("/tmp/tuitrain-calibrate")
CLI = [sys.executable, "-m", "tuitrain.tui.cli"]

# name: (arguments, expectation in words)
EXPERIMENTS: dict[str, tuple[list[str], str]] = {
    "default": (["--preset", "circles", "--epochs", "30"], "learns: no lr/underfitting hint"),
    "lr10": (["--preset", "circles", "--epochs", "10", "--lr", "10"], "lr_too_high"),
    "lr1e-4": (["--preset", "circles", "--epochs", "10", "--lr", "0.0001"], "lr_too_low within 5 epochs (625 steps)"),
    "sgd0.1": (["--preset", "circles", "--epochs", "10", "--optimizer", "sgd", "--lr", "0.1"], "nothing silly"),
    "adam0.1": (["--preset", "circles", "--epochs", "10", "--lr", "0.1"], "nothing silly"),
    "batch1": (["--preset", "circles", "--epochs", "3", "--batch-size", "1"], "noisy, but not lr_too_high"),
    "batch128": (["--preset", "circles", "--epochs", "30", "--batch-size", "128"], "nothing"),
    "sgd10": (["--preset", "circles", "--epochs", "5", "--optimizer", "sgd", "--lr", "10"], "lr_too_high"),
    "sine-sgd10": (["--preset", "sine", "--epochs", "5", "--optimizer", "sgd", "--lr", "10"],
                   "NaN; lr_too_high alongside"),
    "explode": (["--preset", "explode"], "NaN in epoch 1; lr_too_high alongside"),
    "overfit": (["--preset", "overfit"], "overfitting before early stopping ends it"),
    "overfit-seed1": (["--preset", "overfit", "--seed", "1"], "overfitting"),
    "overfit-seed3": (["--preset", "overfit", "--seed", "3"], "overfitting"),
    "linear": (["--preset", "@linear"], "underfitting (a linear model cannot separate rings)"),
    "moons": (["--preset", "moons"], "nothing"),
    "spiral": (["--preset", "spiral"], "nothing"),
    "xor": (["--preset", "xor"], "nothing"),
    "sine": (["--preset", "sine"], "nothing"),
}


# A preset of our own: circles with a linear model, the textbook underfit.
LINEAR = '''"""circles with a linear model: no straight line separates two rings."""
from tuitrain.presets.circles import make_data
from tuitrain.presets.models import mlp
TASK = "classification"
DEFAULTS = {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 10}
def make_model():
    return mlp(2, 32, 2, depth=0)
'''


def train(name: str, args: list[str]) -> Path | None:
    if "@linear" in args:
        (ROOT / "linear_preset.py").write_text(LINEAR)
        args = [str(ROOT / "linear_preset.py") if a == "@linear" else a for a in args]
    run_dir = ROOT / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = CLI + args + ["--headless", "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not (run_dir / "metrics.jsonl").exists():
        print(f"{name}: did not run (exit {proc.returncode}): {proc.stderr.strip()[-200:]}")
        return None
    print(f"{name}: exit {proc.returncode} in {time.perf_counter() - t0:.1f} s")
    return run_dir


def replay(run_dir: Path) -> list[tuple[str, Finding]]:
    """Feed metrics.jsonl to a Diagnostician as the engine would; (where, finding) in order."""
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    diag = Diagnostician(patience=config.get("patience"), device_type="cpu")
    found: list[tuple[str, Finding]] = []
    flush_t: float | None = None
    steps: list[int] = []
    losses: list[float] = []
    epoch = 0

    def flush() -> None:
        nonlocal steps, losses
        if steps:
            for f in diag.observe_steps(steps, losses):
                found.append((f"epoch {epoch} step {steps[-1]}", f))
        steps, losses = [], []

    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        kind = rec.get("kind")
        if kind == "step":
            if rec["t"] != flush_t:
                flush()
                flush_t = rec["t"]
            epoch = rec["epoch"]
            steps.append(rec["step"])
            losses.append(float("nan") if rec["loss"] is None else rec["loss"])
            continue
        flush()
        flush_t = None
        if kind == "eval" and rec.get("epoch_end", True):
            val = float("nan") if rec["val_loss"] is None else rec["val_loss"]
            for f in diag.observe_eval(rec["epoch"], rec["step"], rec["train_loss"], val,
                                       rec.get("patience_used", 0)):
                found.append((f"epoch {rec['epoch']} (eval)", f))
        elif kind == "event" and rec.get("event") == "nan":
            f = diag.observe_nonfinite(rec["step"], rec["action"], rolled_back_to=rec.get("rolled_back_to"),
                                       count=rec.get("count", 1))
            found.append((f"step {rec['step']}", f))
            if rec["action"] == "pause":
                diag.reset_steps()
    flush()
    return found


def report(name: str, run_dir: Path, expect: str = "") -> None:
    found = replay(run_dir)
    print(f"--- {name}" + (f"  (expect: {expect})" if expect else ""))
    if not found:
        print("    no hints")
    for where, f in found:
        print(f"    [{f.rule}] at {where}: {f.message} | {f.evidence}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="experiment names to run", choices=sorted(EXPERIMENTS))
    p.add_argument("--replay", nargs="*", type=Path, help="replay existing run directories only")
    ns = p.parse_args()
    if ns.replay:
        for d in ns.replay:
            report(d.name, d)
        return 0
    names = ns.only or list(EXPERIMENTS)
    ROOT.mkdir(parents=True, exist_ok=True)
    for name in names:
        args, expect = EXPERIMENTS[name]
        run_dir = train(name, args)
        if run_dir is not None:
            report(name, run_dir, expect)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
