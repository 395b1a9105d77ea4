"""Hardening, round two: preset code that exits or leaves threads, bounded error output, clean
headless lines, --on-nan pause headless, and the small things (digits, --threads, leaked folders)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.engine.commands import CommandQueue, Stop
from tuitrain.engine.config import available_cpus
from tuitrain.engine.control import SOCKET_NAME, SOCKET_PATH_LIMIT, ControlServer
from tuitrain.tui.headless import HeadlessReporter

from cli_helpers import Proc, assert_usage_error, in_process, read_json, tuitrain, write_preset
from conftest import classifier_preset, make_cfg, run, start, wait_until

PRESET_HEAD = """
    import os, sys, threading
    import torch
    from torch import nn
    from tuitrain.presets import Data

    TASK = "classification"
    DEFAULTS = {"batch_size": 8, "epochs": 1, "optimizer": "sgd", "lr": 0.1}


    def make_data(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(32, 2, generator=g)
        return Data(train=(x, (x[:, 0] > 0).long()), val=(x[:8], (x[:8, 0] > 0).long()))

"""


def preset_file(tmp_path: Path, body: str) -> Path:
    return write_preset(tmp_path, "mine.py", PRESET_HEAD + textwrap.indent(textwrap.dedent(body), "    "))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


FAILING = {
    "sys.exit in make_model": """
        def make_model():
            sys.exit(3)  # FAILS HERE
    """,
    "KeyboardInterrupt in forward": """
        class Net(nn.Linear):
            def forward(self, x):
                raise KeyboardInterrupt  # FAILS HERE

        def make_model():
            return Net(2, 2)
    """,
    "a huge message of many lines": """
        class Net(nn.Linear):
            def forward(self, x):
                raise ValueError("bad\\n" * 300_000)  # FAILS HERE

        def make_model():
            return Net(2, 2)
    """,
}


@pytest.mark.parametrize("case", list(FAILING))
def test_preset_code_that_exits_or_fails_is_one_bounded_line_exit_1_and_error_txt(tmp_path: Path, case):
    preset = preset_file(tmp_path, FAILING[case])
    run_dir = tmp_path / "run"
    proc = tuitrain("--preset", preset, "--headless", "--run-dir", run_dir, cwd=tmp_path)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 3000
    assert len(proc.stderr.splitlines()) <= 3
    where = f"{preset}:{line_of(preset, 'FAILS HERE')}"
    assert where in proc.stderr
    assert read_json(run_dir / "summary.json")["status"] == "failed"
    assert where in read_json(run_dir / "summary.json")["reason"]
    error = (run_dir / "error.txt").read_text()
    assert "Traceback" in error and "FAILS HERE" in error
    if case == "a huge message of many lines":
        assert error.count("bad\n") >= 300_000  # all of it, in the file only
        record = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                  if r.get("event") == "error"]
        assert len(record) == 1 and len(json.dumps(record[0])) < 30_000


def test_a_thread_left_running_by_the_preset_does_not_keep_tuitrain_alive(tmp_path: Path):
    preset = preset_file(tmp_path, """
        def make_model():
            threading.Thread(target=threading.Event().wait, name="preset-forever").start()  # non-daemon
            return nn.Linear(2, 2)
    """)
    proc = tuitrain("--preset", preset, "--headless", "--run-dir", tmp_path / "run", cwd=tmp_path, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "thread(s) still running after the run ended (preset-forever); exiting anyway" in proc.stderr
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "finished"


@pytest.mark.parametrize("exc", [SystemExit(4), KeyboardInterrupt()])
def test_the_engine_records_exits_from_preset_code_as_failures(tmp_path: Path, exc):
    preset = classifier_preset()

    def boom(n: int) -> None:
        if n == 3:
            raise exc

    trainer, events = start(make_cfg(epochs=1), preset, tmp_path / "run")
    trainer.model.hook = boom
    result = trainer.run()
    assert result.status == "failed"
    assert result.summary["steps"] == 2 and type(exc).__name__ in result.summary["reason"]
    assert "test_hardening_output.py" in result.summary["reason"]  # the user's line: the hook above
    assert [e.name for e in events][-1] == "ended" and (tmp_path / "run" / "error.txt").exists()


# -- headless output ----------------------------------------------------------------------------------

def reporter() -> tuple[HeadlessReporter, io.StringIO]:
    out = io.StringIO()
    return HeadlessReporter(out=out, err=out), out


@settings(max_examples=150, deadline=None, database=None)
@given(st.text())
def test_text_from_a_watcher_is_printed_as_one_clean_line(text):
    rep, out = reporter()
    events = [ev.Stopped(3, 1.0, reason=text), ev.CommandRejected(3, 1.0, command=text, reason=text),
              ev.Hint(3, 1.0, rule="r", message=text, evidence=text, remedy=text, severity="warning"),
              ev.CheckpointFailed(3, 1.0, path=text, error=text, reason="manual")]
    for e in events:
        rep(e)
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == len(events) + 1
    assert all(line.isprintable() and len(line) <= 2000 for line in lines)


def test_on_nan_pause_headless_without_a_socket_stops_and_says_why():
    rep, out = reporter()
    rep.commands = CommandQueue()
    rep(ev.NonFinite(5, 1.0, action="pause", rolled_back_to=None))
    assert rep.commands.get_nowait() == Stop(reason="--on-nan pause, headless, with no control socket to steer it")
    assert "nothing can steer this run: stopping" in out.getvalue() and "press l" not in out.getvalue()


def test_on_nan_pause_headless_says_how_to_steer_the_run_and_a_signal_ends_it(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = Proc("--preset", "explode", "--headless", "--on-nan", "pause", "--run-dir", run_dir, cwd=tmp_path)
    try:
        wait_until(lambda: any("paused on a non-finite loss" in line for line in proc.err), 90, "the pause advice")
        advice = next(line for line in proc.err if "paused on a non-finite loss" in line)
        assert f"tuitrain watch {run_dir}" in advice and f"kill -INT {proc.popen.pid}" in advice
        assert not any("press l" in line for line in proc.err + proc.out)
        proc.send(signal.SIGINT)
        rc, _, _ = proc.finish(60)
        assert rc == 130
    finally:
        proc.kill()


# -- the small things ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--epochs", "\u0663"), ("--epochs", "1_0"), ("--seed", "\uff11"),
                                        ("--lr", "\u0661e-3"), ("--lr", "1_0.0"), ("--max-steps", "\u00b2")])
def test_numbers_on_the_command_line_are_ascii(tmp_path: Path, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    rc, _, err = in_process("--preset", "circles", flag, value)
    assert_usage_error(rc, err, flag.lstrip("-").split("-")[0])


def test_threads_beyond_the_cpus_here_are_refused(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = in_process("--preset", "circles", "--threads", str(available_cpus() + 1))
    assert_usage_error(rc, err, "--threads", f"the {available_cpus()} CPUs available here")
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_past_the_plan_without_max_steps_says_so(tmp_path: Path):
    preset = classifier_preset()
    first = run(make_cfg(epochs=2), preset, tmp_path / "a", at={3: [Stop()]})
    state = ckpt.load(first.dir / "checkpoints" / "latest.pt")
    state["step"] = 10 ** 9
    r = run(make_cfg(epochs=2), preset, tmp_path / "b", resume=state)
    reason = r.result.summary["reason"]
    assert "None" not in reason and "already at step 1,000,000,000, past the 16 steps of 2 epochs" == reason


def test_a_killed_long_path_runs_private_socket_folder_is_removed_by_the_next_one(tmp_path: Path):
    def long_dir(name: str) -> Path:
        path = tmp_path / ("d" * 60) / ("e" * 60) / name
        assert len(os.fsencode(str(path / SOCKET_NAME))) > SOCKET_PATH_LIMIT
        return path

    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, threading
        from tuitrain.engine.commands import CommandQueue
        from tuitrain.engine.control import ControlServer
        server = ControlServer({str(long_dir('a'))!r}, CommandQueue())
        server.start()
        print(server.address, flush=True)
        threading.Event().wait()
    """)], stdout=subprocess.PIPE, text=True)
    try:
        private = Path(child.stdout.readline().strip()).parent
        assert private.is_dir() and private.name.startswith(f"tuitrain-{child.pid}-")
    finally:
        child.kill()
        child.wait()
    assert private.is_dir()  # SIGKILL left it
    with ControlServer(long_dir("b"), CommandQueue()):
        assert not private.exists()
