"""A run in another process, shaped like the Trainer the dashboard drives.

TuitrainApp needs three things from its trainer: `run()` (called in a thread
worker), `commands.put(cmd)` and `events.drain()`. RemoteRun gives it those
for a run directory:

- run() reads metrics.jsonl from the start (the history), a chunk at a
  time so the first frame comes quickly even for a million steps, then
  follows the file as the run writes it (the engine flushes ~4 times a
  second), until the RunEnded record, or until the watcher closes;
- commands go over the run's control socket (engine/control.py), and the
  engine answers them in metrics.jsonl exactly as for its own dashboard;
- the live-only events (LR schedule previews, boundary frames taken mid-epoch)
  come over the socket too.

The file, not the socket, carries the history: the run never waits for a
watcher, and any number of watchers see the same state. A run whose process
died without a summary, or a finished run, is shown from the file alone,
read-only.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tuitrain.engine import events as ev
from tuitrain.engine.commands import Command
from tuitrain.engine.events import END_STATUSES
from tuitrain.engine.rundir import read_json
from tuitrain.tui.state import LogLine

#: Seconds between looks at the file and the socket once the history is read (the UI drains at 4 Hz).
POLL_INTERVAL = 0.25
#: After a command was sent: how long, and how often, to look for the run's answer in the file.
HURRY_SECONDS, HURRY_POLL = 2.0, 0.01
#: Events waiting for the UI before the reader pauses (keeps memory bounded while a long history loads).
BACKLOG = 10_000
#: After the socket closed, how long the RunEnded record may take to reach the file before we
#: conclude the process died.
END_GRACE = 3.0
#: The longest the reader waits for the app to paint its first chunk of history.
FIRST_FRAME_WAIT = 2.0
#: How often a run we cannot reach by socket is checked for a dead process.
STATE_INTERVAL = 1.0


class _Inbox:
    """The events for the UI: unbounded (history must not be dropped), filled with backpressure."""

    def __init__(self) -> None:
        self._events: deque[ev.Event] = deque()

    def put_all(self, events: list[ev.Event]) -> None:
        self._events.extend(events)

    def drain(self) -> list[ev.Event]:
        out: list[ev.Event] = []
        pop = self._events.popleft
        try:
            while True:
                out.append(pop())
        except IndexError:
            return out

    def __len__(self) -> int:
        return len(self._events)


class _RemoteCommands:
    """commands.put() for the app: sends over the control socket, or says why it cannot."""

    def __init__(self, remote: "RemoteRun") -> None:
        self._remote = remote

    def put(self, command: Command) -> None:
        self._remote.send(command)


class RemoteRun:
    """Watch (and, when it is live and ours, steer) the run in `run_dir`."""

    def __init__(self, run_dir: str | os.PathLike[str], *, poll_interval: float = POLL_INTERVAL,
                 chunk_bytes: int = 1 << 20, announce: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.announce = announce
        """Say in the log which run is watched and what q means (not for the run a dashboard started)."""
        self.poll_interval = poll_interval
        self.chunk_bytes = chunk_bytes
        self.events = _Inbox()
        self.commands = _RemoteCommands(self)
        self.notes: deque[LogLine] = deque(maxlen=200)
        """Lines for the event log from the watcher itself (connected, read-only, died ...)."""
        self.client: Any = None
        self.state = "unknown"
        """run_state() when the watcher started: 'live', a summary status, 'died' or 'unknown'."""
        self.ended = False
        self.end_event: ev.RunEnded | None = None
        """The run's RunEnded, once read (its status decides an exit before the process is gone)."""
        self.last_step = 0
        self.history_loaded = threading.Event()
        """Set once the reader has caught up with the file for the first time."""
        self.first_frame = threading.Event()
        """Set by the app once it has painted the first steps: until then the reader waits after its
        first chunk, so that the frame is not slowed by parsing the rest (the GIL is shared)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set by send() and close(): look at the file now (the answer to a key is on its way)."""
        self._hurry_until = 0.0
        self._skip_noted = False

    # -- what the app reads --------------------------------------------------------------
    @property
    def steerable(self) -> bool:
        """Commands can reach the run: it is live, it is ours, and the connection is open."""
        client = self.client
        return client is not None and not client.closed and not self.ended

    def note(self, level: str, text: str) -> None:
        self.notes.append(LogLine(time.time(), level, text))

    def send(self, command: Command) -> None:
        from tuitrain.engine.control import ControlError

        client = self.client
        if client is None or client.closed:
            self.note("warning", f"{command.name} not sent: the run cannot be steered from here (read-only)")
            return
        try:
            client.send(command)
        except ControlError as exc:
            self.note("warning", f"{command.name} not sent: {exc}")
            return
        self.hurry()

    def hurry(self, wake: bool = True) -> None:
        """An answer (or the end) is expected any moment: look at the file every 10 ms for a while.

        wake=False from a signal handler: no lock taken (the reader sees it within a poll interval).
        """
        self._hurry_until = time.monotonic() + HURRY_SECONDS
        if wake:
            self._wake.set()

    @property
    def hurrying(self) -> bool:
        """A command was sent moments ago: its answer is expected in the file any moment."""
        return time.monotonic() < self._hurry_until

    def close(self) -> None:
        """Stop following (the watcher quits); the run itself goes on."""
        self._stop.set()
        self._wake.set()

    # -- the worker ------------------------------------------------------------------------
    def run(self) -> None:
        """Load the history, then follow the run until it ends or close() is called."""
        try:
            self._connect()
            from tuitrain.engine.replay import MetricsFollower
            self._follow(MetricsFollower(self.run_dir / "metrics.jsonl", chunk=self.chunk_bytes))
        finally:
            client, self.client = self.client, None
            if client is not None:
                client.close()

    def _connect(self) -> None:
        from tuitrain.engine.control import ControlClient, ControlError, NotOwner
        from tuitrain.engine.rundir import run_state

        self.state = run_state(self.run_dir)
        if self.state != "live":
            if self.state in END_STATUSES and self.announce:
                # (not for the run this dashboard started: one that ended before the dashboard attached,
                # a crash in its first second, is that run's end, said by its record, not a replay)
                self.note("info", f"{self.run_dir}: the run is over ({self.state}); replaying it read-only")
            return
        try:
            self.client = ControlClient.connect(self.run_dir)
        except NotOwner:
            self.note("warning", f"{self.run_dir} belongs to another user: watching read-only")
            return
        except ControlError as exc:
            self.note("warning", f"cannot steer this run: {exc}; watching read-only")
            return
        pid = self.client.hello.get("pid")
        if self.announce:
            self.note("info", f"watching the live run in {self.run_dir} (pid {pid}); "
                              "q detaches this watcher and the run keeps training, x stops the run")

    def _follow(self, follower: Any) -> None:
        """Read `follower` (engine/replay.py MetricsFollower) a chunk at a time, then tail it.

        One follower, with one decoder, for the whole file: it keeps the run's steps per
        epoch (from RunStarted) and the previous flush's time across reads, so a step in
        epoch 7 shows as such, not as step 1 of 1, and a read of one flush has its steps/s.
        """
        quiet_since: float | None = None
        last_state_check = time.monotonic()
        while not self._stop.is_set():
            before = follower.offset
            events = follower.read_events()
            live = self._poll_live()
            self._push(events + live)
            if self.ended or self._stop.is_set():
                return
            if not self.first_frame.is_set() and any(isinstance(e, ev.StepStats) for e in events):
                self.first_frame.wait(FIRST_FRAME_WAIT)
            self._note_skipped(follower)
            if follower.offset != before or follower.behind:
                quiet_since = None
                continue  # more history may be waiting: read on without sleeping
            self.history_loaded.set()
            now = time.monotonic()
            if quiet_since is None:
                quiet_since = now
            if self._should_check(now, last_state_check):
                last_state_check = now
                if self._gone(now - quiet_since):
                    return
            self._wake.wait(HURRY_POLL if self.hurrying else self.poll_interval)
            self._wake.clear()

    def _note_skipped(self, follower: Any) -> None:
        """One warning in the log for the first over-long line of metrics.jsonl (not a record)."""
        if not follower.skipped or self._skip_noted:
            return
        self._skip_noted = True
        self.note("warning", f"{follower.path}: skipping a line longer than {follower.max_line >> 20} MiB at byte "
                             f"{follower.skipped_at:,} (not a record tuitrain writes); reading on")

    def _should_check(self, now: float, last: float) -> bool:
        """Is it time to ask whether the run is still there?"""
        client = self.client
        if client is not None and not client.closed:
            return False  # connected: EOF on the socket will tell us
        return now - last >= STATE_INTERVAL or self.state != "live"

    def _gone(self, quiet: float) -> bool:
        """The run is not live and the file says nothing more: end the replay (True) or keep following."""
        from tuitrain.engine.rundir import run_state

        state = run_state(self.run_dir)
        if state == "live":
            return False
        if state == "unknown" and self.state == "unknown":
            return False  # no socket, no pid, no summary: an older run still writing, perhaps
        if self.state == "live" and quiet < END_GRACE:
            return False  # the run just ended: give its last records a moment to reach the file
        summary = read_json(self.run_dir / "summary.json")
        if state in END_STATUSES and isinstance(summary, dict):
            self.note("info", f"the run ended ({state}) without its final record in metrics.jsonl; "
                              "showing its summary")
            known = ev.RunSummary.from_dict(summary)
            end = ev.RunEnded(known.steps or self.last_step, time.time(), status=state, summary=known.to_dict())
        else:
            reason = f"the run's process died at step {self.last_step:,} without a summary"
            self.note("error", reason + f" (see {self.run_dir / 'output.log'}; "
                                        f"tuitrain --resume {self.run_dir} continues from its last checkpoint)")
            end = ev.RunEnded(self.last_step, time.time(), status="died",
                              summary=ev.RunSummary("died", reason, steps=self.last_step,
                                                    run_dir=str(self.run_dir)).to_dict())
        self._push([end])
        return True

    def _poll_live(self) -> list[ev.Event]:
        client = self.client
        if client is None:
            return []
        out: list[ev.Event] = []
        for message in client.poll():
            kind = message.get("kind")
            if kind == "live" and isinstance(message.get("event"), dict):
                out.extend(_decode([message["event"]]))
            elif kind == "error":
                self.note("warning", f"the run refused a command: {message.get('error')}")
        return out

    def _push(self, events: list[ev.Event]) -> None:
        """Hand events to the UI; wait (bounded by close()) while it has too many unread."""
        if not events:
            return
        for event in events:
            if isinstance(event, ev.RunEnded):
                self.ended = True
                self.end_event = event
            if event.step > self.last_step and not isinstance(event, ev.RunEnded):
                self.last_step = event.step
        self.events.put_all(events)
        while len(self.events) > BACKLOG and not self._stop.is_set():
            self._stop.wait(0.02)  # wait-ok: backpressure while the UI catches up (woken by close())


def _decode(records: list[dict[str, Any]]) -> list[ev.Event]:
    from tuitrain.engine.replay import events_from_records

    return events_from_records(records)

