"""SIGKILL at random moments, some in the middle of a checkpoint write, 8 times in a row (20 with TUITRAIN_SLOW=1).

Each kill ends a process, so the test needs a process per kill. Starting `tuitrain`
costs seconds (the torch import), so the processes are forked from a
"zygote": one interpreter that has imported torch and tuitrain once and forks
a child per run; the child calls tuitrain.tui.cli.main(argv), exactly what
the console script calls. The last step runs the installed `tuitrain` itself.

After every kill: checkpoints/latest.pt loads (weights_only=True, strict),
metrics.jsonl has at most one torn last line (which read_metrics skips), and
the next `--resume RUN_DIR` carries the step count on from the checkpoint.
At the end the run finishes (exit 0) with every step on record once, no temp
file left anywhere, and the same weights as a run that was never killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cli_helpers import cli_env, read_json, tuitrain
from conftest import SLOW, assert_same_weights, wait_until

from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine.rundir import read_metrics, step_losses

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="fork and SIGKILL")]

#: Every other kill lands inside a checkpoint write, every fifth plants a torn line: 8 covers both
#: (twice and once) in the default run; TUITRAIN_SLOW=1 kills 20 times.
KILLS = 20 if SLOW else 8

#: A small classifier with a 4 MB buffer: checkpoints take milliseconds to
#: write (so kills can land inside a write) while a training step stays cheap.
#: 256 samples at batch 16: 16 steps an epoch, a latest.pt every epoch.
PRESET = '''
import torch
from torch import nn
from tuitrain.presets import Data

DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "epochs": 100000, "scheduler": "none",
            "seed": 3, "device": "cpu"}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.register_buffer("ballast", torch.zeros(1 << 20))

    def forward(self, x):
        return self.body(x)


def make_data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(320, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return Data(train=(x[:256], y[:256]), val=(x[256:], y[256:]))


def make_model():
    return Net()
'''

#: Reads one JSON request a line: {"argv": [...], "cwd": ..., "out": ...}; forks a
#: child that runs main(argv) with stdout/stderr to `out`; prints {"pid": N}, then
#: {"status": <exit code or -signal>} when the child ends.
ZYGOTE = r'''
import json, os, sys
import torch  # the costly import, once
import tuitrain.tui.cli as cli
# What main() imports lazily, imported once here before the forks.
import tuitrain.engine.trainer, tuitrain.engine.rundir, tuitrain.presets, tuitrain.tui.headless  # noqa: E401,F401
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # its first use imports torch._dynamo (seconds)

for line in sys.stdin:
    req = json.loads(line)
    open(req["out"], "w").close()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(req["cwd"])
            fd = os.open(req["out"], os.O_WRONLY | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            code = cli.main(req["argv"])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 99
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
'''


class Zygote:
    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=folder, env=cli_env())
        self.child: int | None = None

    def start(self, argv: list[str], cwd: Path, out: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        self.child = json.loads(self.proc.stdout.readline())["pid"]
        return self.child

    def status(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        self.child = None
        return json.loads(line)["status"]

    def close(self) -> None:
        if self.child is not None:  # a test that failed mid-run: end the child it forked
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def temp_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp"))



def assert_metrics_at_most_one_torn_line(path: Path) -> bool:
    """Every line but the last parses; the last parses or is cut (no newline). True if torn."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for i, line in enumerate(complete):
        record = json.loads(line)  # raises on a garbled complete line
        assert isinstance(record, dict), (i, line[:80])
    if tail:
        read = list(read_metrics(path))
        assert len(read) == len(complete), "read_metrics did not skip the torn last line"
        return True
    return False


def test_sigkill_many_times_including_mid_checkpoint_then_resume_finishes(tmp_path: Path) -> None:
    rng = random.Random(20261121)
    preset = tmp_path / "ballast.py"
    preset.write_text(textwrap.dedent(PRESET))
    R = tmp_path / "R"
    ckdir = R / "checkpoints"
    zygote = Zygote(tmp_path)
    mid_write = torn = 0
    last_step = 0
    try:
        leftover: list[str] = []
        for i in range(KILLS):
            if i == 0:
                argv = ["--preset", str(preset), "--headless", "--run-dir", str(R)]
            else:
                argv = ["--resume", str(R), "--preset", str(preset), "--headless"]
            out = tmp_path / f"out{i}.txt"
            pid = zygote.start(argv, tmp_path, out)
            latest = ckdir / "latest.pt"
            if i == 0:  # the first kill waits for a checkpoint to exist, so there is always one to resume
                wait_until(latest.exists, 60, "the first latest.pt", poll=0.0005)
            else:  # this process's own first line: it has loaded the checkpoint and begun
                wait_until(lambda: "resuming at step" in out.read_text(), 60, f"run {i} to start", poll=0.0005)
                # The temp files the last kill left were cleared before this run wrote anything.
                assert not set(leftover) & set(temp_files(R)), leftover
            if i % 2:
                # Kill inside a checkpoint write: as soon as a temp file shows up next to latest.pt.
                wait_until(lambda: any(n.endswith(".tmp") for n in os.listdir(ckdir)), 30, "a checkpoint write",
                           poll=0.0005)
            else:
                time.sleep(rng.uniform(0.0, 0.4))  # wait-ok: the random moment of the kill is the point
            os.kill(pid, signal.SIGKILL)
            assert zygote.status() == -signal.SIGKILL, out.read_text()
            assert "Traceback" not in out.read_text()

            leftover = temp_files(R)
            mid_write += bool(leftover)
            # What a user is left with: a loadable latest.pt at or after the previous one ...
            state = ckpt.load(latest)
            assert state["step"] >= last_step
            assert state["step"] % 16 == 0 and state["epoch"] == state["step"] // 16
            if (ckdir / "best.pt").exists():
                ckpt.load(ckdir / "best.pt")
            # ... and a metrics file that the reader takes as it is.
            torn += assert_metrics_at_most_one_torn_line(R / "metrics.jsonl")
            if i % 5 == 4:  # and the kill that lands inside a line's write(): half a record at the end
                with open(R / "metrics.jsonl", "ab") as f:
                    f.write(b'{"kind": "step", "step": 99999, "lo')
                assert assert_metrics_at_most_one_torn_line(R / "metrics.jsonl")
            for name in ("config.json", "history.json"):
                if (R / name).exists():
                    json.loads((R / name).read_text())
            if i:  # the resumed process picked up where the checkpoint said
                assert f"resuming at step {last_step} " in out.read_text()
            last_step = state["step"]

        # The reference: the same run, never killed, to the same step.
        target = last_step + 40
        ref = tmp_path / "ref"
        pid = zygote.start(["--preset", str(preset), "--headless", "--run-dir", str(ref),
                            "--max-steps", str(target)], tmp_path, tmp_path / "ref.txt")
        assert zygote.status() == 0, (tmp_path / "ref.txt").read_text()
    finally:
        zygote.close()

    # The installed command resumes the run once more and finishes it.
    p = tuitrain("--resume", R, "--preset", preset, "--headless", "--max-steps", str(target), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"tuitrain: resuming at step {last_step} "), p.stdout
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["steps"]) == ("finished", target)
    assert sorted(step_losses(R / "metrics.jsonl")) == list(range(1, target + 1))
    assert step_losses(R / "metrics.jsonl") == step_losses(ref / "metrics.jsonl")
    final, reference = ckpt.load(R / "checkpoints" / "latest.pt"), ckpt.load(ref / "checkpoints" / "latest.pt")
    assert_same_weights(final["model_state_dict"], reference["model_state_dict"])
    assert not assert_metrics_at_most_one_torn_line(R / "metrics.jsonl")
    assert temp_files(R) == [], "temp files of killed writes were left behind"
    assert not list(R.glob(".write-test-*"))
    print(f"\n{KILLS} SIGKILLs, {mid_write} inside a checkpoint write (temp file left), {torn} torn metrics "
          f"lines from the kills (+{KILLS // 5} planted); resumed to step {target}")
    assert mid_write >= 1, "no kill landed inside a checkpoint write"


def test_resume_clears_only_the_temp_files_of_killed_writes(tmp_path: Path) -> None:
    from tuitrain.engine.rundir import RunDir

    R = tmp_path / "R"
    (R / "checkpoints").mkdir(parents=True)
    dead = [R / "checkpoints" / ".latest.pt.k3j9x_q2.tmp", R / "checkpoints" / ".best.pt.abcdefgh.tmp",
            R / ".history.json.12345678.tmp", R / ".write-test-4242"]
    kept = [R / "checkpoints" / "latest.pt", R / "checkpoints" / "step-8.pt", R / "metrics.jsonl",
            R / "notes.tmp", R / ".hidden", R / "checkpoints" / ".latest.pt.short.tmp"]
    for p in dead + kept:
        p.write_bytes(b"x")
    RunDir(R).create(resume=True)
    assert [p for p in dead if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
