"""What tuitrain costs a torchrun group: steps/s of its trainer on 2 gloo ranks vs a plain DDP loop.

    python tests/perf/bench_ddp.py [--pairs 5] [--epochs 60] [--collectives 2000]

Both sides are `torchrun --nproc-per-node 2` on this machine's CPU, with the circles preset's data and
model, Adam at lr 0.01, batch 16 per rank: (A) a plain loop a user would write (DistributedDataParallel,
DistributedSampler, an evaluation of each rank's share every epoch with one all_reduce, rank 0 saving a
checkpoint each epoch), and (B) `torchrun -m tuitrain --preset circles --headless`, which does the same
plus its sync steps, the group's mean loss and every rank's numbers. Each side reports steps/s over its
training loop (B: summary.json's steps_per_sec, whose clock also leaves out the set-up); the sides
alternate (A, B, A, B ...) and the figure is the median of the paired ratios B/A (target >= 0.95).

It also times, on 2 ranks, what tuitrain adds at each sync step (about one per log interval): the
broadcast of rank 0's decision, the all_reduce of the losses since the last sync and the all_gather of
every rank's numbers, and says what that is per training step at the speed measured. Not part of the
test run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tuitrain.tui.group_launch import free_port

PLAIN = textwrap.dedent('''
    import json, os, sys, time
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DistributedSampler
    from tuitrain.presets.circles import make_data, make_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = make_data(0)
    (x, y), (vx, vy) = data.train, data.val
    model = nn.parallel.DistributedDataParallel(make_model())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    sampler = DistributedSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=True, seed=0)
    val = torch.arange(rank, len(vx), world)
    epochs, batch, steps = int(sys.argv[1]), 16, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        with torch.no_grad():
            out = model.module(vx[val])
            sums = torch.stack([loss_fn(out, vy[val]).double() * len(val), (out.argmax(1) == vy[val]).sum().double(),
                                torch.tensor(float(len(val)), dtype=torch.float64)])
            dist.all_reduce(sums)
        if rank == 0:
            torch.save({"model": model.module.state_dict(), "optimizer": opt.state_dict()}, sys.argv[2])
    seconds = time.perf_counter() - start
    if rank == 0:
        print("PLAIN " + json.dumps({"steps": steps, "steps_per_sec": steps / seconds}), flush=True)
    dist.barrier()  # leave together: a rank that tears its group down while another still works can abort
    dist.destroy_process_group()
''')

COLLECTIVES = textwrap.dedent('''
    import json, sys, time
    import torch
    import torch.distributed as dist
    from tuitrain.engine.distributed import Decision, StepSync

    dist.init_process_group("gloo")
    sync = StepSync()
    losses = torch.rand(160)  # about one log interval of circles steps
    mine = torch.rand(7, dtype=torch.float64)
    n = int(sys.argv[1])
    for _ in range(50):  # warm up the connections
        sync.decide(Decision([], 1) if sync.leader else None)
    start = time.perf_counter()
    for _ in range(n):
        sync.decide(Decision([], 1) if sync.leader else None)
        sync.mean(losses).tolist()
        sync.gather_tensor(mine).tolist()
    if sync.leader:
        print("SYNC " + json.dumps({"seconds_per_sync": (time.perf_counter() - start) / n}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
''')


def torchrun(*args: str, cwd: Path) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def plain(epochs: int, work: Path) -> float:
    script = work / "plain_ddp.py"
    script.write_text(PLAIN)
    out = torchrun(str(script), str(epochs), str(work / "plain.pt"), cwd=work)
    line = next(line for line in out.splitlines() if line.startswith("PLAIN "))
    return json.loads(line.split(" ", 1)[1])["steps_per_sec"]


def tuitrain_group(epochs: int, work: Path, n: int) -> float:
    run_dir = work / f"R{n}"
    torchrun("-m", "tuitrain", "--preset", "circles", "--headless", "--epochs", str(epochs), "--run-dir",
             str(run_dir), cwd=work)
    return json.loads((run_dir / "summary.json").read_text())["steps_per_sec"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--collectives", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ratios, rates = [], []
        for i in range(args.pairs):
            a = plain(args.epochs, work)
            b = tuitrain_group(args.epochs, work, i)
            ratios.append(b / a)
            rates.append((a, b))
            print(f"pair {i + 1}: plain DDP {a:,.0f} steps/s, tuitrain {b:,.0f} steps/s, ratio {b / a:.3f}",
                  flush=True)
        script = work / "collectives.py"
        script.write_text(COLLECTIVES)
        out = torchrun(str(script), str(args.collectives), cwd=work)
        per_sync = json.loads(next(line for line in out.splitlines() if line.startswith("SYNC ")).split(" ", 1)[1])
    median = statistics.median(ratios)
    speed = statistics.median(b for _, b in rates)
    steps_per_sync = max(speed * 0.25, 1.0)  # the default log interval
    cost = per_sync["seconds_per_sync"]
    print(f"\ntuitrain / plain DDP, 2 gloo ranks, circles, {args.epochs} epochs: median {median:.3f} over "
          f"{args.pairs} pairs (min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.95)")
    print(f"one sync step (decision broadcast + loss all_reduce + ranks' all_gather): {cost * 1e3:.3f} ms; "
          f"at {speed:,.0f} steps/s a sync comes every {steps_per_sync:,.0f} steps: "
          f"{cost / steps_per_sync * 1e6:.2f} us per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
