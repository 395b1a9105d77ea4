"""A run's record as CSV: one row per step record, or one per evaluation (`tuitrain export --csv`).

Columns (README, "TensorBoard and CSV"): steps give `step, epoch, t, loss, lr,
grad_norm, steps_per_sec`, then the evaluation columns, filled on the row of
the step each evaluation was made at: `val_loss, val_<metric>...,
epoch_train_loss, epoch_train_<metric>...` and the preset's extras (`val_ppl`,
`epoch_train_ppl`). With `evals=True`: `step, epoch, t, epoch_end`, the same
evaluation columns, then `lr, best_val_loss, improved`. A number that is not
finite (or not there) is an empty cell; numbers are written exactly (repr).

Streamed: rows are written as the events come, one flush at a time; only the
last step row waits, for an evaluation made at its step.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

from tuitrain.engine import events as ev

STEP_COLUMNS = ("step", "epoch", "t", "loss", "lr", "grad_norm", "steps_per_sec")
EVAL_HEAD = ("step", "epoch", "t", "epoch_end")
EVAL_TAIL = ("lr", "best_val_loss", "improved")
#: The metric name a user's loop records when it gave none (engine/attach.py): no column of its own.
NO_METRIC = "metric"


@dataclass
class EvalColumns:
    """The evaluation columns of a run, known before the first row (from a first pass over its evaluations)."""

    metrics: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)

    def see(self, e: ev.EvalDone) -> None:
        if e.metric != NO_METRIC and e.metric not in self.metrics:
            self.metrics.append(e.metric)
        for key in e.extras:
            name = extra_column(key)
            if name not in self.extras:
                self.extras.append(name)

    def names(self) -> list[str]:
        out = ["val_loss", *(f"val_{m}" for m in self.metrics), "epoch_train_loss",
               *(f"epoch_train_{m}" for m in self.metrics), *self.extras]
        return list(dict.fromkeys(out))  # an extra named like a metric column is one column


def extra_column(key: str) -> str:
    """A preset's extra as a column: `train_ppl` is the epoch's, like epoch_train_loss."""
    return "epoch_" + key if key.startswith("train_") else key


def eval_values(e: ev.EvalDone) -> dict[str, Any]:
    values: dict[str, Any] = {"val_loss": e.val_loss, "epoch_train_loss": e.train_loss}
    if e.metric != NO_METRIC:
        values[f"val_{e.metric}"] = e.val_metric
        values[f"epoch_train_{e.metric}"] = e.train_metric
    for key, value in e.extras.items():
        values[extra_column(key)] = value
    return values


def cell(value: Any) -> str:
    """A value as a CSV cell: a float exactly (repr), a non-finite one or None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, int):
        return str(value)
    return ""  # not a number tuitrain records: nothing to put there


def write_steps(events: Iterable[list[ev.Event]], columns: EvalColumns, out: TextIO) -> int:
    """One row per step record, the evaluations on their steps' rows; returns the rows written."""
    evals = columns.names()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*STEP_COLUMNS, *evals])
    blank = [""] * len(evals)
    where = {name: len(STEP_COLUMNS) + i for i, name in enumerate(evals)}
    held: list[str] | None = None  # the last step row: an evaluation at its step fills it
    held_step = -1
    rows = 0
    for piece in events:
        for e in piece:
            if isinstance(e, ev.StepStats):
                if held is not None:
                    writer.writerow(held)
                    rows += 1
                held, held_step, n = _step_rows(writer, e, blank)
                rows += n
            elif isinstance(e, ev.EvalDone):
                if held is None or held_step != e.step:
                    if held is not None:
                        writer.writerow(held)
                        rows += 1
                    # An evaluation at a step with no step record (before the first step): a row of its own.
                    held = [cell(e.step), cell(e.epoch), cell(e.t), *[""] * (len(STEP_COLUMNS) - 3), *blank]
                    held_step = e.step
                for name, value in eval_values(e).items():
                    if name in where:  # a live run's evaluation newer than the first pass has no column
                        held[where[name]] = cell(value)
    if held is not None:
        writer.writerow(held)
        rows += 1
    return rows


def _step_rows(writer: Any, e: ev.StepStats, blank: list[str]) -> tuple[list[str], int, int]:
    """Write the flush's rows but its last, which is returned (held for an evaluation at its step)."""
    epoch, t, rate = cell(e.epoch), cell(e.t), cell(e.steps_per_sec) if e.steps_per_sec > 0 else ""
    norms = e.grad_norm if e.grad_norm is not None else [None] * len(e.steps)
    rows = [[str(s), epoch, t, cell(loss), cell(lr), cell(g), rate, *blank]
            for s, loss, lr, g in zip(e.steps, e.loss, e.lr, norms)]
    writer.writerows(rows[:-1])
    return rows[-1], e.steps[-1], len(rows) - 1


def write_evals(events: Iterable[list[ev.Event]], columns: EvalColumns, out: TextIO) -> int:
    """One row per evaluation; returns the rows written."""
    evals = columns.names()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*EVAL_HEAD, *evals, *EVAL_TAIL])
    rows = 0
    for piece in events:
        for e in piece:
            if isinstance(e, ev.EvalDone):
                values = eval_values(e)
                writer.writerow([cell(e.step), cell(e.epoch), cell(e.t), cell(e.epoch_end),
                                 *(cell(values.get(name)) for name in evals),
                                 cell(e.lr), cell(e.best_val_loss), cell(e.improved)])
                rows += 1
    return rows
