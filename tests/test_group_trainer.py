"""tuitrain's own trainer under torchrun: two gloo ranks on this machine are one run.

Every rank of the trace preset (group_helpers.py) writes the LR of each optimizer step it takes, so
the tests can prove that both ranks took the same steps with the same LRs, and that every command
took effect on both at the same step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import wait_until
from dashboard_helpers import events_named, records
from group_helpers import (BATCH, STEPS_PER_EPOCH_2, TRAIN_SIZE, finish, free_port, live_events, lrs, pid,
                           steps_taken, torchrun, write_preset)
from integration_helpers import connect
from tuitrain.engine.batching import TensorBatches, shard_order
from tuitrain.engine.commands import Pause, Resume, SaveCheckpoint, SetLR, Stop
from tuitrain.engine.rundir import step_losses


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# -- the shards ------------------------------------------------------------------------------------

def test_each_rank_takes_its_own_shard_padded_to_the_same_length_in_training_only() -> None:
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    padded = [shard_order(order, (r, 3), pad=True) for r in range(3)]
    assert [len(p) for p in padded] == [4, 4, 4]
    assert set(torch.cat(padded).tolist()) == set(range(10))
    plain = [shard_order(order, (r, 3), pad=False) for r in range(3)]
    assert sorted(torch.cat(plain).tolist()) == list(range(10)), "evaluation counts every sample once"
    x, y = torch.arange(TRAIN_SIZE).float().unsqueeze(1), torch.zeros(TRAIN_SIZE, dtype=torch.long)
    ranks = [TensorBatches(x, y, BATCH, torch.device("cpu"), seed=0, shard=(r, 2)) for r in range(2)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == STEPS_PER_EPOCH_2
    seen = [torch.cat([b[0] for b in r.epoch(1)]).long().flatten().tolist() for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 502 and set(seen[0]) | set(seen[1]) == set(range(TRAIN_SIZE))
    assert len(set(seen[0]) & set(seen[1])) == 1, "one sample repeated to pad 1003 to 1004"
    again = [torch.cat([b[0] for b in r.epoch(1, start=10)]).long().flatten().tolist() for r in ranks]
    assert again[0] == seen[0][10 * BATCH:], "a resumed epoch starts at its batch, in the same order"


# -- one run ---------------------------------------------------------------------------------------

def test_two_ranks_train_one_run_with_one_record(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    out, err = finish(torchrun(tmp_path, "--preset", str(preset), "--epochs", "2", "--run-dir", "R"))
    R = tmp_path / "R"
    s = summary(R)
    assert s["status"] == "finished" and s["world_size"] == 2, err[-3000:]
    assert s["steps"] == 2 * STEPS_PER_EPOCH_2
    assert [r["step"] for r in records(R) if r["kind"] == "step"] == list(range(1, s["steps"] + 1))
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == s["steps"]
    assert lrs(tmp_path, 0) == lrs(tmp_path, 1), "the same LR on both ranks at every step"
    assert "group: 2 ranks (torchrun)" in out and "= 16 samples per step" in out
    assert out.count("tuitrain: training") == 1, "rank 0 alone prints"
    started = events_named(R, "started")[0]
    assert started["world_size"] == 2 and started["steps_per_epoch"] == STEPS_PER_EPOCH_2
    group = json.loads((R / "config.json").read_text())["group"]
    assert group == {"world_size": 2, "batch_size_per_rank": BATCH, "accumulate": 1, "samples_per_step": 2 * BATCH,
                     "steps_per_epoch": STEPS_PER_EPOCH_2}
    state = torch.load(R / "checkpoints" / "latest.pt", weights_only=True)
    assert state["group"]["world_size"] == 2 and len(state["group"]["ranks"]) == 2
    assert "module." not in next(iter(state["model_state_dict"])), "the model's own names, not DDP's"


def test_a_group_needs_no_numpy(tmp_path: Path) -> None:
    """Found in a fresh install: torch's object collectives turn tensors into bytes through numpy, which
    tuitrain does not depend on; every rank raised at its first broadcast."""
    preset = write_preset(tmp_path)
    blocked = tmp_path / "no_numpy" / "numpy"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError('numpy is not installed here')\n")
    path = os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])
    out, err = finish(torchrun(tmp_path, "--preset", str(preset), "--epochs", "1", "--run-dir", "R",
                               extra_env={"PYTHONPATH": path}))
    s = summary(tmp_path / "R")
    assert s["status"] == "finished" and s["world_size"] == 2, err[-3000:]


def test_steering_applies_on_both_ranks_at_the_same_step_and_a_pause_outlasts_the_group_timeout(
        tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    timeout = 3.0
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "3000", "--run-dir", "R",
                    extra_env={"TUITRAIN_GROUP_TIMEOUT": str(timeout)})
    R = tmp_path / "R"
    try:
        client = connect(R)
        wait_until(lambda: steps_taken(tmp_path, 1) >= 100, what="both ranks training", timeout=60)
        seen: list[dict] = []
        stats = wait_until(lambda: live_events(client, "process", seen, lambda e: len(e.get("ranks", [])) == 2),
                           what="every rank's numbers over the socket")[-1]
        assert [r["rank"] for r in stats["ranks"]] == [0, 1]
        assert stats["ranks"][1]["pid"] == pid(tmp_path, 1) and stats["ranks"][1]["steps_per_sec"] > 0
        assert stats["ranks"][1]["rss_bytes"] > 10 * 2**20 and stats["ranks"][1]["cuda_device"] is None
        client.send(Pause())
        paused = wait_until(lambda: events_named(R, "paused"), what="paused")[0]
        wait_until(lambda: steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == paused["step"],
                   what="both ranks held at the paused step")
        wait_until(lambda: time.time() > paused["t"] + timeout + 1.5, timeout=30,
                   what="a pause longer than the group's timeout")
        client.send(SetLR(0.01))
        change = wait_until(lambda: events_named(R, "lr_changed"), what="lr_changed")[0]
        client.send(SaveCheckpoint())
        saved = wait_until(lambda: [e for e in events_named(R, "checkpoint") if e["reason"] == "manual"],
                           what="the manual checkpoint")[0]
        assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == paused["step"], "a rank moved while paused"
        client.send(Resume())
        wait_until(lambda: min(steps_taken(tmp_path, 0), steps_taken(tmp_path, 1)) > paused["step"] + 50,
                   what="steps after resuming")
        client.send(Stop(reason="enough"))
        out, err = finish(proc)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    s = summary(R)
    assert s["status"] == "stopped" and steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == s["steps"]
    first = change["step"]  # the LR changes from the next optimizer step on, on both ranks
    used = [lrs(tmp_path, rank) for rank in (0, 1)]
    assert used[0] == used[1]
    assert used[0][first] == pytest.approx(0.01, rel=0.02) and used[0][first - 1] != pytest.approx(0.01, rel=0.02)
    state = torch.load(tmp_path / saved["path"], weights_only=True)
    assert state["step"] == paused["step"] and state["group"]["world_size"] == 2


def test_stop_and_resume_at_the_same_world_size_gives_the_losses_of_the_run_never_stopped(
        tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    epochs = "3"
    plan = ("--scheduler", "step")  # onecycle's plan would end at --max-steps
    whole = torchrun(tmp_path, "--preset", str(preset), "--epochs", epochs, *plan, "--run-dir", "A")
    _, err = finish(whole)
    assert whole.returncode == 0, err[-3000:]
    first = torchrun(tmp_path, "--preset", str(preset), "--epochs", epochs, *plan, "--run-dir", "B",
                     "--max-steps", "100")
    _, err = finish(first)
    assert first.returncode == 0 and summary(tmp_path / "B")["steps"] == 100, err[-3000:]
    second = torchrun(tmp_path, "--resume", "B", "--preset", str(preset), "--max-steps", "0")
    out, err = finish(second)
    assert second.returncode == 0, err[-3000:]
    assert "resuming at step 100" in out
    a, b = step_losses(tmp_path / "A" / "metrics.jsonl"), step_losses(tmp_path / "B" / "metrics.jsonl")
    assert len(a) == len(b) == 3 * STEPS_PER_EPOCH_2
    assert [b[k] for k in sorted(b)] == pytest.approx([a[k] for k in sorted(a)], rel=1e-6, abs=1e-9)


def test_a_group_checkpoint_resumes_in_one_process_with_a_warning(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    first = torchrun(tmp_path, "--preset", str(preset), "--epochs", "2", "--scheduler", "step", "--run-dir", "B",
                     "--max-steps", "70")
    _, err = finish(first)
    assert first.returncode == 0, err[-3000:]
    env = {**os.environ, "TRACE_DIR": str(tmp_path / "traces")}
    done = subprocess.run([sys.executable, "-m", "tuitrain", "--resume", "B", "--preset", str(preset),
                           "--max-steps", "0", "--headless"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved by 2 ranks, this run has 1" in done.stdout + done.stderr
    s = summary(tmp_path / "B")
    assert s["status"] == "finished" and s["world_size"] == 1


# -- failures --------------------------------------------------------------------------------------

def test_a_killed_rank_ends_the_run_failed_naming_the_rank_at_once(tmp_path: Path) -> None:
    """Three ranks, so the name comes from looking (rank 2's process is gone), not from the world size."""
    preset = write_preset(tmp_path)
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "3000", "--run-dir", "R", nproc=3)
    R = tmp_path / "R"
    try:
        wait_until(lambda: steps_taken(tmp_path, 2) >= 100 and any(r.get("kind") == "step" for r in records(R)),
                   what="every rank training, and a flush (the ranks' pids gathered)", timeout=90)
        os.kill(pid(tmp_path, 2), signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: (R / "summary.json").exists(), timeout=30, what="rank 0 ending the run")
        took = time.monotonic() - killed
        _, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    s = summary(R)
    assert s["status"] == "failed" and "another rank (rank 2) stopped answering" in s["reason"], s["reason"]
    assert took < 15, f"the run noticed the dead rank after {took:.1f} s"
    assert proc.returncode != 0


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "50", "--run-dir", "R",
                    extra_env={"NAN_AT": "1,80"})
    _, err = finish(proc)
    s = summary(tmp_path / "R")
    assert s["status"] == "failed" and "non-finite at step 80" in s["reason"], (s["reason"], err[-2000:])
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1), "both ranks stopped at the same step"
    assert proc.returncode == 1


def test_on_nan_pause_rolls_every_rank_back_to_the_same_checkpoint_and_holds_them(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "3000", "--run-dir", "R", "--on-nan", "pause",
                    extra_env={"NAN_AT": "1,100"})
    R = tmp_path / "R"
    try:
        client = connect(R)
        nan = wait_until(lambda: [e for e in events_named(R, "nan") if e.get("action") == "pause"], timeout=60,
                         what="the NaN guard pausing the group")[0]
        assert nan["rolled_back_to"] == STEPS_PER_EPOCH_2, "back to the end of epoch 1 (latest.pt)"
        wait_until(lambda: events_named(R, "paused"), what="paused")
        held = steps_taken(tmp_path, 0)
        assert steps_taken(tmp_path, 1) == held
        client.send(Resume())
        wait_until(lambda: min(steps_taken(tmp_path, 0), steps_taken(tmp_path, 1)) > held + 100,
                   what="training on from the checkpoint")
        client.send(Stop(reason="enough"))
        finish(proc)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    s = summary(R)
    assert s["status"] == "stopped" and steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1)
    losses = step_losses(R / "metrics.jsonl")
    assert sorted(losses) == list(range(1, s["steps"] + 1)) and all(v is not None for v in losses.values())


def test_on_nan_skip_skips_the_update_on_every_rank(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "2", "--run-dir", "R", "--on-nan", "skip",
                    extra_env={"NAN_AT": "1,40"})
    _, err = finish(proc)
    s = summary(tmp_path / "R")
    assert s["status"] == "finished", (s["reason"], err[-2000:])
    assert s["steps"] == 2 * STEPS_PER_EPOCH_2 - 1, "one update skipped (by both ranks)"
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == s["steps"]
    skipped = [e for e in events_named(tmp_path / "R", "nan") if e.get("action") == "skip"]
    assert skipped and skipped[0]["step"] == 40


# -- topologies ------------------------------------------------------------------------------------

def test_two_nodes_with_a_c10d_rendezvous_on_this_machine_are_one_run(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    port = free_port()
    agents = [torchrun(tmp_path, "--preset", str(preset), "--epochs", "2", "--run-dir", "R", launcher=(
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
        "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", "two-nodes")) for node in (0, 1)]
    outs = [finish(agent) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], [o[1][-2000:] for o in outs]
    s = summary(tmp_path / "R")
    assert s["status"] == "finished" and s["world_size"] == 2 and s["steps"] == 2 * STEPS_PER_EPOCH_2
    assert lrs(tmp_path, 0) == lrs(tmp_path, 1)
    # The launch's marker (for torchrun restarts) goes with a run that ended for good, not one per launch.
    assert not (tmp_path / "runs" / ".torchrun").exists()


def test_torchrun_restarts_a_group_that_lost_a_rank_and_it_resumes_from_latest(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    epochs = 40
    # The restarted group meets in the same torchrun store as the first (tui/group_member.py _join).
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", str(epochs), "--run-dir", "R", launcher=(
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"))
    R = tmp_path / "R"
    try:
        wait_until(lambda: len(events_named(R, "checkpoint")) >= 2, what="a few epochs saved", timeout=60)
        os.kill(pid(tmp_path, 1), signal.SIGKILL)
        out, err = finish(proc, timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    s = summary(R)
    assert s["status"] == "finished" and s["steps"] == epochs * STEPS_PER_EPOCH_2
    started = events_named(R, "started")
    assert len(started) == 2 and started[1]["resumed"] and started[1]["step"] > 0
    assert "torchrun restarted the group" in err
    losses = step_losses(R / "metrics.jsonl")
    assert sorted(losses) == list(range(1, s["steps"] + 1))


def test_a_hung_rank_ends_the_run_failed_after_the_group_timeout(tmp_path: Path) -> None:
    preset = write_preset(tmp_path)
    timeout = 3.0
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "3000", "--run-dir", "R",
                    extra_env={"TUITRAIN_GROUP_TIMEOUT": str(timeout)})
    R = tmp_path / "R"
    hung = None
    try:
        wait_until(lambda: steps_taken(tmp_path, 1) >= 100, what="both ranks training", timeout=60)
        hung = pid(tmp_path, 1)
        os.kill(hung, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: (R / "summary.json").exists(), timeout=60, what="rank 0 giving up on the hung rank")
        took = time.monotonic() - stopped
    finally:
        if hung is not None:
            os.kill(hung, signal.SIGCONT)
        finish(proc)
    s = summary(R)
    assert s["status"] == "failed" and "rank 1" in s["reason"] and "Timed out" in s["reason"], s["reason"]
    assert timeout - 0.5 < took < timeout + 10
