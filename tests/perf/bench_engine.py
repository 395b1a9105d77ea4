"""Benchmark: the engine against the tutorial loop, on the circles preset.

    python tests/perf/bench_engine.py [--repeats 5] [--epochs 30]

Trains circles with its defaults (Adam, lr 0.01, batch 16) in one process,
alternating between the variants so machine noise hits them alike, and
prints steps/s per variant and the ratios:

  (a) tutorial  DataLoader(TensorDataset, batch_size=16, shuffle=True),
                zero_grad/forward/loss/backward/step, .item() per step,
                a validation pass per epoch; torch's default thread count
  (b) headless  the engine, no reader (as `tuitrain --headless`)
  (c) drained   the engine with a thread draining its EventBuffer at 10 Hz,
                as the dashboard will

Targets (issue 2): (b)/(a) >= 1.5 and (c)/(b) >= 0.97. Every variant runs
the same number of epochs with evaluation; the engine also writes
metrics.jsonl and two checkpoints per epoch, which the tutorial loop does not.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tuitrain.engine.config import RunConfig  # noqa: E402
from tuitrain.engine.trainer import Trainer  # noqa: E402
from tuitrain.presets import load_preset  # noqa: E402

DEFAULT_THREADS = torch.get_num_threads()


def tutorial(epochs: int, seed: int) -> float:
    """The loop most tutorials teach; returns optimizer steps per second."""
    torch.set_num_threads(DEFAULT_THREADS)
    preset = load_preset("circles")
    torch.manual_seed(seed)
    data = preset.make_data(seed)
    model = preset.make_model()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train = DataLoader(TensorDataset(*data.train), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(*data.val), batch_size=256)
    steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total = 0.0
        for x, y in train:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += (model(x).argmax(1) == y).sum().item()
    return steps / (time.perf_counter() - start)


def engine(epochs: int, seed: int, drained: bool, root: str, n: int) -> float:
    preset = load_preset("circles")
    cfg = RunConfig(**{**preset.defaults, "preset": "circles", "epochs": epochs, "seed": seed})
    trainer = Trainer(cfg, preset, f"{root}/run-{n}-{'c' if drained else 'b'}")
    stop = threading.Event()
    reader = None
    if drained:
        def drain() -> None:
            while not stop.wait(0.1):
                trainer.events.drain()
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    start = time.perf_counter()
    result = trainer.run()
    elapsed = time.perf_counter() - start
    stop.set()
    if reader is not None:
        reader.join()
    assert result.status == "finished", result.summary
    return result.summary["steps"] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    with tempfile.TemporaryDirectory() as root:
        engine(2, 0, False, root, -1)  # warm-up: imports, allocator, first checkpoint
        tutorial(2, 0)
        for i in range(args.repeats):
            rates["a"].append(tutorial(args.epochs, i))
            rates["b"].append(engine(args.epochs, i, False, root, i))
            rates["c"].append(engine(args.epochs, i, True, root, i))
            print(f"repeat {i + 1}: tutorial {rates['a'][-1]:7.0f}  headless {rates['b'][-1]:7.0f}  "
                  f"drained {rates['c'][-1]:7.0f} steps/s", flush=True)
    a, b, c = (statistics.median(rates[k]) for k in "abc")
    print(f"\nmedian steps/s: tutorial {a:.0f} | engine headless {b:.0f} | engine + reader {c:.0f}")
    print(f"(b)/(a) engine vs tutorial loop: {b / a:.2f}  (target >= 1.5)")
    print(f"(c)/(b) with reader vs headless: {c / b:.3f}  (target >= 0.97)")
    print(f"threads: tutorial {DEFAULT_THREADS}, engine {torch.get_num_threads()} (auto for small models)")


if __name__ == "__main__":
    main()
