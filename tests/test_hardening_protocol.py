"""Hardening, round two: no line on the control socket ends its server, and the command queue is bounded.

The fuzz tests send generated protocol lines (every JSON type at every field, integers past the
float range, NaN/Infinity, deep nesting, bad UTF-8, over-long lines) and check after EVERY one
that the server still greets a new watcher and takes a valid command from it.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuitrain.engine import events as ev
from tuitrain.engine.commands import (MAX_PENDING, MAX_PER_SOURCE, CommandQueue, Evaluate, Pause, SaveCheckpoint,
                                      SetLR, Stop, TogglePause)
from tuitrain.engine.control import MAX_LINE, MAX_REASON, SOCKET_NAME, ControlClient, ControlServer

from conftest import SLOW, classifier_preset, make_cfg, start, wait_until

HUGE = 10 ** 309  # past the float range: float(HUGE) raises OverflowError


class Raw:
    """A raw protocol connection: bytes out, decoded lines in."""

    def __init__(self, run_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(run_dir / SOCKET_NAME))
        self.f = self.sock.makefile("rb")
        hello = json.loads(self.f.readline())
        assert hello["kind"] == "hello"

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the server may hang up on an over-long line

    def replies_until(self, ident: str) -> list[dict] | None:
        """Every reply up to the error line answering id `ident`; None if the server hung up first."""
        out = []
        while True:
            line = self.f.readline()
            if not line:
                return None
            reply = json.loads(line)
            out.append(reply)
            if reply.get("id") == ident:
                return out

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def drain(commands: CommandQueue) -> list:
    out = []
    while (c := commands.get_nowait()) is not None:
        out.append(c)
    return out


def assert_still_serving(server: ControlServer, commands: CommandQueue, run_dir: Path, lr: float) -> None:
    """A new watcher gets a hello and its command reaches the queue; the I/O thread caught nothing."""
    with ControlClient.connect(run_dir, timeout=10) as client:
        client.send(SetLR(lr))
        seen: list = []
        wait_until(lambda: (seen.extend(drain(commands)), SetLR(lr) in seen)[1], 10, "the probe command")
    assert server.errors == 0 and server._thread is not None and server._thread.is_alive()


# -- the reported line, and its class -------------------------------------------------------------

def test_an_integer_lr_past_the_float_range_gets_an_error_and_the_server_keeps_serving(served):
    server, commands, run_dir = served
    old = Raw(run_dir)  # connected before the bad line
    bad = Raw(run_dir)
    bad.send(b'{"cmd":"set_lr","lr":1' + b"0" * 309 + b',"id":"huge"}\n{"cmd":"x","id":"end"}\n')
    replies = bad.replies_until("end")
    assert replies is not None and replies[0]["kind"] == "error" and replies[0]["id"] == "huge"
    assert "out of range" in replies[0]["error"]
    # The connection that sent it, an older one and a new one: all still served.
    bad.send(b'{"cmd":"pause"}\n')
    old.send(b'{"cmd":"save"}\n')
    got: list = []
    wait_until(lambda: (got.extend(drain(commands)), {Pause(), SaveCheckpoint()} <= set(got))[1], 10, "both commands")
    assert_still_serving(server, commands, run_dir, 0.5)
    assert not any(isinstance(c, SetLR) and c.lr != 0.5 for c in got)
    old.close()
    bad.close()


@pytest.mark.parametrize("value", [HUGE, -HUGE, 10 ** 4000, "1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_every_number_out_of_the_float_range_is_refused_at_the_socket(served, value):
    server, commands, run_dir = served
    text = str(value).encode() if isinstance(value, int) else value.encode()
    raw = Raw(run_dir)
    raw.send(b'{"cmd":"set_lr","id":1,"lr":' + text + b'}\n{"cmd":"x","id":"end"}\n')
    replies = raw.replies_until("end")
    assert replies is not None and len(replies) == 2 and replies[0]["kind"] == "error"
    assert replies[0]["id"] == 1 and len(replies[0]["error"]) < 400
    raw.close()
    assert drain(commands) == []  # never became a command
    assert_still_serving(server, commands, run_dir, 0.25)


def test_an_exception_inside_the_io_thread_is_reported_once_and_the_server_serves_on(served, capsys):
    server, commands, run_dir = served
    real_put = commands.put
    calls = []

    def broken_put(command, source=None):
        calls.append(command)
        if len(calls) <= 3:
            raise RuntimeError("queue broke")
        return real_put(command, source)

    commands.put = broken_put  # type: ignore[method-assign]
    for _ in range(3):
        raw = Raw(run_dir)
        raw.send(b'{"cmd":"pause"}\n')
        assert raw.f.readline() and raw.f.readline() == b""  # an error line, then this client is closed
        raw.close()
    assert server.errors == 3
    server.errors = 0
    assert_still_serving(server, commands, run_dir, 0.125)
    err = capsys.readouterr().err
    assert err.count("tuitrain: warning: the control socket caught RuntimeError: queue broke") == 1


# -- fuzz -------------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=HUGE, max_value=HUGE * 10)
           | st.integers(max_value=-HUGE, min_value=-HUGE * 10) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=40) | st.text(alphabet=st.characters(codec="utf-8"), min_size=300, max_size=2000))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
NAMES = st.sampled_from(["pause", "resume", "toggle_pause", "set_lr", "save", "evaluate", "stop"])
MESSAGES = st.fixed_dictionaries({}, optional={"cmd": NAMES | VALUES, "lr": VALUES, "reason": VALUES,
                                               "id": VALUES, "extra": VALUES}) | VALUES


def _deep(n: int, open_: bytes, close: bytes) -> bytes:
    return open_ * n + close * n


RAW_LINES = (st.binary(max_size=300)
             | st.integers(1, 30_000).map(lambda n: _deep(n, b"[", b"]"))
             | st.integers(1, 10_000).map(lambda n: b'{"cmd":"stop","id":' + _deep(n, b'{"a":', b"}")[:-1] + b"1}}")
             | st.integers(1, 5_000).map(lambda n: b'{"cmd":"set_lr","lr":' + b"9" * n + b"}")
             | st.sampled_from([b"\xff\xfe\xfd", b'{"cmd":"stop","reason":"\xc3\x28"}', b"\x00" * 100,
                                b'{"cmd":"pause"', b'{"cmd":"set_lr","lr":1e400}', b'"\\ud800"',
                                b'{"cmd":"stop","reason":"\\u001b[2J\\r\\nforged line"}'])
             | st.integers(MAX_LINE - 5, MAX_LINE + 5000).map(lambda n: b'{"cmd":"pause","p":"' + b"x" * n + b'"}'))


def _check_one(server: ControlServer, commands: CommandQueue, run_dir: Path, line: bytes, probe: float) -> None:
    raw = Raw(run_dir)
    raw.send(line.replace(b"\n", b" ") + b'\n{"cmd":"nope","id":"end"}\n')
    replies = raw.replies_until("end")
    raw.close()
    if replies is None:
        assert len(line) > MAX_LINE  # only an over-long line ends a connection
    else:
        for reply in replies:
            assert reply["kind"] == "error" and isinstance(reply["error"], str) and len(reply["error"]) <= 400
            assert reply["id"] is None or isinstance(reply["id"], (bool, int, float, str))
            assert not isinstance(reply["id"], str) or len(reply["id"]) <= 200
    for command in drain(commands):
        if isinstance(command, Stop):
            assert command.reason.isprintable() and len(command.reason) <= MAX_REASON
        if isinstance(command, SetLR):
            assert isinstance(command.lr, float) and command.lr == command.lr and abs(command.lr) != float("inf")
    assert_still_serving(server, commands, run_dir, probe)


def test_fuzzed_json_messages_never_end_the_server(served):
    server, commands, run_dir = served
    count = iter(range(1, 1_000_000))

    @settings(max_examples=400 if SLOW else 120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(MESSAGES)
    def check(message):
        line = json.dumps(message, allow_nan=True).encode()
        _check_one(server, commands, run_dir, line, 1.0 / next(count))

    check()


def test_fuzzed_raw_lines_never_end_the_server(served):
    server, commands, run_dir = served
    count = iter(range(1, 1_000_000))

    @settings(max_examples=200 if SLOW else 60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(RAW_LINES)
    def check(line):
        _check_one(server, commands, run_dir, line, 1.0 / next(count))

    check()


# -- the bounded command queue ------------------------------------------------------------------------

def test_the_queue_is_bounded_per_source_and_overall_and_counts_what_it_drops():
    q = CommandQueue()
    a, b = object(), object()
    assert sum(q.put(TogglePause(), source=a) for _ in range(100)) == MAX_PER_SOURCE
    assert sum(q.put(TogglePause(), source=b) for _ in range(100)) == MAX_PER_SOURCE
    assert sum(q.put(TogglePause()) for _ in range(1000)) == MAX_PENDING - 2 * MAX_PER_SOURCE
    assert len(q) == MAX_PENDING
    dropped = {(name, reason): n for name, reason, n in q.take_dropped()}
    assert dropped == {("toggle_pause", f"too many commands waiting from this watcher (at most {MAX_PER_SOURCE})"):
                       200 - 2 * MAX_PER_SOURCE,
                       ("toggle_pause", f"too many commands waiting (at most {MAX_PENDING})"):
                       1000 - (MAX_PENDING - 2 * MAX_PER_SOURCE)}
    assert q.take_dropped() == []
    assert q.put(Stop("enough")) and q.get_nowait() == Stop("enough")  # a stop is never refused, and comes first
    drained = []
    while (c := q.get_nowait()) is not None:
        drained.append(c)
    assert len(drained) == MAX_PENDING and not q.pending()
    assert sum(q.put(TogglePause(), source=a) for _ in range(100)) == MAX_PER_SOURCE  # a's share is free again


def test_save_evaluate_and_set_lr_coalesce_and_a_signal_stop_wins():
    q = CommandQueue()
    for i in range(1, 2001):
        q.put(SaveCheckpoint())
        q.put(Evaluate())
        q.put(SetLR(i / 1000))
    q.put(SetLR(-1))  # an invalid value is kept: the engine answers it with its own reason
    q.put(Stop("from a watcher"))
    q.put(Stop("SIGTERM", signal=15))
    q.put(Stop("another watcher"))
    assert len(q) == 5
    assert [q.get_nowait() for _ in range(5)] == [Stop("SIGTERM", signal=15), SaveCheckpoint(), Evaluate(),
                                                 SetLR(2.0), SetLR(-1)]
    dropped = {name: n for name, _reason, n in q.take_dropped()}
    assert dropped == {"save": 1999, "evaluate": 1999, "set_lr": 1999, "stop": 1}


PRESET = classifier_preset()


def test_a_flood_of_saves_and_evaluates_costs_the_run_one_of_each_and_is_answered(tmp_path: Path):
    def flood(n: int) -> None:
        if n == 3:
            for _ in range(5000):
                trainer.commands.put(SaveCheckpoint())
                trainer.commands.put(Evaluate())

    trainer, events = start(make_cfg(epochs=1), PRESET, tmp_path / "run")
    trainer.model.hook = flood
    result = trainer.run()
    assert result.status == "finished"
    manual = [e for e in events if isinstance(e, ev.CheckpointSaved) and e.reason == "manual"]
    assert [e.step for e in manual] == [3]
    assert [e.step for e in events if isinstance(e, ev.EvalDone) and not e.epoch_end] == [3]
    rejected = {e.command: e for e in events if isinstance(e, ev.CommandRejected)}
    assert set(rejected) == {"save", "evaluate"}
    assert all(e.step == 3 and "(4,999 times)" in e.reason for e in rejected.values())
    on_file = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "rejected" for r in on_file) == 2  # two lines on the record, not 9,998


def test_a_signal_jumps_a_full_queue(tmp_path: Path):
    def flood(n: int) -> None:
        if n == 3:
            for _ in range(MAX_PENDING * 10):
                trainer.commands.put(TogglePause())
            trainer.commands.put(Stop("SIGTERM", signal=15))

    trainer, events = start(make_cfg(epochs=2), PRESET, tmp_path / "run")
    trainer.model.hook = flood
    t0 = time.monotonic()
    result = trainer.run()
    assert result.status == "interrupted" and result.summary["steps"] == 3
    assert not any(isinstance(e, (ev.Paused, ev.Resumed)) for e in events)  # the stop came first
    assert time.monotonic() - t0 < 30


def test_one_watcher_cannot_fill_the_queue_for_the_others(served):
    server, commands, run_dir = served
    flood = Raw(run_dir)
    flood.send(b'{"cmd":"toggle_pause"}\n' * 500 + b'{"cmd":"nope","id":"end"}\n')
    assert flood.replies_until("end") is not None
    assert len(commands) == MAX_PER_SOURCE
    with ControlClient.connect(run_dir) as other:
        other.send(Pause())
        wait_until(lambda: len(commands) == MAX_PER_SOURCE + 1, what="the other watcher's command")
    flood.close()
    assert drain(commands)[-1] == Pause()
    assert {reason for _n, reason, _c in commands.take_dropped()} == {
        f"too many commands waiting from this watcher (at most {MAX_PER_SOURCE})"}
