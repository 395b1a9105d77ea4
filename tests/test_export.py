"""`tuitrain export RUN_DIR --csv OUT.csv [--evals]`: read back with the csv module and compared with
metrics.jsonl; bad input is one line and exit 2."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import tuitrain
from conftest import classifier_preset, make_cfg, run
from tuitrain.engine import events as ev
from tuitrain.engine.rundir import read_metrics
from tuitrain.tui import export


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def num(text: str) -> float | None:
    return None if text == "" else float(text)


def test_one_row_per_step_record_with_the_evaluations_on_their_steps(tmp_path: Path):
    r = run(make_cfg(epochs=3, grad_clip=1.0), classifier_preset(), tmp_path / "run")
    out = tmp_path / "out.csv"
    assert export.main([str(r.dir), "--csv", str(out)]) == 0
    rows = read_csv(out)
    records = list(read_metrics(r.dir / "metrics.jsonl"))
    steps = [x for x in records if x["kind"] == "step"]
    evals = {x["step"]: x for x in records if x["kind"] == "eval"}
    assert list(rows[0]) == ["step", "epoch", "t", "loss", "lr", "grad_norm", "steps_per_sec", "val_loss",
                             "val_acc", "epoch_train_loss", "epoch_train_acc"]
    assert len(rows) == len(steps) == r.result.summary["steps"]
    for row, rec in zip(rows, steps):
        assert int(row["step"]) == rec["step"] and int(row["epoch"]) == rec["epoch"]
        assert float(row["t"]) == rec["t"] and num(row["loss"]) == rec["loss"] and num(row["lr"]) == rec["lr"]
        assert num(row["grad_norm"]) == rec["grad_norm"]
        e = evals.get(rec["step"])
        if e is None:
            assert row["val_loss"] == row["val_acc"] == row["epoch_train_loss"] == ""
        else:
            assert num(row["val_loss"]) == e["val_loss"] and num(row["val_acc"]) == e["val_acc"]
            assert num(row["epoch_train_loss"]) == e["train_loss"] and num(row["epoch_train_acc"]) == e["train_acc"]
    assert sum(row["val_loss"] != "" for row in rows) == len(evals) == 3

    out_evals = tmp_path / "evals.csv"
    assert export.main([str(r.dir), "--csv", str(out_evals), "--evals"]) == 0
    rows = read_csv(out_evals)
    assert [int(row["step"]) for row in rows] == sorted(evals)
    assert list(rows[0])[:4] == ["step", "epoch", "t", "epoch_end"] and list(rows[0])[-3:] == [
        "lr", "best_val_loss", "improved"]
    for row in rows:
        e = evals[int(row["step"])]
        assert num(row["val_loss"]) == e["val_loss"] and num(row["best_val_loss"]) == e["best_val_loss"]
        assert row["epoch_end"] == "true" and row["improved"] == ("true" if e["improved"] else "false")


def write_run(R: Path, lines: list[str]) -> None:
    R.mkdir(parents=True, exist_ok=True)
    (R / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_non_finite_values_are_empty_cells_and_csv_can_go_to_stdout(tmp_path: Path, capsys):
    R = tmp_path / "R"
    stats = ev.StepStats(3, 10.0, epoch=1, steps=[1, 2, 3], loss=[0.5, math.nan, math.inf], lr=[0.1, 0.1, 0.1],
                         grad_norm=[1.0, math.inf, 2.0], epoch_step=3, steps_per_epoch=3, steps_per_sec=0.0,
                         samples_per_sec=0.0)
    evald = ev.EvalDone(3, 10.5, epoch=1, train_loss=None, train_metric=None, val_loss=math.nan, val_metric=0.5,
                        metric="mae", lr=0.1, best_val_loss=None, best_epoch=None, improved=False,
                        patience_used=1, patience=None, epoch_end=True)
    write_run(R, [*stats.records(), evald.to_json()])
    assert export.main([str(R), "--csv", "-"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["loss"] for row in rows] == ["0.5", "", ""]
    assert [row["grad_norm"] for row in rows] == ["1.0", "", "2.0"]
    assert rows[2]["val_loss"] == "" and rows[2]["val_mae"] == "0.5" and rows[2]["epoch_train_loss"] == ""


def test_a_users_own_loop_exports_with_its_own_metrics(tmp_path: Path):
    R = tmp_path / "R"
    with tuitrain.attach(run_dir=R) as loop:
        for loss in (1.0, 3.0):
            loop.step(loss=torch.tensor(loss))
        loop.evaluate(val_loss=torch.tensor(0.5), val_acc=0.75, val_f1=0.5)
        loop.step(loss=2.0)
        loop.evaluate(val_loss=0.25, val_acc=0.8)
    out = tmp_path / "own.csv"
    assert export.main([str(R), "--csv", str(out)]) == 0
    rows = read_csv(out)
    assert [row["step"] for row in rows] == ["1", "2", "3"]
    assert [row["loss"] for row in rows] == ["1.0", "3.0", "2.0"]
    assert rows[1]["val_acc"] == "0.75" and rows[1]["val_f1"] == "0.5" and rows[2]["val_acc"] == "0.8"
    assert rows[0]["val_loss"] == "" and rows[2]["val_f1"] == ""


def test_an_evaluation_written_with_spaces_still_lands_on_its_row(tmp_path: Path):
    """The first pass (evaluations only) once skipped such a line inside a run of step lines."""
    R = tmp_path / "R"
    stats = ev.StepStats(2, 10.0, epoch=1, steps=[1, 2], loss=[0.5, 0.4], lr=[0.1, 0.1], grad_norm=None,
                         epoch_step=2, steps_per_epoch=2, steps_per_sec=0.0, samples_per_sec=0.0)
    record = ev.EvalDone(2, 10.5, epoch=1, train_loss=0.45, train_metric=0.9, val_loss=0.3, val_metric=0.8,
                         metric="acc", lr=0.1, best_val_loss=0.3, best_epoch=1, improved=True, patience_used=0,
                         patience=None, epoch_end=True, extras={"val_ppl": 1.35}).to_dict()
    later = ev.StepStats(3, 11.0, epoch=2, steps=[3], loss=[0.3], lr=[0.1], grad_norm=None, epoch_step=1,
                         steps_per_epoch=2, steps_per_sec=0.0, samples_per_sec=0.0)
    write_run(R, [*stats.records(), json.dumps(record), *later.records()])
    assert export.main([str(R), "--csv", str(tmp_path / "o.csv")]) == 0
    rows = read_csv(tmp_path / "o.csv")
    assert rows[1]["val_loss"] == "0.3" and rows[1]["val_acc"] == "0.8" and rows[1]["val_ppl"] == "1.35"


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    R = tmp_path / "R"
    stats = ev.StepStats(2, 10.0, epoch=1, steps=[1, 2], loss=[0.5, 0.4], lr=[0.1, 0.1], grad_norm=None,
                         epoch_step=2, steps_per_epoch=2, steps_per_sec=0.0, samples_per_sec=0.0)
    write_run(R, stats.records())
    out = tmp_path / "o.csv"
    out.write_text("the previous export\n")

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tuitrain.tui.export.write_steps", broken)
    assert export.main([str(R), "--csv", str(out)]) == 2
    assert out.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def tuitrain_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuitrain.tui.cli", "export", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    R = tmp_path / "R"
    write_run(R, ev.StepStats(1, 1.0, epoch=1, steps=[1], loss=[0.5], lr=[0.1], grad_norm=None, epoch_step=1,
                              steps_per_epoch=1, steps_per_sec=0.0, samples_per_sec=0.0).records())
    (tmp_path / "file").write_text("x")
    cases = {
        "missing run dir": ([str(tmp_path / "nope"), "--csv", "o.csv"], "no such run directory"),
        "not a run dir": ([str(tmp_path), "--csv", "o.csv"], "not a run directory"),
        "neither": ([str(R)], "give one of --tensorboard OUT_DIR or --csv"),
        "both": ([str(R), "--csv", "o.csv", "--tensorboard", "tb"], "give one of"),
        "evals alone": ([str(R), "--tensorboard", "tb", "--evals"], "--evals goes with --csv"),
        "unwritable csv": ([str(R), "--csv", str(tmp_path / "file" / "o.csv")], "cannot write"),
        "csv is a folder": ([str(R), "--csv", str(tmp_path)], "is a folder"),
        "tensorboard into a file": ([str(R), "--tensorboard", str(tmp_path / "file")], "not a folder"),
        "unwritable tensorboard": ([str(R), "--tensorboard", str(tmp_path / "file" / "tb")], "cannot write"),
        "unknown option": ([str(R), "--csv", "o.csv", "--bogus"], "unrecognized arguments"),
    }
    for name, (argv, said) in cases.items():
        proc = tuitrain_cli(*argv, cwd=tmp_path)
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.startswith("tuitrain: error: ") and proc.stderr.count("\n") == 1, (name, proc.stderr)
        assert said in proc.stderr, (name, proc.stderr)
        assert proc.stdout == "", name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R", "file"]
