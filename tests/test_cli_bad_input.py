"""Bad usage or input: one line 'tuitrain: error: ...' on stderr, exit 2, nothing created.

Most cases call tuitrain.tui.cli.main() in this process (no interpreter start,
no torch import); a few representative ones run the installed command.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import (train_in_process, snapshot, CIRCLES_STEPS_PER_EPOCH, assert_usage_error, in_process, load_ckpt, read_json,
                         tuitrain, write_preset)

KNOWN = "known: circles, moons, spiral, xor, sine"
FUZZ = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- in process: one case each --------------------------------------------------------

BAD_OVERRIDES = [
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr: expected a finite number, got 'nan'"),
    (["--lr", "inf"], "--lr: expected a finite number, got 'inf'"),
    (["--lr", "abc"], "--lr: expected a number, got 'abc'"),
    (["--lr", ""], "--lr: expected a number, got ''"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--batch-size", "-3"], "--batch-size must be a positive integer, got -3"),
    (["--batch-size", "2.5"], "--batch-size: expected an integer, got '2.5'"),
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--accumulate", "0"], "--accumulate must be a positive integer, got 0"),
    (["--grad-clip", "-1"], "--grad-clip must be zero or positive, got -1"),
    (["--optimizer", "foo"], "--optimizer: invalid choice: 'foo'"),
    (["--scheduler", "foo"], "--scheduler: invalid choice: 'foo'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--seed", "-1"], "--seed must be between 0 and 2**63-1, got -1"),
    (["--seed", str(2**63)], "--seed must be between 0 and 2**63-1"),
    (["--max-steps", "-1"], "--max-steps must be zero or a positive integer, got -1"),
    (["--patience", "-1"], "--patience must be zero or a positive integer, got -1"),
    (["--nesterov"], "--nesterov only applies to --optimizer sgd"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--resume", "elsewhere"], "--resume: no such run directory or checkpoint: elsewhere"),
]


@pytest.mark.parametrize("extra,message", BAD_OVERRIDES, ids=[" ".join(a) or "empty" for a, _ in BAD_OVERRIDES])
def test_bad_override_is_a_one_line_usage_error(here: Path, extra: list[str], message: str) -> None:
    target = here / "R"
    rc, out, err = in_process("--preset", "circles", "--headless", *extra, "--run-dir", target)
    assert_usage_error(rc, err, message)
    assert out == ""
    assert list(here.iterdir()) == []  # neither R nor runs/


def test_bad_value_without_run_dir_creates_no_runs_folder(here: Path) -> None:
    rc, _, err = in_process("--preset", "circles", "--epochs", "0")
    assert_usage_error(rc, err, "--epochs")
    assert list(here.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu(here: Path) -> None:
    rc, _, err = in_process("--preset", "circles", "--device", "cuda", "--run-dir", here / "R")
    assert_usage_error(rc, err, "--device cuda: CUDA is not available on this machine")
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    ([], "nothing to run: give --preset NAME"),
    (["--headless"], "nothing to run"),
    (["--preset", "nope"], f"unknown preset 'nope' ({KNOWN}"),
    (["--preset", "missing.py"], "preset file not found: missing.py"),
    (["--preset", "no_such_pkg_xyz.mod:attr"], "module not found: 'no_such_pkg_xyz.mod'"),
    (["--preset", "os.path:nothing_here"], "module 'os.path' has no attribute 'nothing_here'"),
])
def test_what_to_run_errors(here: Path, args: list[str], message: str) -> None:
    rc, _, err = in_process(*args, "--run-dir", here / "R")
    assert_usage_error(rc, err, message)
    assert list(here.iterdir()) == []


def test_preset_file_with_a_syntax_error_names_file_and_line(here: Path) -> None:
    path = write_preset(here, "broken.py", """
        import torch

        def make_model(:
            pass
    """)
    rc, _, err = in_process("--preset", path, "--run-dir", here / "R")
    assert_usage_error(rc, err, f"{path}:3: syntax error")
    assert sorted(p.name for p in here.iterdir()) == ["broken.py"]


def test_preset_file_that_raises_on_import_names_file_and_line(here: Path) -> None:
    path = write_preset(here, "raises.py", """
        X = 1
        Y = 1 / 0
    """)
    rc, _, err = in_process("--preset", path, "--run-dir", here / "R")
    assert_usage_error(rc, err, f"{path}:2: ZeroDivisionError: division by zero")
    assert sorted(p.name for p in here.iterdir()) == ["raises.py"]


def test_preset_file_that_defines_nothing_usable(here: Path) -> None:
    path = write_preset(here, "empty.py", "X = 1\n")
    rc, _, err = in_process("--preset", path, "--run-dir", here / "R")
    assert_usage_error(rc, err, f"{path} defines no PRESET and no make_data/make_model")
    assert sorted(p.name for p in here.iterdir()) == ["empty.py"]


def test_run_dir_below_a_regular_file(here: Path) -> None:
    (here / "afile").write_text("not a folder")
    rc, _, err = in_process("--preset", "circles", "--run-dir", here / "afile" / "run")
    assert_usage_error(rc, err, f"cannot write the run directory {here / 'afile' / 'run'}: Not a directory")
    assert sorted(p.name for p in here.iterdir()) == ["afile"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_run_dir_in_a_read_only_folder(here: Path) -> None:
    ro = here / "ro"
    ro.mkdir(mode=0o500)
    try:
        rc, _, err = in_process("--preset", "circles", "--run-dir", ro / "run")
        assert_usage_error(rc, err, f"cannot write the run directory {ro / 'run'}")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_run_dir_that_already_holds_a_run_is_left_alone(here: Path, circles_run: Path) -> None:
    before = snapshot(circles_run)
    rc, _, err = in_process("--preset", "circles", "--run-dir", circles_run)
    assert_usage_error(rc, err, f"{circles_run} already holds a run; use --resume {circles_run}")
    assert snapshot(circles_run) == before


# -- --resume ---------------------------------------------------------------------------

def test_resume_missing_path(here: Path) -> None:
    rc, _, err = in_process("--resume", here / "nothing")
    assert_usage_error(rc, err, f"--resume: no such run directory or checkpoint: {here / 'nothing'}")
    assert list(here.iterdir()) == []


def test_resume_folder_without_checkpoint(here: Path) -> None:
    (here / "R").mkdir()
    rc, _, err = in_process("--resume", here / "R")
    assert_usage_error(rc, err, "no checkpoint to resume in", "latest.pt is missing")
    assert [p.name for p in here.rglob("*")] == ["R"]


def test_resume_empty_file(here: Path) -> None:
    (here / "empty.pt").write_bytes(b"")
    rc, _, err = in_process("--resume", here / "empty.pt", "--run-dir", here / "N")
    assert_usage_error(rc, err, f"checkpoint is empty: {here / 'empty.pt'}")
    assert sorted(p.name for p in here.iterdir()) == ["empty.pt"]


def test_resume_truncated_checkpoint(here: Path, circles_run: Path) -> None:
    data = (circles_run / "checkpoints" / "latest.pt").read_bytes()
    (here / "cut.pt").write_bytes(data[: len(data) // 2])
    rc, _, err = in_process("--resume", here / "cut.pt", "--run-dir", here / "N")
    assert_usage_error(rc, err, f"cannot read checkpoint {here / 'cut.pt'}")
    assert sorted(p.name for p in here.iterdir()) == ["cut.pt"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resume_random_bytes(here: Path, seed: int) -> None:
    (here / "noise.pt").write_bytes(random.Random(seed).randbytes(4096))
    rc, _, err = in_process("--resume", here / "noise.pt", "--run-dir", here / "N")
    assert_usage_error(rc, err, str(here / "noise.pt"))
    assert sorted(p.name for p in here.iterdir()) == ["noise.pt"]


def test_resume_random_bytes_is_not_called_a_pickle(here: Path) -> None:
    (here / "noise.pt").write_bytes(random.Random(0).randbytes(4096))
    rc, _, err = in_process("--resume", here / "noise.pt", "--run-dir", here / "N")
    line = assert_usage_error(rc, err, f"cannot read checkpoint {here / 'noise.pt'}")
    assert "pickled" not in line


class _Plant:
    """Unpickling this creates a marker file: proof that a load ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def test_resume_refuses_pickled_objects_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    torch.save({"format": "tuitrain-checkpoint", "version": 1, "payload": _Plant(str(marker))},
               tmp_path / "evil.pt")
    assert not marker.exists()
    p = tuitrain("--resume", tmp_path / "evil.pt", "--run-dir", tmp_path / "N", cwd=tmp_path)
    assert_usage_error(p.returncode, p.stderr, f"refusing to load {tmp_path / 'evil.pt'}", "pickled Python objects")
    assert not marker.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["evil.pt"]
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the test can fail: a full unpickle plants it
    assert marker.exists()


def test_resume_a_dict_that_is_not_a_tuitrain_checkpoint(here: Path) -> None:
    torch.save({"model": torch.zeros(2)}, here / "other.pt")
    rc, _, err = in_process("--resume", here / "other.pt", "--run-dir", here / "N")
    assert_usage_error(rc, err, f"{here / 'other.pt'} is not a tuitrain checkpoint")
    assert sorted(p.name for p in here.iterdir()) == ["other.pt"]


def test_resume_checkpoint_with_wrong_shapes_does_not_fit(here: Path, circles_run: Path) -> None:
    state = load_ckpt(circles_run / "checkpoints" / "latest.pt")
    state["model_state_dict"]["0.weight"] = torch.zeros(7, 3)
    torch.save(state, here / "misfit.pt")
    rc, _, err = in_process("--resume", here / "misfit.pt", "--run-dir", here / "N")
    assert_usage_error(rc, err, "does not fit", "size mismatch for 0.weight")
    assert sorted(p.name for p in here.iterdir()) == ["misfit.pt"]


def test_resume_run_dir_whose_checkpoint_does_not_fit_leaves_the_run_untouched(
        here: Path, circles_run: Path) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    state = load_ckpt(R / "checkpoints" / "latest.pt")
    state["model_state_dict"]["0.bias"] = torch.zeros(5)
    torch.save(state, R / "checkpoints" / "latest.pt")
    before = snapshot(R)
    rc, _, err = in_process("--resume", R, "--max-steps", "1000")
    assert_usage_error(rc, err, "the checkpoint does not fit the model of preset 'circles'")
    assert snapshot(R) == before


def test_resume_checkpoint_from_another_preset(here: Path, circles_run: Path) -> None:
    state = load_ckpt(circles_run / "checkpoints" / "latest.pt")
    state["preset"] = "spiral"
    torch.save(state, here / "renamed.pt")
    rc, _, err = in_process("--resume", here / "renamed.pt", "--run-dir", here / "N")
    assert_usage_error(rc, err, "the checkpoint was saved by preset 'spiral'")
    assert sorted(p.name for p in here.iterdir()) == ["renamed.pt"]


@pytest.mark.parametrize("extra,message", [
    (["--lr", "0.1"], "--lr cannot be changed when resuming"),
    (["--batch-size", "8", "--seed", "3"], "--batch-size, --seed cannot be changed when resuming"),
    (["--run-dir", "elsewhere"], "--run-dir cannot be used when resuming a run directory"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_resume_with_a_forbidden_or_bad_override(here: Path, circles_run: Path, extra: list[str],
                                                 message: str) -> None:
    before = snapshot(circles_run)
    rc, _, err = in_process("--resume", circles_run, *extra)
    assert_usage_error(rc, err, message)
    assert snapshot(circles_run) == before
    assert list(here.iterdir()) == []


def test_resume_cannot_stretch_a_cosine_plan(here: Path, circles_run: Path) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    state = load_ckpt(R / "checkpoints" / "latest.pt")
    state["config"]["scheduler"] = "cosine"
    torch.save(state, R / "checkpoints" / "latest.pt")
    before = snapshot(R)
    rc, _, err = in_process("--resume", R, "--epochs", "5")
    assert_usage_error(rc, err, "--epochs cannot change on resume with --scheduler cosine")
    assert snapshot(R) == before


# -- junk values, generated ---------------------------------------------------------------

def _int_ok(text: str, lo: int, hi: float = math.inf) -> bool:
    try:
        value = int(text)
    except ValueError:
        return False
    return lo <= value < hi


def _float_ok(text: str, positive: bool) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and (value > 0 if positive else value >= 0)


#: flag -> "is this text a valid value?"  (--warmup is left out: its message lacks the "--", see below)
VALID = {
    "--epochs": lambda s: _int_ok(s, 1),
    "--batch-size": lambda s: _int_ok(s, 1),
    "--accumulate": lambda s: _int_ok(s, 1),
    "--max-steps": lambda s: _int_ok(s, 1),
    "--threads": lambda s: _int_ok(s, 1),
    "--patience": lambda s: _int_ok(s, 0),
    "--num-workers": lambda s: _int_ok(s, 0),
    "--seed": lambda s: _int_ok(s, 0, 2**63),
    "--lr": lambda s: _float_ok(s, positive=True),
    "--grad-clip": lambda s: _float_ok(s, positive=False),
    "--weight-decay": lambda s: _float_ok(s, positive=False),
    "--momentum": lambda s: _float_ok(s, positive=False),
}

candidates = st.one_of(
    st.text(max_size=12),
    st.integers(max_value=0).map(str),
    st.integers(min_value=2**62).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "Infinity", "1e999", "-0.0", "0x10", "1,5", "one", " ", "--"]),
)


@FUZZ
@given(flag=st.sampled_from(sorted(VALID)), junk=candidates, joined=st.booleans())
def test_junk_numeric_values_are_one_line_usage_errors(here: Path, flag: str, junk: str, joined: bool) -> None:
    if VALID[flag](junk) or "\x00" in junk:
        return  # a valid value (or one no shell can pass): nothing to check here
    value = [f"{flag}={junk}"] if joined else [flag, junk]
    rc, out, err = in_process("--preset", "circles", *value, "--run-dir", here / "R")
    assert_usage_error(rc, err, flag)
    assert out == ""
    assert list(here.iterdir()) == []


def _usable_device(text: str) -> bool:
    t = text.strip().lower()
    return t.startswith(("cpu", "cuda", "mps", "auto"))


@FUZZ
@given(device=st.text(max_size=12).filter(lambda s: not _usable_device(s) and "\x00" not in s))
def test_junk_device_is_a_one_line_usage_error(here: Path, device: str) -> None:
    rc, out, err = in_process("--preset", "circles", f"--device={device}", "--run-dir", here / "R")
    assert_usage_error(rc, err, "device")
    assert list(here.iterdir()) == []


# -- subprocess: the same contract for the installed command --------------------------------

@pytest.mark.parametrize("args,message", [
    (["--preset", "nope", "--headless"], f"unknown preset 'nope' ({KNOWN}"),
    (["--preset", "circles", "--lr", "nan"], "--lr: expected a finite number, got 'nan'"),
    (["--preset", "circles", "--batch-size", "0", "--device", "cpu"], "--batch-size must be a positive integer"),
])
def test_installed_command_reports_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    p = tuitrain(*args, "--run-dir", tmp_path / "R", cwd=tmp_path)
    assert_usage_error(p.returncode, p.stderr, message)
    assert p.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_installed_command_syntax_error_in_preset_file(tmp_path: Path) -> None:
    path = write_preset(tmp_path, "typo.py", """
        from torch import nn

        def make_model():
            return nn.Linear(2, 2
    """)
    p = tuitrain("--preset", path, "--headless", cwd=tmp_path)
    line = assert_usage_error(p.returncode, p.stderr, f"{path}:4: syntax error")
    assert line == f"tuitrain: error: {path}:4: syntax error: '(' was never closed"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["typo.py"]


# -- bugs found (xfail, strict: each turns into a failure once fixed) ------------------------

def test_resume_checkpoint_file_without_run_dir_starts_a_new_default_run(tmp_path: Path, circles_run: Path) -> None:
    shutil.copy(circles_run / "checkpoints" / "latest.pt", tmp_path / "start.pt")
    train_in_process("--resume", tmp_path / "start.pt", "--epochs", "2", "--headless", cwd=tmp_path)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("circles-")
    summary = read_json(runs[0] / "summary.json")
    assert (summary["status"], summary["steps"]) == ("finished", 2 * CIRCLES_STEPS_PER_EPOCH)


def test_unfit_checkpoint_leaves_no_folders_behind(here: Path, circles_run: Path) -> None:
    state = load_ckpt(circles_run / "checkpoints" / "latest.pt")
    state["model_state_dict"]["0.weight"] = torch.zeros(7, 3)
    torch.save(state, here / "misfit.pt")
    rc, _, err = in_process("--resume", here / "misfit.pt", "--run-dir", here / "new" / "run")
    assert_usage_error(rc, err, "does not fit")
    assert sorted(p.name for p in here.iterdir()) == ["misfit.pt"]


def test_threads_out_of_range_is_a_usage_error(here: Path) -> None:
    rc, _, err = in_process("--preset", "circles", "--threads", str(10**20), "--run-dir", here / "R")
    assert_usage_error(rc, err, "--threads")
    assert list(here.iterdir()) == []


def test_empty_run_dir_is_a_usage_error(here: Path) -> None:
    rc, _, err = in_process("--preset", "circles", "--max-steps", "1", "--run-dir", "")
    assert_usage_error(rc, err, "--run-dir")
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["--preset", "no\nsuch.py"],
    ["--resume", "no\nsuch"],
    ["--preset", "circles", "--run-dir", "afile/x\ny"],
])
def test_newline_in_a_path_still_gives_one_line(here: Path, args: list[str]) -> None:
    (here / "afile").write_text("")
    rc, _, err = in_process(*args)
    assert_usage_error(rc, err)


def test_bad_warmup_message_names_the_flag(here: Path) -> None:
    rc, _, err = in_process("--preset", "circles", "--warmup", "-1", "--run-dir", here / "R")
    assert_usage_error(rc, err, "--warmup")


# -- a preset file's data, checked once at start --------------------------------------

BAD_DATA = [
    ("return (x, y), (x, y)",
     "make_data(seed) returned a tuple, not tuitrain.presets.Data: return Data(train=(inputs, targets), "
     "val=(inputs, targets))"),
    ("return Data(train=(x, y.float()), val=(x, y))",
     "make_data(seed): the train split's targets are float32, but classification needs integer class indices "
     "(int64): use y.long(), or TASK = 'regression' for numeric targets"),
    ("return Data(train=(x, y), val=(x, y[:20]))",
     "make_data(seed): the val split has 64 inputs but 20 targets: one target per input"),
    ("return Data(train=(x, y, y), val=(x, y))",
     "make_data(seed): the train split must be a pair of tensors (inputs, targets) or a map-style torch Dataset, "
     "got tuple of 3 items"),
]


@pytest.mark.parametrize("body, message", BAD_DATA, ids=["tuple", "float-labels", "lengths", "triple"])
def test_a_preset_whose_data_is_wrong_gets_one_line_with_its_file_and_line(
        here: Path, body: str, message: str) -> None:
    path = write_preset(here, "mine.py", f"""
        import torch
        from torch import nn
        from torch.utils.data import Dataset
        from tuitrain.presets import Data

        TASK = "classification"


        class Pairs(Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                return torch.zeros(2)


        def make_data(seed):
            x = torch.randn(64, 2)
            y = (x[:, 0] > 0).long()
            {body}


        def make_model():
            return nn.Linear(2, 2)
    """)
    rc, _, err = in_process("--preset", path, "--headless", "--run-dir", here / "R")
    assert_usage_error(rc, err, f"{path}:17: {message} (preset 'mine')")
    assert sorted(p.name for p in here.iterdir()) == ["mine.py"]  # no run directory


def test_float_targets_are_fine_for_regression(here: Path) -> None:
    path = write_preset(here, "reg.py", """
        import torch
        from torch import nn
        from tuitrain.presets import Data

        TASK = "regression"


        def make_data(seed):
            x = torch.randn(64, 1)
            return Data(train=(x, 2 * x), val=(x, 2 * x))


        def make_model():
            return nn.Linear(1, 1)
    """)
    rc, out, err = in_process("--preset", path, "--headless", "--max-steps", "3", "--run-dir", here / "R")
    assert rc == 0, err


def test_resuming_a_onecycle_run_past_the_plan_its_max_steps_fixed_is_one_line(here: Path) -> None:
    """It used to crash with torch's ValueError (a traceback, exit 1) while drawing the LR preview."""
    rc, out, err = in_process("--preset", "circles", "--headless", "--scheduler", "onecycle", "--epochs", "2",
                              "--max-steps", "20", "--run-dir", here / "R")
    assert rc == 0, err
    rc, out, err = in_process("--resume", here / "R", "--max-steps", "0", "--headless")
    assert_usage_error(rc, err, "--scheduler onecycle planned this run's LR for 20 steps",
                       "resume with --max-steps 20 at most")
    assert read_json(here / "R" / "summary.json")["steps"] == 20, "the run is left as it was"
