"""Hardening, round two: reading metrics.jsonl is linear and bounded, whatever the file holds.

A region without newlines (a file of NULs left by a crash, a garbled append) used to be read
by concatenating chunk after chunk: quadratic time, memory growing with the region, and a
`tuitrain watch` that could not quit. Sparse files make the big regions free to create.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from tuitrain.engine import replay
from tuitrain.engine.replay import LineReader, MetricsFollower, load_history
from tuitrain.tui.remote_run import RemoteRun

from conftest import wait_until

PAUSED = json.dumps({"kind": "event", "event": "paused", "step": 1, "t": 1.0, "reason": "user"}).encode() + b"\n"
RESUMED = json.dumps({"kind": "event", "event": "resumed", "step": 1, "t": 2.0,
                      "paused_seconds": 1.0}).encode() + b"\n"


def metrics_with_a_hole(run_dir: Path, hole: int, *, tail: bytes = b"\n" + RESUMED) -> Path:
    """metrics.jsonl: a record, `hole` NUL bytes (sparse: nothing written), then `tail`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.jsonl"
    with open(path, "wb") as f:
        f.write(PAUSED)
        f.truncate(len(PAUSED) + hole)
        f.seek(len(PAUSED) + hole)
        f.write(tail)
    return path


def names(events) -> list[str]:
    return [e.name for e in events]


@pytest.mark.parametrize("hole", [10, 3 << 20, 40 << 20])
def test_a_region_without_newlines_is_skipped_once_and_the_records_around_it_are_read(tmp_path: Path, hole):
    path = metrics_with_a_hole(tmp_path, hole)
    reader = LineReader(path, max_line=1 << 20)
    records = [r for _, block in reader.read(1 << 16) for r in replay.parse_lines(block)]
    assert [r["event"] for r in records] == ["paused", "resumed"]
    assert reader.skipped == (1 if hole > 1 << 20 else 0)
    assert reader.offset == path.stat().st_size
    assert not list(reader.read(1 << 16))  # nothing new


def test_an_over_long_line_still_being_written_is_skipped_as_it_grows(tmp_path: Path):
    path = metrics_with_a_hole(tmp_path, 5 << 20, tail=b"")  # no newline yet
    reader = LineReader(path, max_line=1 << 20)
    assert [b for _, b in reader.read(1 << 16)] == [PAUSED]
    assert reader.skipped == 1 and reader.skipped_at == len(PAUSED)
    with open(path, "ab") as f:
        f.write(b"\0" * 100 + b"\n" + RESUMED)
    assert [r["event"] for _, b in reader.read(1 << 16) for r in replay.parse_lines(b)] == ["resumed"]
    assert reader.skipped == 1


def test_a_line_longer_than_a_chunk_but_within_the_limit_is_read_whole(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    sample = {"kind": "event", "event": "sample", "step": 1, "t": 1.0, "epoch": 1, "text": "x" * 300_000}
    path.write_bytes(PAUSED + json.dumps(sample).encode() + b"\n" + RESUMED)
    follower = MetricsFollower(path, chunk=1 << 12)
    got = []
    while True:
        got += follower.read_events()
        if not follower.behind:
            break
    assert [e.name for e in got] == ["paused", "sample", "resumed"] and got[1].text == "x" * 300_000


def test_each_watcher_read_is_bounded_by_its_chunk(tmp_path: Path):
    path = metrics_with_a_hole(tmp_path, 64 << 20)
    follower = MetricsFollower(path, chunk=1 << 20)
    calls, got = 0, []
    while True:
        t0 = time.perf_counter()
        got += follower.read_events()
        calls += 1
        assert time.perf_counter() - t0 < 2.0
        if not follower.behind:
            break
    assert [e.name for e in got] == ["paused", "resumed"] and calls >= 50  # 64 MiB, a chunk a call (the first MAX_RECORD at once)


def test_load_history_holds_one_chunk_of_a_hole_not_the_hole(tmp_path: Path, monkeypatch):
    metrics_with_a_hole(tmp_path, 48 << 20)
    monkeypatch.setattr(replay, "CHUNK", 1 << 20)
    tracemalloc.start()
    try:
        events = load_history(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert names(events) == ["paused", "resumed"]
    assert peak < 12 << 20, f"peak {peak >> 20} MiB while reading past a 48 MiB hole"


def test_watch_on_a_huge_hole_shows_what_follows_warns_once_and_quits_at_once(tmp_path: Path):
    run_dir = tmp_path / "run"
    metrics_with_a_hole(run_dir, 256 << 20)
    remote = RemoteRun(run_dir)
    thread = threading.Thread(target=remote.run, daemon=True)
    thread.start()
    seen: list = []
    try:
        wait_until(lambda: (seen.extend(remote.events.drain()), "resumed" in names(seen))[1], 30,
                   "the record after the hole")
        warnings = [n for n in remote.notes if "skipping a line longer than" in n.text]
        assert len(warnings) == 1 and f"at byte {len(PAUSED):,}" in warnings[0].text
    finally:
        remote.close()
    thread.join(5)
    assert not thread.is_alive()


def test_quitting_a_watcher_in_the_middle_of_a_gigabyte_without_newlines_is_prompt(tmp_path: Path):
    run_dir = tmp_path / "run"
    metrics_with_a_hole(run_dir, 1 << 30, tail=b"")
    remote = RemoteRun(run_dir)
    thread = threading.Thread(target=remote.run, daemon=True)
    thread.start()
    seen: list = []
    wait_until(lambda: (seen.extend(remote.events.drain()), "paused" in names(seen))[1], 30, "the first record")
    t0 = time.monotonic()
    remote.close()  # what q does
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - t0 < 5
