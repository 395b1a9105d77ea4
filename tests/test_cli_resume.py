"""--resume continues a run exactly: on the CPU, stopped + resumed == never stopped."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_helpers import load_ckpt, metrics, read_json, train_in_process, tuitrain
from conftest import assert_same_weights

from tuitrain.engine.rundir import step_losses

pytestmark = pytest.mark.slow


@dataclass
class Runs:
    stopped: Path      # --epochs 3 --max-steps 130, then --resume DIR to the end
    whole: Path        # --epochs 3 in one go
    snapshot: Path     # a copy of the stopped run's latest.pt at step 130 (mid epoch 2)
    first_out: str
    resume_out: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("resume")
    A, B = base / "A", base / "B"
    p = tuitrain("--preset", "circles", "--headless", "--epochs", "3", "--max-steps", "130", "--run-dir", A, cwd=base)
    assert p.returncode == 0, p.stderr
    summary = read_json(A / "summary.json")
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("finished", 130, 1)
    snapshot = base / "at130.pt"
    shutil.copy(A / "checkpoints" / "latest.pt", snapshot)

    r = tuitrain("--resume", A, "--max-steps", "100000", "--headless", cwd=base)
    assert r.returncode == 0, r.stderr
    # The reference, in this process: the resumed run (a new process) must match it exactly.
    train_in_process("--preset", "circles", "--headless", "--epochs", "3", "--run-dir", B, cwd=base)
    return Runs(A, B, snapshot, p.stdout, r.stdout)


def test_resumed_run_dir_matches_an_uninterrupted_run(runs: Runs) -> None:
    A, B = runs.stopped, runs.whole
    assert runs.resume_out.startswith("tuitrain: resuming at step 130 (epoch 2) circles on cpu")
    assert f"run dir: {A}" in runs.resume_out
    summary = read_json(A / "summary.json")
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("finished", 375, 3)
    assert read_json(A / "config.json")["max_steps"] == 100000

    losses_a, losses_b = step_losses(A / "metrics.jsonl"), step_losses(B / "metrics.jsonl")
    assert sorted(losses_b) == list(range(1, 376))
    assert all(v is not None and math.isfinite(v) for v in losses_b.values())
    assert losses_a == losses_b

    latest_a, latest_b = load_ckpt(A / "checkpoints" / "latest.pt"), load_ckpt(B / "checkpoints" / "latest.pt")
    assert (latest_a["step"], latest_a["epoch"]) == (375, 3)
    assert_same_weights(latest_a["model_state_dict"], latest_b["model_state_dict"])
    assert read_json(A / "history.json") == read_json(B / "history.json")

    # metrics.jsonl was appended to: both "started" records are there, the second one resumed at 130.
    started = [(r["step"], r["resumed"]) for r in metrics(A) if r.get("event") == "started"]
    assert started == [(0, False), (130, True)]


def test_resume_from_a_checkpoint_file_starts_a_new_run_dir(runs: Runs) -> None:
    N = runs.snapshot.parent / "N"
    before = (runs.stopped / "metrics.jsonl").read_bytes(), (runs.stopped / "summary.json").read_bytes()
    out, _ = train_in_process("--resume", runs.snapshot, "--max-steps", "100000", "--run-dir", N, "--headless",
                              cwd=runs.snapshot.parent)
    assert out.startswith("tuitrain: resuming at step 130 (epoch 2) circles")
    summary = read_json(N / "summary.json")
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("finished", 375, 3)
    latest = load_ckpt(N / "checkpoints" / "latest.pt")
    assert_same_weights(latest["model_state_dict"],
                        load_ckpt(runs.whole / "checkpoints" / "latest.pt")["model_state_dict"])
    whole = step_losses(runs.whole / "metrics.jsonl")
    assert step_losses(N / "metrics.jsonl") == {s: whole[s] for s in range(131, 376)}
    # The new run's history continues from the checkpoint: epochs 2 and 3 only.
    assert [row["epoch"] for row in read_json(N / "history.json")] == [2, 3]
    # The original run directory is not touched by a file resume.
    assert ((runs.stopped / "metrics.jsonl").read_bytes(), (runs.stopped / "summary.json").read_bytes()) == before
