"""Shared by the tests of tuitrain's own trainer under torchrun: a preset whose every rank writes a trace
(the LR of each optimizer step it takes, and its pid), and how to start and read a group."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tuitrain.tui.group_launch import free_port

#: Rings, a small MLP; a global optimizer pre-hook writes one line per optimizer step on every rank.
#: NAN_AT=(rank, n): that rank's model returns NaN at its n-th training forward (the NaN guard's test).
TRACE_PRESET = textwrap.dedent('''
    import json, os
    import torch
    from torch import nn
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    from tuitrain.presets import Data

    DESCRIPTION = "rings; each rank writes the LR of every optimizer step it takes"
    DEFAULTS = {"batch_size": 8, "epochs": 4, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                "scheduler": "onecycle"}
    RANK = int(os.environ.get("RANK", "0"))
    _trace = open(os.path.join(os.environ["TRACE_DIR"], f"rank{RANK}.jsonl"), "a", buffering=1)
    _trace.write(json.dumps({"pid": os.getpid()}) + "\\n")
    _n = [0]
    NAN_AT = tuple(int(v) for v in os.environ["NAN_AT"].split(",")) if os.environ.get("NAN_AT") else None


    def _hook(opt, args, kwargs):
        _n[0] += 1
        _trace.write(json.dumps({"n": _n[0], "lr": opt.param_groups[0]["lr"]}) + "\\n")


    register_optimizer_step_pre_hook(_hook)


    def make_data(seed):
        g = torch.Generator().manual_seed(seed)

        def split(n):
            r = torch.where(torch.rand(n, generator=g) < 0.5, 0.5, 1.0)
            a = torch.rand(n, generator=g) * 6.2832
            x = torch.stack([r * a.cos(), r * a.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g)
            return x, (r > 0.75).long()

        return Data(train=split(1003), val=split(301))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
            self.calls = 0

        def forward(self, x):
            out = self.body(x)
            if self.training:
                self.calls += 1
                if NAN_AT is not None and NAN_AT == (RANK, self.calls):
                    out = out * float("nan")
            return out


    def make_model():
        return Net()
''')

TRAIN_SIZE, BATCH = 1003, 8
STEPS_PER_EPOCH_2 = math.ceil(math.ceil(TRAIN_SIZE / 2) / BATCH)
"""Steps per epoch with two ranks: each takes ceil(1003 / 2) = 502 samples, in batches of 8."""


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    """The group's output once it ended; killed on the way out if it outlives `timeout`."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def live_events(client: Any, name: str, seen: list[dict[str, Any]], keep: Any) -> list[dict[str, Any]]:
    """The live events called `name` that arrived on the control socket so far (added to `seen`) for
    which keep(event) holds: a wait_until predicate."""
    seen.extend(m["event"] for m in client.poll() if m.get("kind") == "live" and m["event"].get("event") == name)
    return [e for e in seen if keep(e)]


def write_preset(folder: Path) -> Path:
    path = folder / "trace_preset.py"
    path.write_text(TRACE_PRESET)
    (folder / "traces").mkdir(exist_ok=True)
    return path


def torchrun(folder: Path, *args: str, nproc: int = 2, extra_env: dict[str, str] | None = None,
             launcher: tuple[str, ...] | None = None, script: str | None = None) -> subprocess.Popen[str]:
    """`torchrun --nproc-per-node N -m tuitrain ARGS` (or `SCRIPT ARGS`) on 127.0.0.1, its output captured."""
    env = {**os.environ, "TRACE_DIR": str(folder / "traces"), **(extra_env or {})}
    cmd = list(launcher) if launcher is not None else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    target = [script] if script is not None else ["-m", "tuitrain"]
    return subprocess.Popen([*cmd, *target, *args], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def trace(folder: Path, rank: int) -> list[dict[str, Any]]:
    path = folder / "traces" / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def steps_taken(folder: Path, rank: int) -> int:
    rows = [r for r in trace(folder, rank) if "n" in r]
    return rows[-1]["n"] if rows else 0


def lrs(folder: Path, rank: int) -> list[float]:
    return [r["lr"] for r in trace(folder, rank) if "n" in r]


def pid(folder: Path, rank: int) -> int:
    return next(r["pid"] for r in trace(folder, rank) if "pid" in r)
