"""What tuitrain.attach() costs a user's own loop: steps/s with run.step() vs the same loop without.

    python tests/perf/bench_attach.py [--pairs 7] [--steps 3000] [--batch 16] [--optimizer adam|sgd]
    python tests/perf/bench_attach.py --shuffled 14     # four arms per round, in a shuffled order

Circles-sized work on the CPU: the circles preset's 2-32-32-2 MLP, batch and optimizer (Adam, batch
16) with a cosine schedule, on one thread; `--optimizer sgd --batch 32` is the worst case we know
(a step of ~150-230 us on this machine, so a fixed cost per step weighs most). The two sides alternate in one
process (A, B, A, B ...), each on freshly seeded objects, and the figure is the median of the
paired ratios (target >= 0.97). On a machine whose speed drifts by more than the cost being
measured, the paired ratios scatter by +/-0.1; so it also times the per-step cost itself, on one
model, alternating six times: one training step without attach, with attach's optimizer hooks, and
with the hooks and run.step() (the flushes included at the default interval). Not part of the test run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import tuitrain


#: Tracked objects on the heap in the second per-step figure (importing transformers and building a
#: 2-layer GPT-2 leaves about 360,000).
HEAP = 300_000


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.01)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def loop(steps: int, batch: int, run_dir: Path | None, optimizer: str = "adam", arm: str = "attach") -> float:
    """Steps per second of one plain loop, with attach() when run_dir is given; `arm` says what attach()
    is given: "attach" (everything), "no model" or "no optimizer"."""
    torch.manual_seed(0)
    x = torch.randn(4096, 2)
    y = (x.norm(dim=1) < 1.0).long()
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = make_optimizer(optimizer, model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    run = None
    if run_dir is not None:
        given = {"attach": dict(model=model, optimizer=opt, scheduler=sched),
                 "no model": dict(optimizer=opt, scheduler=sched), "no optimizer": {}}[arm]
        run = tuitrain.attach(run_dir=run_dir, total_steps=steps, **given)
    start = time.perf_counter()
    for i in range(steps):
        j = (i * batch) % (len(x) - batch)
        loss = loss_fn(model(x[j:j + batch]), y[j:j + batch])
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        if run is not None:
            run.step(loss=loss)
    seconds = time.perf_counter() - start
    if run is not None:
        run.close()
    return steps / seconds


def per_step_cost(batch: int, optimizer: str, reps: int = 6, n: int = 2000) -> dict[str, float]:
    """Median microseconds of one small training step: plain, with the hooks, with hooks and run.step()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = make_optimizer(optimizer, model)
    x, y, loss_fn = torch.randn(batch, 2), torch.zeros(batch, dtype=torch.long), nn.CrossEntropyLoss()

    def one() -> torch.Tensor:
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    def micros(step: object) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()  # type: ignore[operator]
        return (time.perf_counter() - start) / n * 1e6

    for _ in range(300):
        one()
    times: dict[str, list[float]] = {"plain": [], "hooks": [], "hooks + run.step()": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(reps):
            times["plain"].append(micros(one))
            run = tuitrain.attach(run_dir=Path(tmp) / f"cost-{i}", model=model, optimizer=opt)
            times["hooks"].append(micros(one))
            times["hooks + run.step()"].append(micros(lambda: run.step(loss=one())))
            run.close()
    return {k: statistics.median(v) for k, v in times.items()}


def shuffled(rounds: int, steps: int, batch: int, optimizer: str) -> None:
    """Each round runs every arm once, in a new random order: a drift of the machine's speed falls on
    every arm alike. Prints each arm's median paired ratio to the plain loop of the same round."""
    import random

    arms = ["plain", "attach", "no model", "no optimizer"]
    rates: dict[str, list[float]] = {arm: [] for arm in arms}
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for arm in rng.sample(arms, len(arms)):
                run_dir = None if arm == "plain" else Path(tmp) / f"{arm}-{r}".replace(" ", "-")
                rates[arm].append(loop(steps, batch, run_dir, optimizer, arm))
    for arm in arms:
        ratios = [a / b for a, b in zip(rates[arm], rates["plain"])]
        print(f"{arm:13s} median {statistics.median(rates[arm]):7,.0f} steps/s, median paired ratio "
              f"{statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--shuffled", type=int, metavar="ROUNDS",
                        help="instead: ROUNDS rounds of four arms in a shuffled order (plain; attach; attach "
                             "without the model: no layer health; without the optimizer: no hooks, no LR rule)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loop(300, args.batch, None, args.optimizer)  # warm-up: first-call costs belong to neither side
    if args.shuffled:
        shuffled(args.shuffled, args.steps, args.batch, args.optimizer)
        return
    ratios, plain, attached = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            first_attached = i % 2 == 1  # alternate which side goes first
            results = {}
            for side in ((True, False) if first_attached else (False, True)):
                results[side] = loop(args.steps, args.batch, Path(tmp) / f"run-{i}" if side else None,
                                     args.optimizer)
            plain.append(results[False])
            attached.append(results[True])
            ratios.append(results[True] / results[False])
            print(f"pair {i + 1}: without {results[False]:,.0f} steps/s, with run.step() {results[True]:,.0f} "
                  f"steps/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"median steps/s without {statistics.median(plain):,.0f}, with {statistics.median(attached):,.0f}")
    spread = (max(ratios) - min(ratios)) / 2
    print(f"attached / plain: median of paired ratios {statistics.median(ratios):.3f} (+/- {spread:.3f}), "
          f"geometric mean {math.exp(statistics.fmean(math.log(r) for r in ratios)):.3f}")
    for heap in (0, HEAP):
        # A framework (Lightning, transformers) fills the heap with objects the garbage collector
        # tracks: each collection of the older generations then walks all of them.
        junk = [[{} for _ in range(10)] for _ in range(heap // 10)]
        cost = per_step_cost(args.batch, args.optimizer)
        del junk
        plain = cost["plain"]
        print(f"one training step, median of 6 alternating runs, {heap:,} tracked objects on the heap: " + ", ".join(
            f"{k} {v:.1f} us ({plain / v:.3f}x)" for k, v in cost.items()))


if __name__ == "__main__":
    main()
