"""The user's code fails mid-run: the model's forward, the dataset's __getitem__, the loss; NaN in the data.

What the user is left with: status FAILED, the traceback shown (stderr
headless, the event log in the dashboard) and in error.txt, the last good
checkpoint kept and loadable, exit 1 (at once headless, after `q` in the
dashboard), and the terminal given back in a usable state.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from cli_helpers import metrics, read_json, train_in_process, tuitrain, write_preset
from conftest import SLOW

from tuitrain.engine import checkpoint as ckpt

#: A map-style Dataset served by a DataLoader (not the tensor fast path); 64
#: samples at batch 8: 8 steps an epoch. FAIL_IN names where step 12 (epoch 2) raises.
FAILING = '''
    import torch
    from torch import nn
    from torch.utils.data import Dataset
    from tuitrain.presets import Data

    FAIL_IN = {where!r}
    FAIL_AT = 12  # the optimizer step that fails (epoch 2; epoch 1 has saved latest.pt)
    DEFAULTS = {{"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "epochs": 4, "scheduler": "none",
                "seed": 0, "device": "cpu"}}
    calls = {{"forward": 0, "loss": 0, "item": 0}}


    class Points(Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 2, generator=g)
            self.y = (self.x[:, 0] > 0).long()
            self.train = n == 64

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            if self.train:
                calls["item"] += 1
                if FAIL_IN == "dataset" and calls["item"] == (FAIL_AT - 1) * 8 + 1:
                    raise KeyError(f"sample {{i}} is missing from the user's dataset")
            return self.x[i], self.y[i]


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            if self.training:
                calls["forward"] += 1
                if FAIL_IN == "model" and calls["forward"] == FAIL_AT:
                    raise RuntimeError("the user's forward broke")
            return self.lin(x)


    class Loss(nn.Module):
        def forward(self, out, y):
            if torch.is_grad_enabled():
                calls["loss"] += 1
                if FAIL_IN == "loss" and calls["loss"] == FAIL_AT:
                    raise ValueError("the user's loss broke")
            return nn.functional.cross_entropy(out, y)


    def make_data(seed):
        return Data(train=Points(64, seed), val=Points(32, seed + 1))


    def make_model():
        return Net()


    def make_loss():
        return Loss()
'''

CASES = {
    "model": ("RuntimeError: the user's forward broke", 'raise RuntimeError("the user\'s forward broke")'),
    "dataset": ("KeyError: \"sample", "raise KeyError(f\"sample {i} is missing from the user's dataset\")"),
    "loss": ("ValueError: the user's loss broke", 'raise ValueError("the user\'s loss broke")'),
}


@pytest.mark.parametrize("where", sorted(CASES))
def test_user_code_raising_mid_run_headless_fails_with_its_line_and_keeps_the_checkpoint(
        tmp_path: Path, where: str) -> None:
    error, source_line = CASES[where]
    preset = write_preset(tmp_path, f"fail_{where}.py", FAILING.format(where=where))
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback (most recent call last)" not in p.stderr  # bounded: the traceback is in error.txt
    line_no = next(i for i, line in enumerate(preset.read_text().splitlines(), 1) if source_line in line)
    assert f"{preset}:{line_no}" in p.stderr, p.stderr  # the user's own line, in their file
    assert error in p.stderr
    assert p.stderr.splitlines()[-1].startswith("error: ") and f"(details in {R}/error.txt)" in p.stderr
    text = (R / "error.txt").read_text()
    assert text.startswith("Traceback") and error in text and str(preset) in text and source_line in text
    summary = read_json(R / "summary.json")
    assert summary["status"] == "failed" and error.split(":")[0] in summary["reason"]
    assert summary["steps"] == 11  # step 12 never happened
    state = ckpt.load(R / "checkpoints" / "latest.pt")  # the last good checkpoint: epoch 1
    assert (state["step"], state["epoch"]) == (8, 1)
    assert [r["step"] for r in metrics(R) if r["kind"] == "step"] == list(range(1, 12))
    names = [r["event"] for r in metrics(R) if r.get("kind") == "event"]
    assert names.count("error") == 1 and names[-1] == "ended"
    assert not list(R.rglob("*.tmp"))
    if where != "model" and not SLOW:
        return  # the resume below is the same checkpoint contract for every case: one in the default run
    # The kept checkpoint resumes (with the bug fixed, the run would go on from epoch 1).
    fixed = write_preset(tmp_path, f"fail_{where}.py", FAILING.format(where="nowhere"))
    assert fixed == preset
    out, _ = train_in_process("--resume", R, "--preset", preset, "--headless", cwd=tmp_path)
    assert out.startswith("tuitrain: resuming at step 8 ")
    assert read_json(R / "summary.json")["steps"] == 32


# -- NaN in the data --------------------------------------------------------------------------

NAN_DATA = '''
    import torch
    from torch import nn
    from tuitrain.presets import Data

    DEFAULTS = {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "epochs": 3, "scheduler": "none",
                "seed": 0, "device": "cpu"}


    def make_data(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(96, 2, generator=g)
        y = (x[:, 0] > 0).long()
        x[5, 1] = float("nan")  # one bad value in the training inputs
        x[40, 0] = float("inf")
        return Data(train=(x[:64], y[:64]), val=(x[64:], y[64:]))


    def make_model():
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
'''


def test_nan_in_the_input_data_stops_with_a_reason_that_points_at_the_data(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "nandata.py", NAN_DATA)
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    summary = read_json(R / "summary.json")
    assert summary["status"] == "failed"
    reason = summary["reason"]
    assert re.search(r"training loss became non-finite at step \d+ \(--on-nan stop\)", reason), reason
    # Not only "the loss went NaN" (which reads like a learning-rate problem): the data is named.
    assert "the training inputs hold 2 non-finite values (1 NaN, 1 Inf)" in reason, reason
    assert reason in p.stderr
    assert not list(R.rglob("*.tmp"))
    # No checkpoint of NaN weights was ever written.
    for pt in (R / "checkpoints").glob("*.pt"):
        state = ckpt.load(pt)
        assert all(t.isfinite().all() for t in state["model_state_dict"].values())


def test_nan_in_the_input_data_with_on_nan_skip_finishes_on_finite_weights(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "nandata.py", NAN_DATA)
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--run-dir", R, "--on-nan", "skip", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = read_json(R / "summary.json")
    assert summary["status"] == "finished"
    skipped = [r for r in metrics(R) if r.get("event") == "nan"]
    assert skipped and all(r["action"] == "skip" for r in skipped)
    assert sum(r["count"] for r in skipped) == 6  # two bad batches an epoch, three epochs
    state = ckpt.load(R / "checkpoints" / "latest.pt")
    assert state["step"] == summary["steps"] == 3 * 8 - 6
    assert all(t.isfinite().all() for t in state["model_state_dict"].values())


# -- the dashboard, in a real terminal -----------------------------------------------------------

@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.skipif(sys.platform != "linux", reason="a real terminal")
def test_dataset_raising_in_the_dashboard_shows_failed_and_q_exits_1_with_the_terminal_restored(
        tmp_path: Path) -> None:
    from test_dashboard_tmux import START_DEADLINE, Tmux, assert_terminal_restored, script, wait_file

    preset = write_preset(tmp_path, "fail_dataset.py", FAILING.format(where="dataset"))
    R = tmp_path / "R"
    tmux = Tmux(tmp_path, script(tmp_path, "--preset", str(preset), "--run-dir", "R"))
    try:
        tmux.wait_text("FAILED", START_DEADLINE)
        screen = tmux.wait_text("press q to quit")
        # The traceback's end is on screen: the user's file and line, and the error.
        assert 'fail_dataset.py", line' in screen and "raise KeyError(" in screen, screen
        assert "failed: KeyError: \"sample" in screen, screen
        assert not (tmp_path / "exit").exists()  # the dashboard stays open on the failure
        tmux.keys("q")
        assert wait_file(tmp_path / "exit", 30, tmux).strip() == "EXIT=1"
        assert_terminal_restored(tmux, "EXIT=1")
        tmux.type("stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e -echo -e icanon -e -icanon")
        tmux.keys("Enter")
        screen = tmux.wait_screen(lambda s: re.search(r"^-?icanon$", s, re.M), "stty's answer")
        assert re.search(r"^echo$", screen, re.M) and re.search(r"^icanon$", screen, re.M), screen
        assert not re.search(r"^-echo$|^-icanon$", screen, re.M), screen
        # No escape sequence leaked as text (mouse reports, cursor keys, colour codes).
        assert not re.search(r"\x1b|\^\[|\[\?1[0-9]{3}[hl]|\[<\d+;\d+;\d+[Mm]|\[\d+;\d+R", screen), screen
    finally:
        tmux.kill()
    assert "KeyError" in (R / "error.txt").read_text()
    assert read_json(R / "summary.json")["status"] == "failed"
    assert ckpt.load(R / "checkpoints" / "latest.pt")["step"] == 8
