"""The control socket (engine/control.py): real Unix sockets, real runs, real dead processes.

Every wait is on a condition with a deadline (conftest.wait_until or a loop
marked wait-ok); nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tuitrain.engine import events as ev
from tuitrain.engine.commands import (CommandQueue, Evaluate, Pause, Resume, SaveCheckpoint, SetLR, Stop,
                                      TogglePause)
from tuitrain.engine.control import (MAX_LINE, PROTOCOL, SOCKET_NAME, SOCKET_PATH_LIMIT, VERSION, ControlClient,
                                     ControlError, ControlServer, NoRun, NotOwner, ProtocolMismatch, StaleRun)
from tuitrain.engine.rundir import PID_NAME, pid_alive, read_metrics, read_pid, run_state

from conftest import classifier_preset, make_cfg, start, wait_until


def collect(client: ControlClient, predicate, timeout: float = 10.0, what: str = "a message") -> list[dict]:
    """Poll the client until one of the messages so far satisfies `predicate`; all messages seen."""
    seen: list[dict] = []

    def got() -> bool:
        seen.extend(client.poll())
        return any(predicate(m) for m in seen)

    wait_until(got, timeout, what)
    return seen


def schedule(step: int = 1, n: int = 3, multiplier: float = 1.0) -> ev.SchedulePreview:
    return ev.SchedulePreview(step, 1.0, steps=list(range(n)), lrs=[0.1] * n, multiplier=multiplier)


def grid(epoch_end: bool) -> ev.BoundaryGrid:
    return ev.BoundaryGrid(1, 1.0, x_range=[0.0, 1.0], y_range=[0.0, 1.0], cols=2, rows=1, cells="01",
                           epoch=1, epoch_end=epoch_end)


def python_child(code: str, *, user: int | None = None, python: str = sys.executable) -> subprocess.Popen:
    return subprocess.Popen([python, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, user=user)


def long_dir(tmp_path: Path) -> Path:
    """A run directory whose control.sock path is beyond the socket address limit."""
    path = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    assert len(os.fsencode(str(path / SOCKET_NAME))) > SOCKET_PATH_LIMIT
    return path


# -- handshake, files, commands ------------------------------------------------------------------

def test_hello_names_protocol_version_pid_and_run_dir(served):
    server, _, run_dir = served
    with ControlClient.connect(run_dir) as client:
        assert client.hello == {"kind": "hello", "protocol": PROTOCOL, "version": VERSION,
                                "pid": os.getpid(), "run_dir": str(run_dir.resolve())}
        assert (PROTOCOL, VERSION) == ("tuitrain-control", 1)
        wait_until(lambda: server.clients == 1, what="the server to count the client")


def test_socket_is_0600_and_run_pid_records_the_process(served):
    _, _, run_dir = served
    sock = run_dir / SOCKET_NAME
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    info = read_pid(run_dir)
    assert info is not None
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert abs(info["started"] - time.time()) < 60 and isinstance(info["argv"], list)
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # written atomically


@pytest.mark.parametrize("command", [Pause(), Resume(), TogglePause(), SetLR(0.001), SaveCheckpoint(),
                                     Evaluate(), Stop(reason="enough")])
def test_each_command_reaches_the_queue_as_itself(served, command):
    _, commands, run_dir = served
    with ControlClient.connect(run_dir) as client:
        client.send(command)
        got = commands.get(timeout=10)
        assert got == command and type(got) is type(command)
        assert client.poll() == []  # a valid command gets no reply on the socket


def test_raw_lines_map_to_commands(served):
    _, commands, run_dir = served
    with ControlClient.connect(run_dir) as client:
        client.send_message({"cmd": "set_lr", "lr": 3, "id": 7})  # an int is a number too
        client.send_message({"cmd": "stop"})
        got = [commands.get(timeout=10), commands.get(timeout=10)]  # a stop jumps the queue: any order
        assert sorted(got, key=repr) == [SetLR(3.0), Stop(reason="watcher")]


def test_malformed_lines_get_error_lines_and_the_connection_lives_on(served):
    _, commands, run_dir = served
    addr = str(run_dir / SOCKET_NAME)
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(addr)
        f = raw.makefile("rwb")
        assert json.loads(f.readline())["kind"] == "hello"
        bad = [b"not json", b"[1, 2]", b'{"id": 1}', b'{"cmd": "explode", "id": "x"}',
               b'{"cmd": "set_lr", "lr": "fast", "id": 3}', b'{"cmd": "set_lr", "id": 4}',
               b'{"cmd": "set_lr", "lr": true, "id": 5}', b'{"cmd": "stop", "reason": 5, "id": [1]}',
               b"\xff\xfe garbage"]
        for line in bad:
            f.write(line + b"\n")
        f.write(b'{"cmd": "pause", "id": 9}\n')
        f.flush()
        replies = [json.loads(f.readline()) for _ in bad]
        assert all(r["kind"] == "error" and r["error"] for r in replies)
        assert [r["id"] for r in replies] == [None, None, 1, "x", 3, 4, 5, "[1]", None]
        assert "unknown cmd" in replies[3]["error"] and "number" in replies[4]["error"]
        assert commands.get(timeout=10) == Pause()  # only the good line became a command
        assert commands.get_nowait() is None


def test_an_oversized_line_is_an_error_and_drops_the_client(served):
    server, commands, run_dir = served
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(run_dir / SOCKET_NAME))
        f = raw.makefile("rb")
        assert json.loads(f.readline())["kind"] == "hello"
        try:
            raw.sendall(b'{"cmd":"pause","pad":"' + b"x" * (MAX_LINE + 10))  # no newline yet
        except OSError:
            pass  # the server may already have hung up
        reply = json.loads(f.readline())
        assert reply["kind"] == "error" and "longer than" in reply["error"]
        assert f.readline() == b""  # then EOF
    wait_until(lambda: server.clients == 0, what="the client to be dropped")
    assert commands.get_nowait() is None
    with ControlClient.connect(run_dir) as client:  # the server goes on serving others
        client.send(Pause())
        assert commands.get(timeout=10) == Pause()


# -- live events -----------------------------------------------------------------------------

def test_only_live_only_events_are_forwarded_to_every_client(served):
    server, _, run_dir = served
    a, b = ControlClient.connect(run_dir), ControlClient.connect(run_dir)
    wait_until(lambda: server.clients == 2, what="two clients")
    server.listener(ev.Paused(1, 1.0))              # on disk: not forwarded
    server.listener(grid(epoch_end=True))           # on disk: not forwarded
    server.listener(ev.StepStats(1, 1.0, epoch=1, steps=[1], loss=[0.5], lr=[0.1], grad_norm=None,
                                 epoch_step=1, steps_per_epoch=8, steps_per_sec=1.0, samples_per_sec=8.0))
    server.listener(schedule(multiplier=0.5))
    server.listener(grid(epoch_end=False))
    for client in (a, b):
        seen = collect(client, lambda m: m.get("event", {}).get("event") == "boundary", what="the grid")
        assert [(m["kind"], m["event"]["event"]) for m in seen] == [("live", "schedule"), ("live", "boundary")]
        assert seen[0]["event"] == schedule(multiplier=0.5).to_dict()
        assert seen[1]["event"]["epoch_end"] is False
        client.close()


def test_a_watcher_that_connects_later_gets_the_latest_schedule_and_boundary_frame(served):
    server, _, run_dir = served
    server.listener(schedule(multiplier=1.0))  # before anyone watches
    server.listener(schedule(multiplier=0.5))
    server.listener(grid(epoch_end=False))
    late = ControlClient.connect(run_dir)
    seen = collect(late, lambda m: m.get("event", {}).get("event") == "boundary", what="the grid")
    assert [m["event"]["event"] for m in seen] == ["schedule", "boundary"]
    assert seen[0]["event"]["multiplier"] == 0.5  # only the newest of each kind
    late.close()


def test_a_slow_reader_gets_a_dropped_count_and_everything_adds_up(tmp_path: Path):
    server = ControlServer(tmp_path / "run", CommandQueue(), queue_size=8, stall_timeout=60)
    server.start()
    try:
        client = ControlClient.connect(tmp_path / "run")
        wait_until(lambda: server.clients == 1, what="the client")
        n = 400
        for i in range(n):  # ~80 KB each: far more than the socket buffers hold
            server.listener(schedule(step=i, n=4000))
        live, dropped = [], 0

        def drained() -> bool:
            nonlocal dropped
            for m in client.poll():
                if m["kind"] == "live":
                    live.append(m["event"]["step"])
                elif m["kind"] == "dropped":
                    dropped += m["count"]
            return len(live) + dropped == n

        wait_until(drained, 30, "every event delivered or counted as dropped")
        assert dropped > 0 and live == sorted(live) and live[-1] == n - 1  # the newest survive
        client.close()
    finally:
        server.close()


def test_a_stalled_client_is_disconnected_and_never_blocks_the_listener(tmp_path: Path):
    server = ControlServer(tmp_path / "run", CommandQueue(), queue_size=4, stall_timeout=0.3)
    server.start()
    try:
        stalled = socket.socket(socket.AF_UNIX)
        stalled.connect(str(tmp_path / "run" / SOCKET_NAME))  # connects and never reads
        wait_until(lambda: server.clients == 1, what="the stalled client")
        event = schedule(n=4000)
        times: list[float] = []
        deadline = time.monotonic() + 20
        while server.clients:  # wait-ok: a stream of live events until the server gives up on it
            assert time.monotonic() < deadline, "the stalled client was never disconnected"
            t0 = time.perf_counter()
            server.listener(event)
            times.append(time.perf_counter() - t0)
        times.sort()
        median, worst = times[len(times) // 2], times[-1]
        assert median < 0.001 and worst < 0.1, (median, worst)
        stalled.close()
        print(f"{len(times)} listener calls with a stalled client: median {median * 1e6:.1f} us, "
              f"worst {worst * 1e3:.2f} ms")
    finally:
        server.close()


def test_listener_returns_at_once_without_clients(served):
    server, _, _ = served
    event = schedule(n=4000)
    began = time.perf_counter()
    for _ in range(100_000):
        server.listener(event)
    assert time.perf_counter() - began < 1.0
    assert server.dropped == 0  # nothing queued for nobody


# -- a real run steered through the socket ------------------------------------------------------

def test_a_real_run_steered_by_two_watchers(tmp_path: Path):
    run_dir = tmp_path / "run"
    # log_interval 0.05: while paused, the engine reports a finished save at its next poll
    trainer, events = start(make_cfg(epochs=100_000, log_interval=0.05), classifier_preset(), run_dir)
    server = ControlServer(run_dir, trainer.commands)
    server.start()
    trainer.listeners.append(server.listener)
    a, b = ControlClient.connect(run_dir), ControlClient.connect(run_dir)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(trainer.run()), daemon=True)
    thread.start()
    try:
        def saw(cls: type, **fields: Any) -> bool:
            return any(isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items())
                       for e in list(events))

        a.send(Pause())
        wait_until(lambda: saw(ev.Paused), what="paused")
        assert run_state(run_dir) == "live"
        b.send(SetLR(0.01))
        wait_until(lambda: saw(ev.LRChanged, new_lr=0.01), what="lr_changed")
        for client in (a, b):  # the new schedule preview is live-only: both watchers get it
            collect(client, lambda m: m.get("kind") == "live" and m["event"]["event"] == "schedule"
                    and abs(m["event"]["multiplier"] - 0.2) < 1e-9, what="the rescaled schedule")
        b.send_message({"cmd": "set_lr", "lr": "fast", "id": "lr-1"})
        errors = collect(b, lambda m: m.get("kind") == "error", what="the error line")
        assert [m["id"] for m in errors if m["kind"] == "error"] == ["lr-1"]
        a.send(SetLR(-1.0))  # a number: the engine itself refuses it, on the record
        wait_until(lambda: saw(ev.CommandRejected, command="set_lr"), what="rejected")
        b.send(SaveCheckpoint())
        wait_until(lambda: saw(ev.CheckpointSaved, reason="manual"), what="a manual checkpoint")
        a.send(Resume())
        wait_until(lambda: saw(ev.Resumed), what="resumed")  # a stop sent at once would jump the queue
        a.send(Stop(reason="stopped from a watcher"))
        thread.join(60)
        assert not thread.is_alive() and result[0].status == "stopped"
    finally:
        trainer.commands.put(Stop(reason="test cleanup"))
        thread.join(60)
        server.close()
    for client in (a, b):
        wait_until(lambda: (client.poll(), client.closed)[1], what="EOF after close")  # noqa: B023
    records = list(read_metrics(run_dir / "metrics.jsonl"))
    named = [r for r in records if r["kind"] == "event"]
    names = [r["event"] for r in named]
    for name in ("paused", "lr_changed", "rejected", "checkpoint", "resumed", "stopped", "ended"):
        assert name in names, name
    assert names.index("paused") < names.index("lr_changed") < names.index("resumed") < names.index("stopped")
    assert [r["new_lr"] for r in named if r["event"] == "lr_changed"] == [0.01]
    manual = [r for r in named if r["event"] == "checkpoint" and r["reason"] == "manual"]
    assert len(manual) == 1 and Path(manual[0]["path"]).is_file()
    assert [r["reason"] for r in named if r["event"] == "stopped"] == ["stopped from a watcher"]
    assert not (run_dir / SOCKET_NAME).exists() and (run_dir / PID_NAME).exists()
    assert run_state(run_dir) == "stopped"


def test_a_watcher_that_never_reads_or_is_killed_does_not_slow_the_run(tmp_path: Path):
    run_dir = tmp_path / "run"
    trainer, events = start(make_cfg(epochs=40, log_interval=0.005), classifier_preset(), run_dir)
    server = ControlServer(run_dir, trainer.commands, queue_size=4, stall_timeout=60)
    server.start()
    times: list[float] = []

    def timed(event: ev.Event) -> None:
        t0 = time.perf_counter()
        server.listener(event)
        server.listener(schedule(n=4000))  # plus a big live event for every engine event
        times.append(time.perf_counter() - t0)

    trainer.listeners.append(timed)
    never_reads = socket.socket(socket.AF_UNIX)
    never_reads.connect(str(run_dir / SOCKET_NAME))
    child = python_child(f"""
        import sys, time
        from tuitrain.engine.control import ControlClient
        c = ControlClient.connect({str(run_dir)!r})
        print("connected", flush=True)
        time.sleep(600)  # wait-ok: killed by the test
    """)
    try:
        assert child.stdout.readline().strip() == "connected", child.stderr.read()
        wait_until(lambda: server.clients == 2, what="both watchers")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        result = trainer.run()
    finally:
        child.kill()
        child.wait()
        server.close()
        never_reads.close()
    assert result.status == "finished" and result.summary["steps"] == 40 * 8
    times.sort()
    assert len(times) > 40
    median, worst = times[len(times) // 2], times[-1]
    assert median < 0.002, f"median listener call {median * 1e3:.3f} ms"
    assert sum(times) < 1.0, f"listener calls took {sum(times):.3f}s in all (worst {worst * 1e3:.1f} ms)"


# -- stale, live, refused ----------------------------------------------------------------------------

SERVE_AND_WAIT = """
    import sys, time
    from tuitrain.engine.commands import CommandQueue
    from tuitrain.engine.control import ControlServer
    ControlServer({run_dir!r}, CommandQueue()).start()
    print("serving", flush=True)
    time.sleep(600)  # wait-ok: killed by the test
"""


def killed_server(run_dir: Path) -> int:
    """A subprocess serves run_dir and is SIGKILLed; returns its pid (now dead)."""
    child = python_child(SERVE_AND_WAIT.format(run_dir=str(run_dir)))
    try:
        assert child.stdout.readline().strip() == "serving", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.wait()
    return child.pid


@pytest.mark.parametrize("deep", [False, True], ids=["short-path", "long-path"])
def test_a_dead_runs_socket_is_stale_and_a_new_server_replaces_it(tmp_path: Path, deep: bool):
    run_dir = long_dir(tmp_path) if deep else tmp_path / "run"
    pid = killed_server(run_dir)
    assert os.path.lexists(run_dir / SOCKET_NAME) and not pid_alive(pid)
    began = time.monotonic()
    with pytest.raises(StaleRun):
        ControlClient.connect(run_dir, timeout=1.0)
    assert time.monotonic() - began < 1.5
    assert run_state(run_dir) == "died"
    old_target = os.readlink(run_dir / SOCKET_NAME) if deep else None
    commands = CommandQueue()
    server = ControlServer(run_dir, commands)
    server.start()
    try:
        with ControlClient.connect(run_dir) as client:
            assert client.hello["pid"] == os.getpid()
            client.send(Pause())
            assert commands.get(timeout=10) == Pause()
        assert read_pid(run_dir)["pid"] == os.getpid()
        if deep:
            assert old_target != os.readlink(run_dir / SOCKET_NAME)
            assert not os.path.exists(os.path.dirname(old_target))  # the dead run's private dir is gone
    finally:
        server.close()


def test_a_second_server_on_a_live_directory_is_refused(served):
    server, commands, run_dir = served
    with pytest.raises(ControlError, match="already serves"):
        ControlServer(run_dir, CommandQueue()).start()
    with ControlClient.connect(run_dir) as client:  # the first one still serves
        client.send(Evaluate())
        assert commands.get(timeout=10) == Evaluate()


def test_a_socket_nobody_answers_on_is_stale_within_the_timeout(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with socket.socket(socket.AF_UNIX) as mute:  # listens (the kernel completes connects), never accepts
        mute.bind(str(run_dir / SOCKET_NAME))
        mute.listen(4)
        began = time.monotonic()
        with pytest.raises(StaleRun, match="did not answer"):
            ControlClient.connect(run_dir, timeout=0.5)
        assert time.monotonic() - began < 1.5


def test_another_protocol_is_a_mismatch(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with socket.socket(socket.AF_UNIX) as fake:
        fake.bind(str(run_dir / SOCKET_NAME))
        fake.listen(4)

        def answer(hello: bytes) -> None:
            conn, _ = fake.accept()
            conn.sendall(hello)
            conn.close()

        for hello in (b'{"kind":"hello","protocol":"tuitrain-control","version":2,"pid":1,"run_dir":"x"}\n',
                      b'{"kind":"hello","protocol":"other","version":1}\n', b"SSH-2.0-OpenSSH\n"):
            thread = threading.Thread(target=answer, args=(hello,))
            thread.start()
            with pytest.raises(ProtocolMismatch):
                ControlClient.connect(run_dir, timeout=5)
            thread.join(10)


def test_no_socket_is_no_run(tmp_path: Path):
    with pytest.raises(NoRun):
        ControlClient.connect(tmp_path / "nothing-here")
    (tmp_path / "finished").mkdir()
    with pytest.raises(NoRun):
        ControlClient.connect(tmp_path / "finished")


def test_a_peer_with_another_uid_is_refused(served, monkeypatch):
    server, commands, run_dir = served
    monkeypatch.setattr(server, "_owner_uid", lambda: os.getuid() + 1)  # as if we were someone else
    with pytest.raises(NotOwner):
        ControlClient.connect(run_dir)
    assert server.clients == 0 and commands.get_nowait() is None


OTHER_PYTHON = "/usr/bin/python3"  # our interpreter may live where another user cannot run it


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0 or not os.access(OTHER_PYTHON, os.X_OK),
                    reason="needs root (to run as another user) and a system python")
def test_another_user_cannot_connect_to_the_0600_socket():
    base = tempfile.mkdtemp(prefix="tuitrain-test-")
    try:
        os.chmod(base, 0o755)  # the directory is open to all; only the socket's mode protects it
        server = ControlServer(Path(base) / "run", CommandQueue())
        server.start()
        os.chmod(Path(base) / "run", 0o755)
        try:
            child = python_child(f"""
                import socket
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect({str(Path(base) / 'run' / SOCKET_NAME)!r})
                    print("connected")
                except PermissionError:
                    print("refused")
            """, user=65534, python=OTHER_PYTHON)
            out, err = child.communicate(timeout=60)
            assert out.strip() == "refused", err
        finally:
            server.close()
    finally:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


# -- long paths, close ------------------------------------------------------------------------------

def test_a_long_run_dir_binds_privately_behind_a_symlink(tmp_path: Path):
    run_dir = long_dir(tmp_path)
    commands = CommandQueue()
    server = ControlServer(run_dir, commands)
    server.start()
    link = run_dir / SOCKET_NAME
    target = os.readlink(link)
    assert link.is_symlink() and len(os.fsencode(target)) <= SOCKET_PATH_LIMIT
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(target)).st_mode) == 0o700
    assert run_state(run_dir) == "live"
    with ControlClient.connect(run_dir) as client:
        client.send(SetLR(0.5))
        assert commands.get(timeout=10) == SetLR(0.5)
    server.close()
    assert not os.path.lexists(link) and not os.path.exists(os.path.dirname(target))


def test_close_gives_clients_eof_removes_the_socket_and_is_idempotent(tmp_path: Path):
    run_dir = tmp_path / "run"
    server = ControlServer(run_dir, CommandQueue())
    server.start()
    client = ControlClient.connect(run_dir)
    wait_until(lambda: server.clients == 1, what="the client")
    server.close()
    server.close()
    wait_until(lambda: (client.poll(), client.closed)[1], what="EOF")
    with pytest.raises(ControlError):
        client.send(Pause())
    assert not (run_dir / SOCKET_NAME).exists()
    assert read_pid(run_dir)["pid"] == os.getpid()  # run.pid stays
    with pytest.raises(NoRun):
        ControlClient.connect(run_dir)


# -- run_state, pids ----------------------------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_pid(run_dir: Path, pid: int, started: float | None = None, host: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PID_NAME).write_text(json.dumps({"pid": pid, "started": started or time.time(),
                                                "host": host or socket.gethostname(), "argv": []}))


def test_run_state_of_each_kind_of_directory(tmp_path: Path, served):
    _, _, live = served
    assert run_state(live) == "live"

    unknown = tmp_path / "old"
    unknown.mkdir()
    assert run_state(unknown) == "unknown"

    finished = tmp_path / "finished"
    write_pid(finished, dead_pid(), started=time.time() - 100)
    (finished / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert run_state(finished) == "finished"

    died = tmp_path / "died"
    write_pid(died, dead_pid())
    assert run_state(died) == "died"

    resumed_then_died = tmp_path / "resumed"  # summary.json from an earlier session
    (resumed_then_died).mkdir()
    (resumed_then_died / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    old = time.time() - 3600
    os.utime(resumed_then_died / "summary.json", (old, old))
    write_pid(resumed_then_died, dead_pid())
    assert run_state(resumed_then_died) == "died"

    elsewhere = tmp_path / "elsewhere"
    write_pid(elsewhere, dead_pid(), host="another-machine")
    assert run_state(elsewhere) == "unknown"

    not_serving = tmp_path / "alive"
    write_pid(not_serving, os.getpid())
    assert run_state(not_serving) == "unknown"


def test_pid_helpers(tmp_path: Path):
    assert pid_alive(os.getpid()) and pid_alive(1)
    assert not pid_alive(dead_pid()) and not pid_alive(0) and not pid_alive(-5)
    assert read_pid(tmp_path) is None
    (tmp_path / PID_NAME).write_text("{garbled")
    assert read_pid(tmp_path) is None
    (tmp_path / PID_NAME).write_text('{"pid": "12"}')
    assert read_pid(tmp_path) is None


def test_control_imports_neither_torch_nor_ui():
    code = ("import sys; import tuitrain.engine.control, tuitrain.engine.replay; "
            "bad = [m for m in ('torch', 'textual', 'rich') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
