"""Rebuilding engine events from metrics.jsonl (engine/replay.py) and following the file as it grows."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tuitrain.engine import events as ev
from tuitrain.engine import replay
from tuitrain.engine.commands import Evaluate, Pause, Resume, SaveCheckpoint, SetLR
from tuitrain.engine.replay import EVENT_TYPES, MetricsFollower, events_from_records, load_history
from tuitrain.engine.rundir import read_metrics
from tuitrain.tui.state import DashboardState

from conftest import classifier_preset, make_cfg, run

T0 = 1_700_000_000.0


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (dataclasses, lists, dicts, floats)."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return type(a) is type(b) and same(dataclasses.asdict(a), dataclasses.asdict(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                            and not isinstance(a, bool) and a == b)


def lines_of(events: list[ev.Event]) -> list[str]:
    return [line for e in events for line in e.records()]


def records_of(events: list[ev.Event]) -> list[dict]:
    return [json.loads(line) for line in lines_of(events)]


def write(path: Path, lines: list[str], mode: str = "w") -> None:
    with open(path, mode) as f:
        f.write("".join(line + "\n" for line in lines))


def started(**overrides: Any) -> ev.RunStarted:
    fields: dict[str, Any] = dict(run_dir="r", preset="tiny", task="classification", metric="acc", device="cpu",
                                  device_name="CPU", config={"batch_size": 8, "accumulate": 2, "epochs": 3},
                                  epoch=0, steps_per_epoch=10, total_steps=30, train_size=160, val_size=32,
                                  parameters=42, amp="off")
    fields.update(overrides)
    return ev.RunStarted(0, T0, **fields)


def stats(first: int, n: int, t: float, epoch: int = 1, *, loss: list[float] | None = None,
          lr: list[float] | None = None, norms: bool = True) -> ev.StepStats:
    steps = list(range(first, first + n))
    return ev.StepStats(steps[-1], t, epoch=epoch, steps=steps, loss=loss or [1.0 / s for s in steps],
                        lr=lr or [1e-05 * s for s in steps], grad_norm=[0.5 + s for s in steps] if norms else None,
                        epoch_step=0, steps_per_epoch=10, steps_per_sec=0.0, samples_per_sec=0.0)


def eval_done(step: int, epoch: int, **overrides: Any) -> ev.EvalDone:
    fields: dict[str, Any] = dict(epoch=epoch, train_loss=0.4, train_metric=0.8, val_loss=0.5, val_metric=0.75,
                                  metric="acc", lr=0.01, best_val_loss=0.5, best_epoch=epoch, improved=True,
                                  patience_used=0, patience=None, epoch_end=True)
    fields.update(overrides)
    return ev.EvalDone(step, T0 + step, **fields)


def sample_events() -> list[ev.Event]:
    """One of every event that reaches metrics.jsonl, with awkward values."""
    t = T0 + 0.123
    return [
        started(resumed=True),
        ev.Paused(3, t, reason="nan"), ev.Resumed(3, t, paused_seconds=1.5),
        ev.LRChanged(3, t, old_lr=0.1, new_lr=0.01, multiplier=0.1),
        ev.CheckpointSaved(4, t, path="/x/step-4.pt", bytes=1234, reason="manual"),
        ev.CheckpointFailed(4, t, path="/x/latest.pt", error="disk full", reason="epoch"),
        ev.CommandRejected(4, t, command="set_lr", reason="bad"),
        ev.NonFinite(5, t, action="skip", count=3, rolled_back_to=2),
        ev.EarlyStop(6, t, epoch=2, patience=1, best_val_loss=0.25, best_epoch=1),
        ev.Stopped(7, t, reason="user"),
        ev.RunFailed(7, t, error="boom", traceback="Traceback\n  line"),
        ev.WriteFailed(7, t, path="/x/metrics.jsonl", error="ENOSPC"),
        ev.BoundaryPoints(0, t, x_range=[-1.0, 1.0], y_range=[-2.0, 2.0], cols=2, rows=2, classes=2,
                          points=[[0.1, 0.2, 1.0]]),
        ev.BoundaryGrid(8, t, x_range=[-1.0, 1.0], y_range=[-2.0, 2.0], cols=2, rows=2, cells="0110", epoch=1,
                        epoch_end=True),
        ev.LayerStats(8, t, names=["a.weight", "a.bias"], shapes=[[2, 2], [2]], weight_norm=[1.0, 0.5],
                      grad_norm=[0.1, None], update_ratio=[None, 0.001], total_grad_norm=None, flagged="a.bias",
                      growth=3.5),
        ev.Hint(8, t, rule="lr_too_high", message="m", evidence="e", remedy="r", severity="info"),
        ev.Sample(8, t, epoch=1, text="hello\nworld"),
        ev.RunEnded(9, t, status="stopped", summary={"status": "stopped", "steps": 9, "signal": None}),
    ]


# -- decoding ---------------------------------------------------------------------------------------

def test_every_event_round_trips_through_its_record():
    events = sample_events()
    live_only = {"schedule", "process"}  # never on disk; the control socket carries them
    assert set(EVENT_TYPES) == {e.name for e in events} | live_only, "a new event type needs a sample here"
    back = events_from_records(records_of(events))
    assert len(back) == len(events)
    for a, b in zip(events, back):
        assert same(a, b), (a, b)


@pytest.mark.parametrize("metric", ["acc", "mae"])
def test_eval_records_lose_their_duplicates_and_keep_extras(metric: str):
    e = eval_done(10, 1, metric=metric, extras={"val_ppl": 3.5, "train_ppl": None}, train_metric=None,
                  best_val_loss=None, best_epoch=None, patience=3, patience_used=1, epoch_end=False)
    record = records_of([e])[0]
    assert record[f"val_{metric}"] == 0.75 and record["val_ppl"] == 3.5
    [back] = events_from_records([record])
    assert back == e and back.extras == {"val_ppl": 3.5, "train_ppl": None}


def test_consecutive_step_records_of_one_flush_become_one_stepstats():
    events = [started(), stats(1, 4, T0 + 1.0), stats(5, 3, T0 + 1.5), ev.Paused(7, T0 + 1.6),
              ev.Resumed(7, T0 + 3.6, paused_seconds=2.0), stats(8, 3, T0 + 4.1, norms=True)]
    back = events_from_records(records_of(events))
    got = [e for e in back if isinstance(e, ev.StepStats)]
    assert [e.steps for e in got] == [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]]
    for live, rebuilt in zip([e for e in events if isinstance(e, ev.StepStats)], got):
        assert rebuilt.loss == live.loss and rebuilt.lr == live.lr and rebuilt.grad_norm == live.grad_norm
        assert rebuilt.step == live.step and rebuilt.t == live.t and rebuilt.epoch == 1
        assert rebuilt.steps_per_epoch == 10 and rebuilt.data_wait is None
    assert got[0].steps_per_sec == pytest.approx(4 / 1.0)  # since RunStarted
    assert got[1].steps_per_sec == pytest.approx(3 / 0.5)
    assert got[2].steps_per_sec == pytest.approx(3 / (2.6 - 2.0))  # paused time taken out
    assert got[1].samples_per_sec == pytest.approx(got[1].steps_per_sec * 8 * 2)  # batch_size * accumulate
    assert [e.epoch_step for e in got] == [4, 7, 10]
    assert [type(e).__name__ for e in back] == ["RunStarted", "StepStats", "StepStats", "Paused", "Resumed",
                                                "StepStats"]


def test_a_new_epoch_or_a_step_jump_starts_a_new_group_even_at_the_same_time():
    t = T0 + 1.0
    events = [started(), stats(9, 2, t, epoch=1), stats(11, 2, t, epoch=2), stats(5, 2, t, epoch=2)]
    got = [e for e in events_from_records(records_of(events)) if isinstance(e, ev.StepStats)]
    assert [(e.epoch, e.steps) for e in got] == [(1, [9, 10]), (2, [11, 12]), (2, [5, 6])]
    assert [e.epoch_step for e in got] == [10, 2, 0]


def test_nulls_come_back_as_nan_where_the_field_is_a_float():
    nan = float("nan")
    events = [started(), stats(1, 3, T0 + 1, loss=[0.5, nan, float("inf")], lr=[0.1, 0.1, nan]),
              eval_done(3, 1, val_loss=nan, val_metric=nan, train_loss=None, lr=float("-inf")),
              ev.LRChanged(3, T0, old_lr=nan, new_lr=0.5, multiplier=nan),
              ev.LayerStats(3, T0, names=["w"], shapes=[[1]], weight_norm=[nan], grad_norm=[nan],
                            update_ratio=[None], total_grad_norm=nan)]
    records = records_of(events)
    assert records[2]["loss"] is None and records[4]["val_loss"] is None  # strict JSON on disk
    _, steps, evald, lr, layers = events_from_records(records)
    assert steps.loss[0] == 0.5 and math.isnan(steps.loss[1]) and math.isnan(steps.loss[2])
    assert math.isnan(steps.lr[2]) and steps.grad_norm == [1.5, 2.5, 3.5]
    assert math.isnan(evald.val_loss) and math.isnan(evald.val_metric) and math.isnan(evald.lr)
    assert evald.train_loss is None  # Optional: stays None
    assert math.isnan(lr.old_lr) and math.isnan(lr.multiplier) and lr.new_lr == 0.5
    assert math.isnan(layers.weight_norm[0]) and layers.grad_norm == [None] and layers.total_grad_norm is None


def test_odd_records_are_skipped_or_tolerated_never_fatal():
    good = ev.Stopped(5, T0, reason="user")
    records: list[Any] = [
        "not a dict", 7, None, [1, 2],
        {"kind": "telemetry", "step": 1},                                   # a kind from the future
        {"kind": "event", "event": "teleported", "step": 1, "t": T0},        # an unknown event
        {"kind": "event", "event": "stopped", "t": T0},                     # a required field missing
        {"kind": "event", "event": "checkpoint", "step": 1, "t": T0, "path": 5},  # missing bytes/reason
        {"kind": "step", "step": "x", "t": T0},                              # a step without a step
        {"kind": "eval", "step": 1},                                         # an eval missing nearly all
        {**good.to_dict(), "new_field": [1, 2], "another": {"a": 1}},        # unknown keys: ignored
        {"kind": "event", "event": "paused", "step": 6, "t": T0},            # optional field missing
        {"kind": "event", "event": "lr_changed", "step": "seven", "t": T0, "old_lr": 1, "new_lr": 2,
         "multiplier": 2},                                                   # wrong types pass through
    ]
    back = events_from_records(records)
    assert back[0] == good and back[1] == ev.Paused(6, T0, reason="user")
    assert [type(e) for e in back] == [ev.Stopped, ev.Paused, ev.LRChanged]


def test_a_real_run_replayed_into_the_dashboard_matches_the_live_one(tmp_path: Path):
    cfg = make_cfg(epochs=4, log_interval=1e-6, grad_clip=1.0)  # a flush every step: many groups
    r = run(cfg, classifier_preset(), tmp_path / "run",
            at={3: [Pause(), SetLR(0.02), SaveCheckpoint(), Resume()], 12: [Evaluate()]})
    assert r.result.status == "finished"
    live_events = r.events
    rebuilt = load_history(r.dir)
    assert rebuilt == events_from_records(read_metrics(r.dir / "metrics.jsonl"))

    # Event for event: everything but the live-only ones and the step batches, compared apart.
    on_disk = [e for e in live_events if e.records()]
    others = [e for e in on_disk if not isinstance(e, ev.StepStats)]
    assert len(others) > 20 and same(others, [e for e in rebuilt if not isinstance(e, ev.StepStats)])
    # Flushes in the same millisecond (same "t" on disk) may come back as one StepStats.
    live_steps = [e for e in on_disk if isinstance(e, ev.StepStats)]
    steps = [e for e in rebuilt if isinstance(e, ev.StepStats)]
    assert len(live_steps) / 2 <= len(steps) <= len(live_steps)
    for field in ("steps", "loss", "lr", "grad_norm"):
        assert [x for e in steps for x in getattr(e, field)] == [x for e in live_steps for x in getattr(e, field)]
    for e in steps:
        live_match = next(x for x in live_steps if x.step == e.step)
        assert (e.epoch, e.t, e.epoch_step, e.steps_per_epoch) == \
               (live_match.epoch, round(live_match.t, 3), live_match.epoch_step, live_match.steps_per_epoch)

    live, replayed = DashboardState(), DashboardState()
    live.apply_all(live_events)
    replayed.apply_all(rebuilt)
    for name in ("loss", "lr_used", "grad_norm", "total_grad_norm"):
        a, b = getattr(live, name).thin(500), getattr(replayed, name).thin(500)
        assert len(getattr(live, name)) == len(getattr(replayed, name)) > 0, name
        assert (a.x, a.min, a.max, a.last) == (b.x, b.min, b.max, b.last), name
    for name in ("train_loss", "val_loss", "train_metric", "val_metric"):
        assert getattr(live, name).points() == getattr(replayed, name).points(), name
    assert len(live.val_loss) == 4
    for name in ("status", "end_status", "step", "epoch", "epoch_step", "steps_per_epoch", "total_steps",
                 "epochs", "lr", "best_val_loss", "best_epoch", "patience_used", "preset", "metric", "config",
                 "started_at", "ended_at", "paused_total", "extras"):
        assert getattr(live, name) == getattr(replayed, name), name
    assert live.status == "FINISHED"
    assert list(live.marks) == list(replayed.marks) and {m.kind for m in live.marks} >= {"pause", "lr",
                                                                                        "checkpoint"}
    assert [x.text for x in live.take_log()] == [x.text for x in replayed.take_log()]
    assert replayed.steps_per_sec > 0 and replayed.samples_per_sec == pytest.approx(replayed.steps_per_sec * 8, rel=1e-3)  # summary figures are rounded


# -- following the file --------------------------------------------------------------------------------

def test_follower_survives_a_missing_file_and_reads_only_complete_new_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert follower.read_events() == []
    paused = [ev.Paused(i, T0 + i) for i in range(3)]
    a, b, c = (e.to_json() for e in paused)
    path.write_text(a + "\n" + b[:10])  # a torn line at the end
    assert follower.read_events() == [paused[0]]
    assert follower.read_events() == []
    with open(path, "a") as f:
        f.write(b[10:])  # still no newline: still partial
    assert follower.read_events() == []
    with open(path, "a") as f:
        f.write("\n" + c + "\n")
    assert follower.read_events() == paused[1:]
    assert follower.offset == path.stat().st_size and not follower.behind and follower.skipped == 0


def test_follower_reads_only_new_bytes(tmp_path: Path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write(path, lines_of([started(), stats(1, 50, T0 + 1)]))
    follower = MetricsFollower(path)
    assert [type(e) for e in follower.read_events()] == [ev.RunStarted, ev.StepStats]
    sizes: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f): self.f = f  # noqa: E704
        def __enter__(self): return self  # noqa: E704
        def __exit__(self, *a): self.f.close()  # noqa: E704
        def fileno(self): return self.f.fileno()  # noqa: E704
        def seek(self, n): return self.f.seek(n)  # noqa: E704

        def read(self, n):
            data = self.f.read(n)
            sizes.append(len(data))
            return data

    monkeypatch.setattr(replay, "open", lambda p, m: Spy(real_open(p, m)), raising=False)
    write(path, lines_of([stats(51, 2, T0 + 2)]), mode="a")
    [more] = follower.read_events()
    assert more.steps == [51, 52]
    assert sum(sizes) == len("".join(x + "\n" for x in lines_of([stats(51, 2, T0 + 2)])))


def test_follower_starts_over_when_the_file_is_replaced(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write(path, [ev.Paused(1, T0).to_json(), ev.Paused(2, T0).to_json()])
    follower = MetricsFollower(path)
    assert len(follower.read_events()) == 2
    tmp = tmp_path / "new"
    write(tmp, [ev.Stopped(9, T0, reason="x").to_json()])
    os.replace(tmp, path)
    assert follower.read_events() == [ev.Stopped(9, T0, reason="x")]


def test_read_events_follows_a_growing_run_and_keeps_its_state(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert follower.read_events() == []
    write(path, lines_of([started(), stats(1, 5, T0 + 1.0)]))
    first = follower.read_events()
    assert [type(e) for e in first] == [ev.RunStarted, ev.StepStats]
    write(path, lines_of([stats(6, 5, T0 + 3.0)]), mode="a")
    [second] = follower.read_events()
    # The speed needs the previous flush's time, from the previous read; the batch size from RunStarted.
    assert second.steps == [6, 7, 8, 9, 10] and second.steps_per_sec == pytest.approx(2.5)
    assert second.samples_per_sec == pytest.approx(2.5 * 16)


def fast_and_slow(path: Path) -> tuple[list[ev.Event], list[ev.Event]]:
    fast = MetricsFollower(path).read_events()
    slow = events_from_records(read_metrics(path))
    return fast, slow


def test_fast_path_equals_the_json_path_on_awkward_files(tmp_path: Path):
    nan = float("nan")
    path = tmp_path / "metrics.jsonl"
    lines = lines_of([started(), stats(1, 3, T0 + 1, loss=[nan, 1e-300, -2.5e+20], lr=[1e-05, 1e-05, 3.0]),
                      stats(4, 3, T0 + 2, norms=False), eval_done(6, 1),
                      stats(7, 2, T0 + 3), stats(9, 2, T0 + 3, epoch=2), stats(3, 2, T0 + 4, epoch=2)])
    lines.insert(9, '{"kind":"step","epoch":1,"step":99,"t":1700000003.000,"loss":0.5,"lr":0.1}')  # reordered
    lines.insert(5, '{"kind":"step","step":5,"epoch":1,"t":1700000002.000,"loss":0.5')  # garbled
    lines.insert(3, '{"kind":"mystery","step":3}')  # an unknown kind among step lines
    write(path, lines)
    fast, slow = fast_and_slow(path)
    assert same(fast, slow)
    steps = [s for e in fast if isinstance(e, ev.StepStats) for s in e.steps]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 99, 8, 9, 10, 3, 4]  # the garbled line skipped


def test_reading_in_small_chunks_gives_the_same_events(tmp_path: Path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write(path, lines_of([started(), *[stats(1 + 20 * i, 20, T0 + i) for i in range(10)], eval_done(200, 1)]))
    whole = MetricsFollower(path).read_events()
    monkeypatch.setattr(replay, "CHUNK", 97)
    pieces = MetricsFollower(path).read_events()
    assert same(whole, pieces) and len(pieces) == 12


def test_a_follower_with_a_chunk_reads_a_bounded_piece_a_call_and_keeps_the_speed(tmp_path: Path):
    """What the watcher sees: the history a piece at a time, each flush with its steps/s and the
    batch size from RunStarted, though no single read holds the flush before it."""
    path = tmp_path / "metrics.jsonl"
    flush = len(lines_of([stats(1, 20, T0 + 1)])[0]) * 20  # bytes of one flush (20 lines)
    write(path, lines_of([started(), *[stats(1 + 20 * i, 20, T0 + 1 + 0.5 * i) for i in range(10)]]))
    whole = MetricsFollower(path).read_events()
    follower = MetricsFollower(path, chunk=flush // 2)
    pieces, calls = [], 0
    while True:
        before = follower.offset
        pieces += follower.read_events()
        calls += 1
        assert follower.offset - before <= flush  # bounded: about a chunk (plus the line it ends in)
        if not follower.behind:
            break
    assert calls >= 15
    steps = [e for e in pieces if isinstance(e, ev.StepStats)]
    assert [s for e in steps for s in e.steps] == list(range(1, 201))
    assert all(e.steps_per_sec > 0 for e in steps)  # never 0 steps/s for a flush read on its own
    assert [e.steps_per_sec for e in steps if e.step % 20 == 0][1:] == pytest.approx([40.0] * 9)  # 20 / 0.5 s
    assert all(e.samples_per_sec == pytest.approx(e.steps_per_sec * 16) for e in steps)
    assert [e.step for e in whole if isinstance(e, ev.StepStats)] == list(range(20, 201, 20))


def test_load_history_can_keep_only_the_last_steps(tmp_path: Path):
    events = [started(), *[stats(1 + 10 * i, 10, T0 + i) for i in range(20)], eval_done(200, 20),
              ev.Paused(200, T0 + 30)]
    events.insert(5, ev.LRChanged(40, T0 + 4, old_lr=0.1, new_lr=0.2, multiplier=2.0))
    write(tmp_path / "metrics.jsonl", lines_of(events))
    full = load_history(tmp_path)
    tail = load_history(tmp_path, max_step_records=25)
    steps = [s for e in tail if isinstance(e, ev.StepStats) for s in e.steps]
    assert steps == list(range(176, 201))
    assert [e for e in tail if not isinstance(e, ev.StepStats)] == [e for e in full if not isinstance(e, ev.StepStats)]
    assert load_history(tmp_path, max_step_records=10**6) == full
    assert load_history(tmp_path / "nothing") == []


# -- speed ------------------------------------------------------------------------------------------------

def synthetic_run(path: Path, n_steps: int, per_flush: int = 100, steps_per_epoch: int = 1000) -> None:
    """A metrics.jsonl as a long run writes it: step lines exactly as StepStats.records() formats them."""
    template = '{{"kind":"step","step":{},"epoch":{},"t":{},"loss":{!r},"lr":{!r},"grad_norm":{!r}}}\n'
    probe = stats(1, 2, T0 + 0.5)
    assert "".join(template.format(s, 1, f"{probe.t:.3f}", probe.loss[i], probe.lr[i], probe.grad_norm[i])
                   for i, s in enumerate(probe.steps)) == "".join(x + "\n" for x in probe.records())
    with open(path, "w") as f:
        f.write(started(steps_per_epoch=steps_per_epoch, total_steps=n_steps).to_json() + "\n")
        chunk: list[str] = []
        for first in range(1, n_steps + 1, per_flush):
            epoch = (first - 1) // steps_per_epoch + 1
            t = f"{T0 + first / 2000:.3f}"
            chunk.extend(template.format(s, epoch, t, 1.0 / s, 0.001 * (1 + (s % 7)), 0.5 + 1.0 / s)
                         for s in range(first, first + per_flush))
            if (first + per_flush - 1) % steps_per_epoch == 0:
                chunk.append(eval_done(first + per_flush - 1, epoch).to_json() + "\n")
            if len(chunk) > 100_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))


def test_decoding_a_million_step_run_is_fast(tmp_path: Path):
    n = 1_000_000
    synthetic_run(tmp_path / "metrics.jsonl", n)
    size = (tmp_path / "metrics.jsonl").stat().st_size
    began, cpu = time.perf_counter(), time.process_time()
    events = load_history(tmp_path)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    steps = [e for e in events if isinstance(e, ev.StepStats)]
    assert sum(len(e.steps) for e in steps) == n and len(steps) == n // 100
    assert steps[-1].loss[-1] == 1.0 / n and steps[-1].steps_per_sec == pytest.approx(2000, rel=0.05)
    print(f"load_history: {n:,} steps, {size / 1e6:.0f} MB in {wall:.2f} s ({cpu:.2f} s CPU)")
    assert cpu < 8.0, f"decoding {n:,} steps took {cpu:.2f} s of CPU"  # generous: shared, slow CI CPUs


def test_reading_without_steps_keeps_eval_and_event_lines_written_with_spaces(tmp_path: Path):
    """json.dumps' default separators (a script of the user's, an older writer) put spaces after ':' and ',':
    such a line inside a run of step lines was skipped along with the steps when steps were not wanted."""
    evald = eval_done(2, 1).to_dict()
    lines = [
        '{"kind":"step","step":1,"epoch":1,"t":5.0,"loss":0.5,"lr":0.01}',
        '{"kind":"step","step":2,"epoch":1,"t":5.0,"loss":0.4,"lr":0.01}',
        json.dumps(evald),  # {"kind": "eval", ...}
        json.dumps({"kind": "event", "event": "paused", "step": 2, "t": 5.5, "reason": "user"}),
        '{"kind":"step","step":3,"epoch":2,"t":6.0,"loss":0.3,"lr":0.01}',
    ]
    data = ("\n".join(lines) + "\n").encode()
    with_steps = replay.RecordDecoder().decode_bytes(data)
    assert [type(e).__name__ for e in with_steps] == ["StepStats", "EvalDone", "Paused", "StepStats"]
    without = replay.RecordDecoder().decode_bytes(data, steps=False)
    assert [type(e).__name__ for e in without] == ["EvalDone", "Paused"]
    assert without[0].val_loss == evald["val_loss"] and without[1].reason == "user"
    (tmp_path / "metrics.jsonl").write_bytes(data)
    assert [type(e).__name__ for e in MetricsFollower(tmp_path / "metrics.jsonl").read_events(
        steps_from=len(data))] == ["EvalDone", "Paused"]


def test_stream_events_reads_a_file_in_bounded_pieces_and_misses_nothing(tmp_path: Path):
    synthetic_run(tmp_path / "metrics.jsonl", 20_000)
    whole = load_history(tmp_path)
    pieces = list(replay.stream_events(tmp_path / "metrics.jsonl", chunk=64 << 10))
    assert len(pieces) > 10
    streamed = [e for piece in pieces for e in piece]
    assert same(streamed, whole)
    evals = [e for piece in replay.stream_events(tmp_path / "metrics.jsonl", steps=False) for e in piece]
    assert evals and not any(isinstance(e, ev.StepStats) for e in evals)
    assert same(evals, [e for e in whole if not isinstance(e, ev.StepStats)])
