"""tuitrain.attach() under torchrun: two gloo ranks on this machine steered as one run.

Each rank writes a per-rank trace (the LR its optimizer used at every step, its loss), so the
test can prove that every command took effect on both ranks at the same step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_until
from group_helpers import free_port
from integration_helpers import connect, events, records
from tuitrain.engine.commands import Pause, Resume, SetLR, Stop

SCRIPT = textwrap.dedent('''
    import datetime, json, os, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    import tuitrain

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(sys.argv[3])))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.7)
    trace = open(os.path.join(sys.argv[2], f"rank{rank}.jsonl"), "w", buffering=1)
    used = []
    run = tuitrain.attach(run_dir=sys.argv[1], model=model, optimizer=opt, scheduler=sched, log_interval=0.05)
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    g = torch.Generator().manual_seed(rank)
    step = 0
    with run:
        while not run.should_stop and step < 20000:
            x = torch.randn(32, 2, generator=g)
            y = (x[:, 0] * x[:, 1] > 0).long()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            step += 1
            trace.write(json.dumps({"step": step, "lr": used[-1], "loss": loss.item()}) + "\\n")
            run.step(loss=loss)
    trace.write(json.dumps({"end": step}) + "\\n")
    dist.barrier()  # leave together: a rank that tears its group down while another still works can abort
    dist.destroy_process_group()
''')


def trace(folder: Path, rank: int) -> list[dict[str, Any]]:
    path = folder / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def last_step(folder: Path, rank: int) -> int:
    rows = [r for r in trace(folder, rank) if "step" in r]
    return rows[-1]["step"] if rows else 0


def test_two_ranks_apply_pause_lr_and_stop_at_the_same_step_and_a_long_pause_outlives_the_timeout(
        tmp_path: Path) -> None:
    R, traces = tmp_path / "R", tmp_path / "traces"
    traces.mkdir()
    (tmp_path / "train.py").write_text(SCRIPT)
    timeout = 2.0  # the process group's timeout: the pause below lasts longer
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), str(tmp_path / "train.py"), str(R), str(traces), str(timeout)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = connect(R)
        wait_until(lambda: last_step(traces, 1) >= 20, what="both ranks training", timeout=60)
        client.send(Pause())
        paused = wait_until(lambda: events(R, "paused"), what="paused")[0]
        wait_until(lambda: last_step(traces, 0) == last_step(traces, 1) == paused["step"],
                   what="both ranks held at the paused step")
        wait_until(lambda: time.time() > paused["t"] + timeout + 1.0, what="a pause longer than the timeout")
        client.send(SetLR(0.02))
        change = wait_until(lambda: events(R, "lr_changed"), what="lr_changed")[0]
        assert last_step(traces, 0) == last_step(traces, 1) == paused["step"], "a rank moved while paused"
        client.send(Resume())
        wait_until(lambda: min(last_step(traces, 0), last_step(traces, 1)) > paused["step"] + 40,
                   what="steps after resuming")
        client.send(Stop(reason="enough"))
        out, err = proc.communicate(timeout=60)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    ends = [next(r["end"] for r in trace(traces, rank) if "end" in r) for rank in (0, 1)]
    summary = json.loads((R / "summary.json").read_text())
    assert ends[0] == ends[1] == summary["steps"], "both ranks stopped at the same step"
    assert summary["status"] == "stopped"
    lrs = [[r["lr"] for r in trace(traces, rank) if "step" in r] for rank in (0, 1)]
    assert lrs[0] == lrs[1], "every step used the same LR on both ranks"
    first = change["step"]  # applied from the next optimizer step on, on both ranks
    assert lrs[0][first] == pytest.approx(0.02) and lrs[0][first - 1] != pytest.approx(0.02)
    # One coherent record: every step once, its loss the mean of the two ranks'.
    steps = [r for r in records(R) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    losses = [[r["loss"] for r in trace(traces, rank) if "step" in r] for rank in (0, 1)]
    for r in steps[:50]:
        assert r["loss"] == pytest.approx((losses[0][r["step"] - 1] + losses[1][r["step"] - 1]) / 2, rel=1e-5)
