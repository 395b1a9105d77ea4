"""The classic training experiments from the README, each run headless and checked.

Each test runs the README's command (with fewer epochs where the lesson shows
sooner) through the real command line in this process, then asserts what a
user would see: the numbers in metrics.jsonl, the hints, the checkpoints.
The commands here must appear word for word in the README's table.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import torch

from cli_helpers import REPO, in_process, load_ckpt, metrics, read_json
from tuitrain.engine.boundary import BoundaryProbe
from tuitrain.presets import load_preset

#: Experiment number -> the command as the README gives it.
COMMANDS = {
    1: "tuitrain --preset circles --optimizer adam --lr 0.01 --batch-size 16",
    2: "tuitrain --preset explode",
    3: "tuitrain --preset circles --lr 0.0001",
    4: ("tuitrain --preset circles --optimizer sgd --lr 0.1", "tuitrain --preset circles --optimizer adam --lr 0.1"),
    5: ("tuitrain --preset circles --batch-size 1", "tuitrain --preset circles --batch-size 128"),
    6: "tuitrain --preset overfit",
}


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## Classic experiments\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "the README has no '## Classic experiments' section"
    return match.group(1)


def test_every_experiment_command_is_in_the_readme() -> None:
    section = _readme_section()
    for number, commands in COMMANDS.items():
        for command in (commands if isinstance(commands, tuple) else (commands,)):
            assert f"`{command}`" in section, f"experiment {number}: {command!r} is not in the README"


class Outcome:
    """What one headless run left behind."""

    def __init__(self, rc: int, out: str, err: str, run_dir: Path) -> None:
        self.rc, self.out, self.err, self.dir = rc, out, err, run_dir
        self.records = metrics(run_dir)
        self.summary = read_json(run_dir / "summary.json")

    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == "eval" and r.get("epoch_end")]

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records if r.get("kind") == "step" and r.get("loss") is not None]

    def hints(self) -> dict[str, dict[str, Any]]:
        return {r["rule"]: r for r in self.records if r.get("event") == "hint"}


def experiment(command: str, run_dir: Path, *extra: str) -> Outcome:
    argv = command.split()[1:] + ["--headless", "--run-dir", str(run_dir), *extra]
    rc, out, err = in_process(*argv)
    return Outcome(rc, out, err, run_dir)


def test_1_circles_adam_learns_and_the_boundary_wraps_the_inner_ring(tmp_path: Path) -> None:
    run = experiment(COMMANDS[1], tmp_path / "run", "--epochs", "30")
    assert run.rc == 0 and run.summary["status"] == "finished"
    accs = [r["val_acc"] for r in run.evals()]
    assert max(accs) >= 0.97, accs
    assert not {"lr_too_high", "lr_too_low", "underfitting"} & run.hints().keys()
    # Draw the boundary of the best model: the inner ring's class (1) is an
    # island in the middle, the outer class (0) surrounds it.
    preset = load_preset("circles")
    model = preset.make_model()
    model.load_state_dict(load_ckpt(run.dir / "checkpoints" / "best.pt")["model_state_dict"])
    x, y = preset.make_data(0).val
    probe = BoundaryProbe(x, y, torch.device("cpu"))
    cells = probe.predict(model, torch.autocast("cpu", enabled=False))
    rows = [cells[i * probe.cols:(i + 1) * probe.cols] for i in range(probe.rows)]
    border = rows[0] + rows[-1] + "".join(r[0] + r[-1] for r in rows)
    assert set(border) == {"0"}, "the inner class reaches the edge of the picture"
    assert rows[probe.rows // 2][probe.cols // 2] == "1", "the centre is not the inner class"


def test_2_a_huge_lr_explodes_the_nan_guard_stops_and_the_hint_says_lr_too_high(tmp_path: Path) -> None:
    run = experiment(COMMANDS[2], tmp_path / "run", "--epochs", "5")
    assert run.rc == 1 and run.summary["status"] == "failed"
    nan = [r for r in run.records if r.get("event") == "nan"]
    assert nan and nan[0]["action"] == "stop"
    hints = run.hints()
    assert "lr_too_high" in hints, hints
    assert "nan" in hints and f"step {nan[0]['step']}" in hints["nan"]["message"]
    assert "LR too high" in run.err or "LR too high" in run.out


def test_3_a_tiny_lr_is_painfully_slow_and_the_hint_says_lr_too_low(tmp_path: Path) -> None:
    run = experiment(COMMANDS[3], tmp_path / "run", "--epochs", "5")
    assert run.rc == 0
    assert "lr_too_low" in run.hints()
    assert "lr_too_high" not in run.hints()
    evals = run.evals()
    assert evals[-1]["val_acc"] < 0.9  # still far from the 0.97+ of experiment 1


def _steps_noise(losses: list[float]) -> float:
    """Standard deviation of the step-to-step change of the loss."""
    return statistics.pstdev([b - a for a, b in zip(losses, losses[1:])])


def test_4_sgd_and_adam_at_lr_0_1(tmp_path: Path) -> None:
    sgd = experiment(COMMANDS[4][0], tmp_path / "sgd", "--epochs", "10")
    adam = experiment(COMMANDS[4][1], tmp_path / "adam", "--epochs", "10")
    assert sgd.rc == adam.rc == 0
    # Adam's first epoch is faster: it scales each step per parameter.
    assert adam.evals()[0]["train_loss"] < sgd.evals()[0]["train_loss"]
    # But lr 0.1 is large for Adam (each step moves every weight ~0.1): by the
    # second half it is noisier and higher than SGD with the same number.
    half = len(sgd.losses()) // 2
    assert _steps_noise(adam.losses()[half:]) > _steps_noise(sgd.losses()[half:])
    assert statistics.fmean(adam.losses()[half:]) > statistics.fmean(sgd.losses()[half:])
    assert min(r["val_acc"] for r in sgd.evals()[-3:]) >= 0.95


def test_5_batch_size_1_is_much_noisier_than_128(tmp_path: Path) -> None:
    one = experiment(COMMANDS[5][0], tmp_path / "b1", "--epochs", "2")
    big = experiment(COMMANDS[5][1], tmp_path / "b128", "--epochs", "15")
    assert one.rc == big.rc == 0
    steps_one = [r for r in one.records if r.get("kind") == "step"]
    assert len(steps_one) == 2 * 2000  # one optimizer step per sample
    late_one = one.losses()[len(one.losses()) // 2:]
    late_big = big.losses()[len(big.losses()) // 2:]
    assert _steps_noise(late_one) > 5 * _steps_noise(late_big)


def test_6_overfitting_shows_val_loss_turning_up_the_hint_and_early_stopping(tmp_path: Path) -> None:
    run = experiment(COMMANDS[6], tmp_path / "run")
    assert run.rc == 0 and run.summary["status"] == "early_stopped"
    evals = run.evals()
    val = [r["val_loss"] for r in evals]
    best = min(range(len(val)), key=val.__getitem__)
    assert best < len(val) - 1 and val[-1] > val[best]
    assert evals[-1]["train_loss"] < evals[best]["train_loss"]  # training kept improving
    assert "overfitting" in run.hints()
    saved = load_ckpt(run.dir / "checkpoints" / "best.pt")
    assert saved["epoch"] == best + 1 == run.summary["best_epoch"]
