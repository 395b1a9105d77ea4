"""Signals: SIGINT/SIGTERM/SIGHUP save a checkpoint and exit 128+N; before training, a clean one-liner."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import (Proc, handles_signal, ignore_sighup, load_ckpt, read_json, reset_sighup, train_in_process,
                         tuitrain, write_preset)
from conftest import SLOW, wait_until

from tuitrain.engine.rundir import step_losses

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals and /proc/<pid>/status")]

LONG = ("--preset", "circles", "--headless", "--epochs", "200")


def _epoch(n: int):
    return lambda line: line.startswith(f"epoch {n:>3} |")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_during_training_saves_and_exits_128_plus_n(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    R = tmp_path / "R"
    proc = Proc(*LONG, "--run-dir", R, cwd=tmp_path, preexec_fn=reset_sighup)
    proc.wait_for_line(_epoch(1))
    proc.send(sig)
    rc, out, err = proc.finish()
    assert rc == code, err
    assert err == ""  # no traceback, no warning
    summary = read_json(R / "summary.json")
    assert summary["status"] == "interrupted"
    assert summary["signal"] == int(sig)
    assert summary["reason"] == f"received {sig.name}"
    steps = summary["steps"]
    assert 125 <= steps < 200 * 125
    latest = load_ckpt(R / "checkpoints" / "latest.pt")
    assert latest["step"] == steps
    assert f"stopping at step {steps}: received {sig.name}" in out
    assert f"saved {R / 'checkpoints' / 'latest.pt'} (" in out
    assert [line for line in out.splitlines() if line.startswith("interrupted: ")], out
    assert sorted(step_losses(R / "metrics.jsonl")) == list(range(1, steps + 1))

    if sig == signal.SIGINT:  # the saved run continues (once: the save path is the same for all three)
        r_out, _ = train_in_process("--resume", R, "--max-steps", str(steps + 20), "--headless", cwd=tmp_path)
        assert r_out.startswith(f"tuitrain: resuming at step {steps} ")
        after = read_json(R / "summary.json")
        assert (after["status"], after["steps"]) == ("finished", steps + 20)
        assert sorted(step_losses(R / "metrics.jsonl")) == list(range(1, steps + 21))


#: Runs main() with SIGTERM arriving while `dataclasses` is half imported (it is
#: importing `inspect`): in real runs that happens when the signal lands during
#: the torch import, which is where a user's early Ctrl-C usually lands.
TRAP_DATACLASSES = """
import importlib.abc, os, signal, sys

class Trap(importlib.abc.MetaPathFinder):
    # SIGTERM at the start of the torch import, once tuitrain's handler is in place.
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and callable(signal.getsignal(signal.SIGTERM)):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None

assert "torch" not in sys.modules
sys.meta_path.insert(0, Trap())
from tuitrain.tui.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: A preset whose import runs a finalizer while SIGTERM is pending: Python runs
#: the handler inside __del__ and drops what it raises ("Exception ignored in"),
#: the same way CPython drops it when the signal lands inside compile() of a
#: module being imported (seen in about 1 run in 5 of the test below).
DROPPED_PRESET = """
    import os, signal
    import torch
    from torch import nn
    from tuitrain.presets import Data

    class _Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(10))  # the handler runs here, inside __del__

    _Finalizer()

    def make_data(seed):
        x = torch.randn(32, 2, generator=torch.Generator().manual_seed(seed))
        return Data(train=(x, (x[:, 0] > 0).long()), val=(x, (x[:, 0] > 0).long()))

    def make_model():
        return nn.Linear(2, 2)
"""


def test_sigterm_right_after_start_is_one_clean_line(tmp_path: Path) -> None:
    """SIGTERM as soon as the handler is in place (during the torch import): 2 tries, 20 with TUITRAIN_SLOW=1."""
    for attempt in range(20 if SLOW else 2):
        R = tmp_path / f"R{attempt}"
        proc = Proc("--preset", "circles", "--headless", "--epochs", "1", "--max-steps", "5", "--run-dir", R,
                    cwd=tmp_path)
        wait_until(lambda: handles_signal(proc.popen.pid, signal.SIGTERM) or proc.popen.poll() is not None,
                   what="the SIGTERM handler")
        proc.send(signal.SIGTERM)
        rc, out, err = proc.finish()
        assert (rc, err, out) == (143, "tuitrain: SIGTERM before training started; nothing to save\n", ""), (
            f"attempt {attempt}")
        assert not R.exists()


def test_sigterm_while_torch_is_half_imported(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", TRAP_DATACLASSES, "--preset", "circles", "--headless",
                        "--max-steps", "1", "--run-dir", str(tmp_path / "R")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert (p.returncode, p.stderr) == (143, "tuitrain: SIGTERM before training started; nothing to save\n")


def test_signal_whose_exception_python_drops_still_ends_the_run(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "dropped.py", DROPPED_PRESET)
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--epochs", "1", "--run-dir", R, cwd=tmp_path)
    assert "Exception ignored" in p.stderr  # the handler did run and raise
    assert p.returncode == 143, p.stdout


def test_signal_while_the_preset_builds_its_data(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "slow.py", """
        import time
        from torch import nn

        def make_data(seed):
            print("making data", flush=True)
            time.sleep(120)  # wait-ok: a slow preset, interrupted by the test's signal

        def make_model():
            return nn.Linear(2, 2)
    """)
    proc = Proc("--preset", preset, "--headless", "--run-dir", tmp_path / "R", cwd=tmp_path)
    proc.wait_for_line(lambda line: line == "making data\n")
    proc.send(signal.SIGINT)
    rc, out, err = proc.finish(timeout=30)
    assert rc == 130
    assert err == "tuitrain: SIGINT before training started; nothing to save\n"
    assert "Traceback" not in out


def test_sighup_ignored_by_nohup_stays_ignored(tmp_path: Path) -> None:
    R = tmp_path / "R"
    proc = Proc(*LONG, "--run-dir", R, cwd=tmp_path, preexec_fn=ignore_sighup)
    proc.wait_for_line(_epoch(1))
    proc.send(signal.SIGHUP)
    proc.wait_for_line(_epoch(2))  # still training
    proc.send(signal.SIGTERM)
    rc, out, err = proc.finish()
    assert rc == 143, err
    assert "SIGHUP" not in out
    assert read_json(R / "summary.json")["reason"] == "received SIGTERM"


def test_a_repeated_sighup_is_the_same_hangup_not_a_kill() -> None:
    """One dropped connection can deliver SIGHUP more than once: one Stop, and the process lives on
    to save (before: the second one killed it at once, leaving no summary and a stale socket)."""
    import signal as sig

    from tuitrain.engine.commands import CommandQueue
    from tuitrain.tui.run_process import SignalRelay

    commands = CommandQueue()
    relay = SignalRelay()
    relay.attach(commands)
    relay._handle(sig.SIGHUP, None)
    relay._handle(sig.SIGHUP, None)  # the old rule would os.kill() this very process here
    relay.terminal_lost()  # and the terminal found gone afterwards: still the same hangup
    stops = [commands.get_nowait() for _ in range(len(commands))]
    assert len(stops) == 1 and stops[0].signal == sig.SIGHUP and relay.received == sig.SIGHUP
    assert commands.get_nowait() is None


def test_a_lost_terminal_is_a_hangup_even_without_sighup() -> None:
    import signal as sig

    from tuitrain.engine.commands import CommandQueue
    from tuitrain.tui.run_process import SignalRelay

    commands = CommandQueue()
    relay = SignalRelay()
    relay.attach(commands)
    relay.terminal_lost()
    stop = commands.get_nowait()
    assert stop.signal == sig.SIGHUP and relay.received == sig.SIGHUP


def test_a_signal_that_lands_while_the_queue_is_locked_still_stops_the_run() -> None:
    """Found as a rare hang of a paused headless run: the handler ran in the thread that held the
    queue's lock (inside get()), and put() waited for that lock for ever."""
    import signal as sig
    import threading

    from tuitrain.engine.commands import CommandQueue, Pause
    from tuitrain.tui.run_process import SignalRelay

    commands = CommandQueue()
    relay = SignalRelay()
    relay.attach(commands)
    commands.put(Pause())
    handled = threading.Event()

    def engine_thread_holding_the_lock() -> None:
        with commands._cond:  # as if the signal interrupted this thread inside get()
            relay._handle(sig.SIGTERM, None)
            handled.set()

    threading.Thread(target=engine_thread_holding_the_lock, daemon=True).start()
    assert handled.wait(5), "the signal handler waited for a lock its own thread held"
    assert commands.pending()
    stop = commands.get_nowait()  # the stop jumps the queue
    assert stop.signal == sig.SIGTERM and isinstance(commands.get_nowait(), Pause)


def test_output_to_a_dead_terminal_does_not_turn_the_exit_status_into_120(tmp_path) -> None:
    """stdout gone (EIO on a hung-up terminal, here a closed pipe): main's exit status survives."""
    import subprocess
    import sys

    code = ("import sys; from tuitrain.tui.cli import main; "
            "sys.stdout.write('still in the buffer'); sys.exit(main(['--lr', 'abc']))")
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as on a terminal
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    p.stdout.close()  # the reader is gone: every write to stdout fails
    assert p.wait(timeout=60) == 2
