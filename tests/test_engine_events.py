"""Events: the bounded buffer never blocks, and every event is one strict JSON line."""

from __future__ import annotations

import json
import math
import threading

from tuitrain.engine import events as ev


def stopped(i: int) -> ev.Stopped:
    return ev.Stopped(step=i, t=1.0, reason=f"r{i}")


def test_a_full_buffer_drops_the_oldest_and_counts_them():
    buf = ev.EventBuffer(maxlen=5)
    for i in range(12):
        buf.put(stopped(i))
    assert len(buf) == 5 and buf.dropped == 7
    assert [e.step for e in buf.drain()] == [7, 8, 9, 10, 11]
    assert buf.drain() == [] and len(buf) == 0
    buf.put(stopped(12))
    assert [e.step for e in buf.drain()] == [12] and buf.dropped == 7


def test_putting_never_blocks_without_a_reader():
    buf = ev.EventBuffer(maxlen=100)
    done = threading.Event()

    def producer():
        for i in range(50_000):
            buf.put(stopped(i))
        done.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    assert done.wait(timeout=30), "EventBuffer.put blocked"
    assert len(buf) == 100 and buf.dropped == 50_000 - 100
    assert buf.drain()[-1].step == 49_999


def test_drain_while_putting_loses_nothing_but_the_dropped():
    buf = ev.EventBuffer(maxlen=1_000_000)
    got = []
    finished = threading.Event()

    def producer():
        for i in range(20_000):
            buf.put(stopped(i))
        finished.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    while not finished.is_set() or len(buf):
        got.extend(e.step for e in buf.drain())
    thread.join()
    assert got == list(range(20_000)) and buf.dropped == 0


def test_events_are_strict_json_with_non_finite_numbers_as_null():
    stats = ev.StepStats(step=3, t=1.5, epoch=1, steps=[2, 3], loss=[0.5, math.nan], lr=[0.1, 0.1],
                         grad_norm=[1.0, math.inf], epoch_step=3, steps_per_epoch=8, steps_per_sec=10.0,
                         samples_per_sec=80.0)
    lines = stats.records()
    assert len(lines) == 2
    rows = [json.loads(x) for x in lines]
    assert rows[0] == {"kind": "step", "step": 2, "epoch": 1, "t": 1.5, "loss": 0.5, "lr": 0.1, "grad_norm": 1.0}
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None
    done = ev.EvalDone(step=8, t=2.0, epoch=1, train_loss=0.4, train_metric=0.9, val_loss=math.nan,
                       val_metric=0.5, metric="acc", lr=0.1, best_val_loss=None, best_epoch=None,
                       improved=False, patience_used=1, patience=3, epoch_end=True)
    row = json.loads(done.to_json())
    assert row["kind"] == "eval" and row["val_loss"] is None and row["val_acc"] == 0.5
    assert row["train_acc"] == 0.9
    nan = json.loads(ev.NonFinite(step=4, t=1.0, action="stop").to_json())
    assert nan == {"kind": "event", "event": "nan", "step": 4, "t": 1.0, "action": "stop", "count": 1,
                   "rolled_back_to": None}


def test_event_names_are_unique():
    # metrics.jsonl readers tell events apart by their "event" name alone.
    kinds = [c for c in vars(ev).values()
             if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event and c.record_kind == "event"]
    names = [c.name for c in kinds]
    assert len(kinds) == 20 and len(set(names)) == len(names)
    assert ev.LRChanged.name == "lr_changed" and ev.CheckpointSaved.name == "checkpoint"
