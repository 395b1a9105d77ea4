"""Resuming is data in, never code chosen by the file: presets, every checkpoint field, the run's own config.

- A checkpoint names its preset, but a resumed run imports only a built-in
  by name, or the preset the user names on this command line (`--preset`,
  which must be the one the checkpoint recorded). Anything else is refused
  before anything is imported: the tests make `load_preset` fail the test
  if it is reached at all.
- Every field of a loadable checkpoint is checked (type, shape, range)
  before it is used: one line, exit 2, and the run directory's files are
  byte for byte what they were (a refused resume never rewrites summary.json).
- A checkpoint in RUN_DIR/checkpoints/latest.pt that another preset saved is
  refused: the run directory's config.json says which run it is.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuitrain.engine.checkpoint import KEYS

from cli_helpers import (snapshot, EXAMPLE, assert_usage_error, in_process, load_ckpt, read_json, train_in_process,
                         tuitrain)

TRIED = {"inputs": 0}


@pytest.fixture(scope="module")
def onecycle_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a scheduler and Adam, so scheduler and optimizer state are not empty."""
    base = tmp_path_factory.mktemp("onecycle")
    R = base / "R"
    train_in_process("--preset", "circles", "--headless", "--epochs", "2", "--max-steps", "130", "--optimizer", "adam",
                     "--scheduler", "onecycle", "--run-dir", R, cwd=base)
    return R


@pytest.fixture
def no_preset_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching the preset loader at all fails the test: the refusal must come first."""
    import tuitrain.presets

    def forbidden(spec: str) -> Any:
        raise AssertionError(f"load_preset({spec!r}) was called")

    monkeypatch.setattr(tuitrain.presets, "load_preset", forbidden)


# -- item 1: a checkpoint never chooses code ------------------------------------------------

#: What a tampered checkpoint's config.preset may name: modules, callables in them, files.
CODE_SPECS = ["os:abort", "sys:exit", "os:getcwd", "tuitrain.presets.registry:builtin_names", "json.decoder",
              "os.path", "builtins:print", "{evil}", "./evil.py", "evil.py", "/nonexistent/x.py", "circles.py",
              "Circles", " os:abort ", "pkg.mod:attr.deeper"]


def _with_preset(circles_run: Path, folder: Path, spec: str, name: str = "t.pt") -> Path:
    state = load_ckpt(circles_run / "checkpoints" / "latest.pt")
    state["config"]["preset"] = spec
    path = folder / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("spec", CODE_SPECS)
def test_a_checkpoint_naming_code_is_refused_before_anything_is_imported(
        here: Path, circles_run: Path, no_preset_import: None, spec: str) -> None:
    evil = here / "evil.py"
    evil.write_text(f"open({str(here / 'RAN')!r}, 'w')\n")
    spec = spec.replace("{evil}", str(evil))
    pt = _with_preset(circles_run, here, spec)
    before = sorted(p.name for p in here.iterdir())
    rc, out, err = in_process("--resume", pt, "--run-dir", here / "N")
    assert_usage_error(rc, err, "which is code", "only when you name it", "--preset")
    assert sorted(p.name for p in here.iterdir()) == before  # no N, no RAN
    TRIED["inputs"] += 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.one_of(
    st.from_regex(r"\A[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){0,2}:[a-z_][a-z0-9_]{0,8}\Z"),
    st.from_regex(r"\A[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){1,2}\Z"),
    st.from_regex(r"\A(/|\./|\.\./)?([a-z0-9_]{1,8}/){0,2}[a-z0-9_]{1,8}\.py\Z"),
).filter(lambda s: s.strip() not in ("circles", "moons", "spiral", "xor", "sine", "shapes", "shapes-aug", "shapes64",
                                     "charlm", "explode", "overfit")))
def test_any_module_or_path_in_a_checkpoint_is_refused_without_importing(
        here: Path, circles_run: Path, no_preset_import: None, spec: str) -> None:
    pt = _with_preset(circles_run, here, spec, name="gen.pt")
    rc, _, err = in_process("--resume", pt, "--run-dir", here / "N")
    assert_usage_error(rc, err, "which is code")
    assert not (here / "N").exists()
    TRIED["inputs"] += 1


def test_os_abort_in_a_checkpoint_is_one_line_not_sigabrt(tmp_path: Path, circles_run: Path) -> None:
    """The issue's example through the installed command: before the fix os.abort() killed tuitrain."""
    pt = _with_preset(circles_run, tmp_path, "os:abort")
    p = tuitrain("--resume", pt, "--run-dir", tmp_path / "N", cwd=tmp_path)
    assert_usage_error(p.returncode, p.stderr, "'os:abort', which is code")
    assert not (tmp_path / "N").exists()


@pytest.mark.parametrize("named", ["moons", "./other.py", "os:abort", "circles"])
def test_a_named_preset_must_be_the_one_the_checkpoint_recorded(
        here: Path, circles_run: Path, no_preset_import: None, named: str) -> None:
    (here / "other.py").write_text(f"open({str(here / 'RAN')!r}, 'w')\n")
    pt = _with_preset(circles_run, here, str(EXAMPLE))  # a file preset ...
    rc, _, err = in_process("--resume", pt, "--preset", named, "--run-dir", here / "N")  # ... and another one named
    assert_usage_error(rc, err, f"--preset {named!r} is not the preset", str(EXAMPLE))
    assert not (here / "RAN").exists() and not (here / "N").exists()


def test_the_users_own_preset_file_resumes_when_named_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--preset FILE with --resume, spelled another way than the recorded absolute path: it resumes."""
    shutil.copy(EXAMPLE, tmp_path / "mine.py")
    R = tmp_path / "R"
    p = tuitrain("--preset", "mine.py", "--headless", "--epochs", "1", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert read_json(R / "config.json")["preset"] == str(tmp_path / "mine.py")
    monkeypatch.chdir(tmp_path)
    rc, _, err = in_process("--resume", R, "--headless", "--epochs", "2")  # refused before the file is imported
    assert_usage_error(rc, err, "which is code", f"--preset {tmp_path / 'mine.py'}")
    assert read_json(R / "summary.json")["epochs"] == 1
    (tmp_path / "sub").mkdir()
    r = tuitrain("--resume", "../R", "--preset", "../mine.py", "--headless", "--epochs", "2", cwd=tmp_path / "sub")
    assert r.returncode == 0, r.stderr
    assert read_json(R / "summary.json")["epochs"] == 2


def test_detach_hands_the_users_preset_to_the_background_resume(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`d` / --on-hangup detach resume in the background: that command line names the run's preset."""
    from tuitrain.tui import detach

    seen: list[list[str]] = []
    monkeypatch.setattr(detach, "spawn", lambda args, run_dir: seen.append(list(args)) or object())
    monkeypatch.setattr(detach, "wait_started", lambda proc, run_dir: detach.Started(123, "serving"))
    assert detach.continue_in_background(tmp_path, to_terminal=False, preset="/abs/mine.py") == 0
    assert seen == [["--resume", str(tmp_path), "--for-watchers", "--preset", "/abs/mine.py"]]


# -- item 6: every field checked ----------------------------------------------------------

def _set(path: str, value: Any) -> Any:
    """A change to a checkpoint: the key path (joined with /) set to value."""
    def change(state: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = state
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return change


BAD_FIELDS: list[tuple[str, Any]] = [
    ("rng", {}), ("rng", []), ("rng/torch", torch.zeros(3)), ("rng/torch", torch.zeros(7, dtype=torch.uint8)),
    ("rng/python", torch.zeros(3, dtype=torch.int64)), ("rng/python_version", "x"), ("rng/cuda", "x"),
    ("rng/python_gauss", "x"), ("epoch_totals", {}), ("epoch_totals/steps", -1), ("epoch_totals/samples", "x"),
    ("epoch_totals/correct", torch.zeros(2)), ("epoch_totals/loss_partials", ["a"]),
    ("epoch_totals/loss_partials", "abc"), ("step", "abc"), ("step", -1), ("step", 2**63), ("step", 1.5),
    ("step", True), ("epoch", -1), ("epoch", None), ("batch_in_epoch", 10**6), ("batch_in_epoch", -3),
    ("lr_multiplier", 0), ("lr_multiplier", -1.0), ("lr_multiplier", math.nan), ("lr_multiplier", math.inf),
    ("lr_multiplier", "1"), ("best_val_loss", math.nan), ("best_val_loss", "low"), ("best_val_loss", -math.inf),
    ("best_epoch", -2), ("best_epoch", 99), ("best_epoch", "1"), ("early_stop_counter", -1),
    ("early_stop_counter", [1]), ("model_state_dict", []), ("model_state_dict/0.weight", 1),
    ("model_state_dict/0.weight", torch.zeros(7, 3)), ("optimizer_state_dict", {}),
    ("optimizer_state_dict", {"state": {}, "param_groups": []}), ("optimizer_state_dict/param_groups/0/lr", "abc"),
    ("optimizer_state_dict/param_groups/0/lr", math.nan), ("optimizer_state_dict/param_groups/0/params", "x"),
    ("optimizer_state_dict/param_groups/0/betas", (0.9,)), ("scheduler_state_dict", [1]),
    ("scheduler_state_dict", {"x": 1}), ("scaler_state_dict", "x"), ("scaler_state_dict", {"scale": "big"}),
    ("config", []), ("config/epochs", "5"), ("config/nesterov", "yes"), ("config/amp", 3), ("config/lr", -1),
    ("config/bogus", 1), ("preset", 5), ("preset", ""), ("preset", "x" * 5000), ("format", 1),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={str(v)[:20]}" for f, v in BAD_FIELDS])
def test_a_bad_field_is_one_line_and_the_run_directory_is_untouched(
        here: Path, circles_run: Path, field: str, value: Any) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    state = load_ckpt(R / "checkpoints" / "latest.pt")
    _set(field, value)(state)
    torch.save(state, R / "checkpoints" / "latest.pt")
    before = snapshot(R)
    rc, out, err = in_process("--resume", R, "--epochs", "3")
    assert_usage_error(rc, err)
    assert "the preset failed" not in err
    assert snapshot(R) == before  # summary.json still says finished; no error.txt
    assert read_json(R / "summary.json")["status"] == "finished"
    TRIED["inputs"] += 1


ONECYCLE_BAD: list[tuple[str, Any]] = [
    ("scheduler_state_dict", {}), ("scheduler_state_dict/last_epoch", "x"),
    ("scheduler_state_dict/base_lrs", [0.1, 0.2]), ("scheduler_state_dict/total_steps", 1.5),
    ("scheduler_state_dict/bogus", 1), ("scheduler_state_dict/_last_lr", "x"),
    ("optimizer_state_dict/state/0/exp_avg", torch.zeros(5)), ("optimizer_state_dict/state/0/step", "x"),
    ("optimizer_state_dict/state/99", {"step": torch.tensor(1.0)}),
    ("optimizer_state_dict/param_groups/0/weight_decay", "heavy"),
]


@pytest.mark.parametrize("field,value", ONECYCLE_BAD, ids=[f"{f}={str(v)[:20]}" for f, v in ONECYCLE_BAD])
def test_scheduler_and_optimizer_state_must_fit_the_run(here: Path, onecycle_run: Path, field: str, value: Any) -> None:
    R = here / "R"
    shutil.copytree(onecycle_run, R)
    state = load_ckpt(R / "checkpoints" / "latest.pt")
    if field.startswith("optimizer_state_dict/state/"):
        parts = field.split("/")
        per_param = state["optimizer_state_dict"]["state"].setdefault(int(parts[2]), {})
        if len(parts) == 3:
            state["optimizer_state_dict"]["state"][int(parts[2])] = value
        else:
            per_param[parts[3]] = value
    else:
        _set(field, value)(state)
    torch.save(state, R / "checkpoints" / "latest.pt")
    before = snapshot(R)
    rc, _, err = in_process("--resume", R, "--max-steps", "200")
    assert_usage_error(rc, err)
    assert "the preset failed" not in err
    assert snapshot(R) == before
    TRIED["inputs"] += 1


JUNK = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
                 st.builds(torch.zeros, st.integers(0, 4)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(KEYS - {"format", "version"})), value=JUNK)
def test_any_value_in_any_field_fits_or_is_a_checkpoint_error(circles_run: Path, tmp_path: Path,
                                                               field: str, value: Any) -> None:
    """The class, not the examples: a generated value in a random field never raises anything but
    CheckpointError / ConfigError while the run is built (a traceback otherwise)."""
    from tuitrain.engine import checkpoint as ckpt
    from tuitrain.engine.config import ConfigError, RunConfig
    from tuitrain.engine.trainer import Trainer
    from tuitrain.presets import load_preset

    state = load_ckpt(circles_run / "checkpoints" / "latest.pt")
    state[field] = value
    TRIED["inputs"] += 1
    try:
        ckpt.validate(state)
        cfg = RunConfig.from_dict(state["config"])
        Trainer(cfg.replace(device="cpu"), load_preset("circles"), tmp_path / "unused", resume=state)
    except (ckpt.CheckpointError, ConfigError):
        pass
    assert not (tmp_path / "unused").exists()  # building never writes


# -- item 16: the run directory's own checkpoint --------------------------------------------

@pytest.mark.parametrize("other", ["moons", "xor", "spiral", "sine", "overfit"])
def test_another_presets_checkpoint_as_latest_is_refused(here: Path, circles_run: Path, other: str) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    state = load_ckpt(R / "checkpoints" / "latest.pt")
    state["config"]["preset"] = other
    state["preset"] = other
    torch.save(state, R / "checkpoints" / "latest.pt")
    before = snapshot(R)
    rc, _, err = in_process("--resume", R, "--epochs", "3")
    assert_usage_error(rc, err, "belongs to another run", f"preset {other!r}", "'circles'")
    assert snapshot(R) == before
    TRIED["inputs"] += 1


@pytest.mark.parametrize("config", ["{", "[]", '{"epochs": 3}', '{"preset": 7}', "\xff"])
def test_a_run_directory_whose_config_is_garbled_is_not_resumed(here: Path, circles_run: Path, config: str) -> None:
    R = here / "R"
    shutil.copytree(circles_run, R)
    (R / "config.json").write_bytes(config.encode("latin-1"))
    before = snapshot(R)
    rc, _, err = in_process("--resume", R, "--epochs", "3")
    assert_usage_error(rc, err, str(R / "config.json"))
    assert snapshot(R) == before
    TRIED["inputs"] += 1


def test_report_how_many_resume_inputs_were_tried() -> None:
    print(f"\nresume inputs tried: {TRIED['inputs']}")
    assert TRIED["inputs"] == 0 or TRIED["inputs"] >= 50
