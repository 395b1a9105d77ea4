"""SIGHUP, SIGTERM and SIGINT while PAUSED and while the LR dialog is open (dashboard, in tmux),
and while a headless run is paused (by --on-nan pause, the one way a headless run pauses).

Running is covered by test_cli_signals.py and test_dashboard_tmux.py. Every
case: a checkpoint at the step the run stood at, summary "interrupted",
exit 128+N, and (dashboard) the terminal given back with echo on.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from cli_helpers import Proc, read_json, reset_sighup, write_preset
from conftest import only_slow

from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine.rundir import read_metrics

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")]

SIGNALS = [(signal.SIGHUP, 129), (signal.SIGTERM, 143), (signal.SIGINT, 130)]
IDS = ["SIGHUP", "SIGTERM", "SIGINT"]
#: The dashboard cases of the default run: every signal once, each state at least once (each case
#: starts the dashboard in tmux, ~8 s); TUITRAIN_SLOW=1 runs all six.
DEFAULT_DASHBOARD = {("SIGHUP", "lr-dialog"), ("SIGTERM", "paused"), ("SIGINT", "paused")}
DASHBOARD_CASES = [pytest.param(sig, code, where, id=f"{name}-{where}",
                                marks=() if (name, where) in DEFAULT_DASHBOARD else only_slow)
                   for (sig, code), name in zip(SIGNALS, IDS) for where in ("paused", "lr-dialog")]


def _events(R: Path) -> list[dict]:
    return [r for r in read_metrics(R / "metrics.jsonl") if r.get("kind") == "event"]


def _assert_saved_and_interrupted(R: Path, sig: signal.Signals) -> dict:
    summary = read_json(R / "summary.json")
    assert summary["status"] == "interrupted" and summary["signal"] == int(sig)
    assert summary["reason"] == f"received {sig.name}"
    state = ckpt.load(R / "checkpoints" / "latest.pt")
    assert state["step"] == summary["steps"] > 0
    names = [e["event"] for e in _events(R)]
    assert names[-1] == "ended" and names.count("stopped") == 1, names
    interrupt = [e for e in _events(R) if e["event"] == "checkpoint" and e["reason"] == "interrupt"]
    assert [e["step"] for e in interrupt] == [summary["steps"]]
    assert not list(R.rglob("*.tmp"))
    return summary


# -- the dashboard in tmux ---------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("sig,code,where", DASHBOARD_CASES)
def test_signal_to_the_dashboard_while_paused_or_in_the_lr_dialog(tmp_path: Path, where: str,
                                                                  sig: signal.Signals, code: int) -> None:
    from test_dashboard_tmux import (DEADLINE, START_DEADLINE, Tmux, assert_terminal_restored, script,
                                     wait_file)

    R = tmp_path / "R"
    tmux = Tmux(tmp_path, script(tmp_path, "--preset", "circles", "--epochs", "400", "--run-dir", "R",
                                 pidfile=True))
    try:
        tmux.wait_text("RUNNING", START_DEADLINE)
        tmux.wait_screen(lambda s: re.search(r"total [1-9][\d,]*/", s), "steps on screen")
        pid = int((tmp_path / "pid").read_text())
        if where == "paused":
            tmux.keys("p")
            tmux.wait_text("PAUSED")
            tmux.wait_text("paused at step")
        else:
            tmux.keys("l")
            tmux.wait_text("Set the learning rate")
            tmux.type("0.5")  # typed, not applied: the signal comes first
        os.kill(pid, sig)
        assert wait_file(tmp_path / "exit", DEADLINE, tmux).strip() == f"EXIT={code}"
        assert_terminal_restored(tmux, f"EXIT={code}")
        tmux.type("stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e -echo")
        tmux.keys("Enter")
        screen = tmux.wait_screen(lambda s: re.search(r"^-?echo$", s, re.M), "stty's answer")
        assert re.search(r"^echo$", screen, re.M) and not re.search(r"^-echo$", screen, re.M), screen
    finally:
        tmux.kill()
    summary = _assert_saved_and_interrupted(R, sig)
    names = [e["event"] for e in _events(R)]
    assert "lr_changed" not in names  # the half-typed LR never reached the run
    if where == "paused":
        paused = next(e for e in _events(R) if e["event"] == "paused")
        assert paused["step"] == summary["steps"]  # nothing trained after the pause
        assert "resumed" not in names


# -- headless, paused by --on-nan pause -------------------------------------------------------------

NAN_AT_30 = '''
    import torch
    from torch import nn
    from tuitrain.presets import Data

    DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "epochs": 50, "scheduler": "none",
                "seed": 0, "device": "cpu"}


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.calls = 0

        def forward(self, x):
            out = self.lin(x)
            if self.training:
                self.calls += 1
                if self.calls == 30:
                    out = out * float("nan")
            return out


    def make_data(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(96, 2, generator=g)
        y = (x[:, 0] > 0).long()
        return Data(train=(x[:64], y[:64]), val=(x[64:], y[64:]))


    def make_model():
        return Net()
'''


@pytest.mark.parametrize("sig,code", SIGNALS, ids=IDS)
def test_signal_to_a_headless_run_paused_by_the_nan_guard(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    preset = write_preset(tmp_path, "nan30.py", NAN_AT_30)
    R = tmp_path / "R"
    proc = Proc("--preset", preset, "--headless", "--on-nan", "pause", "--run-dir", R, cwd=tmp_path,
                preexec_fn=reset_sighup)
    try:
        proc.wait_for_line(lambda line: line.startswith("paused at step"))
        proc.send(sig)
        rc, out, err = proc.finish()
    finally:
        proc.kill()
    assert rc == code, err
    assert "Traceback" not in err
    summary = _assert_saved_and_interrupted(R, sig)
    # Rolled back to the epoch-3 checkpoint (step 24) and saved there: finite weights, nothing lost.
    assert summary["steps"] == 24
    state = ckpt.load(R / "checkpoints" / "latest.pt")
    assert all(t.isfinite().all() for t in state["model_state_dict"].values())
    assert f"saved {R / 'checkpoints' / 'latest.pt'} (" in out
