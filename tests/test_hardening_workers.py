"""Hardening, round two: a run is live when ITS process is, not whoever holds its socket.

DataLoader workers are forks of the run and inherit its descriptors; one stuck in a preset's
__getitem__ after the run was SIGKILLed used to keep the control socket listening, so the
dead run looked live (`runs`, `watch`, `--resume`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tuitrain.engine import workers
from tuitrain.engine.commands import CommandQueue, Pause
from tuitrain.engine.control import SOCKET_NAME, ControlClient, ControlServer, probe_socket
from tuitrain.engine.rundir import PID_NAME, process_start, read_pid, run_state

from cli_helpers import Proc, cli_env, write_preset
from conftest import wait_until


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def rewrite_pid(run_dir: Path, **fields) -> None:
    info = read_pid(run_dir)
    info.update(fields)
    (run_dir / PID_NAME).write_text(json.dumps(info))


def test_run_pid_records_the_process_start_time(served):
    _, _, run_dir = served
    info = read_pid(run_dir)
    assert info["pid"] == os.getpid() and info["proc_start"] == process_start(os.getpid()) is not None
    assert run_state(run_dir) == "live"


@pytest.mark.parametrize("case", ["dead pid", "reused pid"])
def test_a_socket_answered_for_a_dead_run_is_not_live(served, case):
    _, _, run_dir = served
    if case == "dead pid":
        rewrite_pid(run_dir, pid=dead_pid())
    else:  # the pid now names another process: another start time
        rewrite_pid(run_dir, proc_start=process_start(os.getpid()) - 1)
    assert probe_socket(run_dir) == "live"  # someone still accepts ...
    assert run_state(run_dir) == "died"  # ... but it is not the run
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert run_state(run_dir) == "finished"


def test_a_new_server_replaces_a_socket_held_by_an_orphan(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    orphan = socket.socket(socket.AF_UNIX)  # what an orphaned worker keeps: a listening socket
    orphan.bind(str(run_dir / SOCKET_NAME))
    orphan.listen(4)
    (run_dir / PID_NAME).write_text(json.dumps({"pid": dead_pid(), "started": 1.0,
                                                "host": socket.gethostname(), "argv": []}))
    commands = CommandQueue()
    try:
        with ControlServer(run_dir, commands):
            assert run_state(run_dir) == "live"
            with ControlClient.connect(run_dir) as client:
                client.send(Pause())
                assert commands.get(timeout=10) == Pause()
    finally:
        orphan.close()


def test_the_server_registers_its_sockets_for_workers_to_close(served):
    server, _, run_dir = served
    fds = set(workers.registered())
    assert {server._listen.fileno(), server._wake_r.fileno(), server._wake_w.fileno()} <= fds
    with ControlClient.connect(run_dir):
        wait_until(lambda: len(workers.registered()) == len(fds) + 1, what="the client's socket registered")
    wait_until(lambda: len(workers.registered()) == len(fds), what="the client's socket released")


def test_close_inherited_closes_only_what_is_still_the_same_file(tmp_path: Path):
    r, w = os.pipe()
    workers.parent_only(r)
    os.close(r)
    workers.release(w)  # not registered: harmless
    r2, w2 = os.pipe()  # may reuse r's number, as another file
    pid = os.fork()
    if pid == 0:  # the child plays a freshly forked worker
        try:
            workers.close_inherited()
            os.fstat(r2)  # still open: it is not the file that was registered
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    workers.release(r)
    for fd in (w, r2, w2):
        os.close(fd)


STUCK = """
    import os, threading
    import torch
    from torch.utils.data import Dataset
    from tuitrain.presets import Data

    TASK = "classification"
    DEFAULTS = {"batch_size": 4, "epochs": 1, "optimizer": "sgd", "lr": 0.1}
    PID_FILE = os.environ["WORKER_PID_FILE"]


    class Stuck(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            if torch.utils.data.get_worker_info() is not None:  # in a worker: report, then hang
                with open(PID_FILE + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(PID_FILE + ".tmp", PID_FILE)
                threading.Event().wait()
            return torch.zeros(2), 0


    def make_data(seed):
        return Data(train=Stuck(), val=Stuck())


    def make_model():
        return torch.nn.Linear(2, 2)
"""


def test_a_killed_run_with_a_stuck_worker_is_died_not_live(tmp_path: Path):
    preset = write_preset(tmp_path, "stuck.py", STUCK)
    pid_file = tmp_path / "worker.pid"
    run_dir = tmp_path / "run"
    proc = Proc("--preset", preset, "--headless", "--num-workers", "1", "--run-dir", run_dir, cwd=tmp_path,
                env=cli_env(WORKER_PID_FILE=str(pid_file)))
    worker = None
    try:
        worker = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 60, "the worker to hang"))
        assert run_state(run_dir) == "live"
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(30)
        assert os.path.exists(f"/proc/{worker}")  # the orphan lives on, stuck
        assert probe_socket(run_dir) == "stale"  # it let go of the listening socket
        assert run_state(run_dir) == "died"
        links = [os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")]
        assert not [p for p in links if p.endswith("metrics.jsonl")]
    finally:
        proc.kill()
        if worker is not None:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
