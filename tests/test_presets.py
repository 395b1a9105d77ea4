"""Built-in presets build and learn; the loader resolves specs and explains failures in one line."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tuitrain.presets import (
    BUILTIN,
    Data,
    Preset,
    PresetError,
    builtin_names,
    load_preset,
    preset_name_for_rundir,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_experiment.py"
ALLOWED_DEFAULTS = {"epochs", "lr", "batch_size", "optimizer", "weight_decay", "scheduler", "patience",
                    "momentum", "nesterov", "warmup", "grad_clip"}
OPTIMIZERS = {"sgd", "adam", "adamw", "rmsprop"}
SCHEDULERS = {"none", "step", "cosine", "onecycle", "plateau", "warmup-cosine"}
UNKNOWN = (
    "unknown preset 'foo' (known: circles, moons, spiral, xor, sine, shapes, shapes-aug, shapes64, charlm, "
    "explode, "
    "overfit; "
    "or a path to a .py file, or package.module:attr)"
)


def _tensors(split: object) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(split, tuple) and len(split) == 2
    x, y = split
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
    return x, y


# --- built-in presets ----------------------------------------------------------


def test_registry_order_and_names() -> None:
    assert builtin_names() == ["circles", "moons", "spiral", "xor", "sine", "shapes", "shapes-aug", "shapes64",
                               "charlm", "explode", "overfit"]
    assert all(BUILTIN[name].name == name for name in builtin_names())


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_metadata(name: str) -> None:
    preset = BUILTIN[name]
    assert preset.description and "\n" not in preset.description
    assert set(preset.defaults) <= ALLOWED_DEFAULTS
    assert preset.defaults.get("optimizer", "adam") in OPTIMIZERS
    assert preset.defaults.get("scheduler", "none") in SCHEDULERS
    assert {"epochs", "lr", "batch_size"} <= set(preset.defaults)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_default_run_is_short(name: str) -> None:
    preset = BUILTIN[name]
    x, _ = _tensors(preset.make_data(0).train)
    steps = math.ceil(len(x) / preset.defaults["batch_size"]) * preset.defaults["epochs"]
    assert steps <= 5000


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_builds_and_forward(name: str) -> None:
    preset = BUILTIN[name]
    data = preset.make_data(0)
    assert isinstance(data, Data)
    torch.manual_seed(0)
    model = preset.make_model()
    loss_fn = preset.loss()
    for split in (data.train, data.val):
        x, y = _tensors(split)
        assert len(x) == len(y)
        if x.is_floating_point():  # features or images
            assert x.dtype == torch.float32 and torch.isfinite(x).all()
        elif x.dtype == torch.uint8:  # images as bytes (shapes64): the model's first layer makes floats
            assert x.ndim == 4 and int(x.max()) > 0
        else:  # token ids (charlm)
            assert x.dtype == torch.int64 and x.min() >= 0
        out = model(x[:16])
        if preset.task == "classification":
            # Logits carry the classes on dim 1; a language model adds the time axis after it.
            assert y.dtype == torch.int64 and out.shape[0] == 16 and out.shape[2:] == y.shape[1:]
            assert 0 <= int(y.min()) and int(y.max()) < out.shape[1]
            if y.ndim == 1:
                assert set(y.tolist()) == set(range(out.shape[1]))
        else:
            assert y.dtype == torch.float32 and y.shape == (len(x), 1)
            assert out.shape == (16, 1)
        loss = loss_fn(out, y[:16])
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_data_deterministic_and_independent(name: str) -> None:
    preset = BUILTIN[name]
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    a, b, c = preset.make_data(7), preset.make_data(7), preset.make_data(8)
    assert torch.equal(torch.get_rng_state(), rng_before), "data must not use the global RNG"
    for sa, sb in ((a.train, b.train), (a.val, b.val)):
        (xa, ya), (xb, yb) = _tensors(sa), _tensors(sb)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(_tensors(a.train)[0], _tensors(c.train)[0])
    x_train, x_val = _tensors(a.train)[0], _tensors(a.val)[0]
    n = min(len(x_train), len(x_val))
    assert not torch.allclose(x_train[:n], x_val[:n])


def test_circles_reaches_097_with_defaults() -> None:
    """A plain loop with the preset's defaults: Adam, lr 0.01, batches of 16, <= 30 epochs."""
    preset = BUILTIN["circles"]
    d = preset.defaults
    assert d == {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 30}
    torch.manual_seed(0)
    data = preset.make_data(0)
    (x, y), (xv, yv) = _tensors(data.train), _tensors(data.val)
    model = preset.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=d["lr"])
    loss_fn = preset.loss()
    best = 0.0
    for _ in range(d["epochs"]):
        model.train()
        for idx in torch.randperm(len(x)).split(d["batch_size"]):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            best = max(best, (model(xv).argmax(1) == yv).float().mean().item())
        if best >= 0.97:
            break
    assert best >= 0.97


# --- loader: what resolves -----------------------------------------------------


@pytest.mark.parametrize("name", list(BUILTIN))
def test_load_builtin(name: str) -> None:
    assert load_preset(name) is BUILTIN[name]
    assert preset_name_for_rundir(name, BUILTIN[name]) == name


def test_load_example_file_relative_and_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    path_before = list(sys.path)
    preset = load_preset(str(EXAMPLE))
    assert sys.path == path_before
    assert preset.name == "my_experiment" and preset.task == "classification"
    assert preset.description == "four Gaussian blobs, small MLP (4 classes)"
    assert set(preset.defaults) <= ALLOWED_DEFAULTS
    monkeypatch.chdir(EXAMPLE.parent)
    again = load_preset("./my_experiment.py")
    assert again.make_data is not preset.make_data  # a fresh module each time
    assert preset_name_for_rundir("./my_experiment.py", again) == "my_experiment"


def test_example_file_trains() -> None:
    preset = load_preset(str(EXAMPLE))
    torch.manual_seed(0)
    data = preset.make_data(0)
    (x, y), (xv, yv) = _tensors(data.train), _tensors(data.val)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    model = preset.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=preset.defaults["lr"])
    loss_fn = preset.loss()
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(preset.defaults["batch_size"]):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        assert (model(xv).argmax(1) == yv).float().mean().item() > 0.85


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


FUNCS_MODULE = """
    \"\"\"Regression from functions.\"\"\"
    import torch
    from torch import nn
    from tuitrain.presets import Data

    TASK = "regression"
    DEFAULTS = {"epochs": 2}
    NAME = "line"
    DROP_LAST = True
    METRIC = "mae"

    def make_data(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(8, 1, generator=g)
        return Data(train=(x, 2 * x), val=(x, 2 * x))

    def make_model():
        return nn.Linear(1, 1)
"""


def test_file_with_functions(tmp_path: Path) -> None:
    preset = load_preset(str(_write(tmp_path / "line_exp.py", FUNCS_MODULE)))
    assert (preset.name, preset.task, preset.defaults, preset.drop_last) == ("line", "regression", {"epochs": 2}, True)
    assert preset.description == "Regression from functions."
    assert preset.metric_name == "mae"
    assert isinstance(preset.loss(), torch.nn.MSELoss)
    assert preset_name_for_rundir(str(tmp_path / "line_exp.py"), preset) == "line_exp"


def test_file_can_import_a_sibling_helper(tmp_path: Path) -> None:
    _write(tmp_path / "helpers_for_preset_test.py", "from tuitrain.presets import BUILTIN\nP = BUILTIN['xor']\n")
    path = _write(tmp_path / "uses_helper.py", "from helpers_for_preset_test import P as PRESET\n")
    path_before = list(sys.path)
    try:
        assert load_preset(str(path)) is BUILTIN["xor"]
    finally:
        sys.modules.pop("helpers_for_preset_test", None)
    assert sys.path == path_before


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway package on sys.path; returns its (unique) name."""
    name = f"userpkg_{tmp_path.name}".replace("-", "_")
    _write(tmp_path / name / "__init__.py", "")
    _write(
        tmp_path / name / "exps.py",
        """
        from tuitrain.presets import BUILTIN, Preset

        MINE = BUILTIN["moons"]

        def build():
            return BUILTIN["spiral"]

        def broken():
            return 42

        NOT_A_PRESET = [1, 2]
        """,
    )
    _write(tmp_path / name / "funcs.py", FUNCS_MODULE)
    _write(tmp_path / name / "boom.py", "import torch\nx = 1\nraise RuntimeError('bad module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_module_attr(user_pkg: str) -> None:
    assert load_preset(f"{user_pkg}.exps:MINE") is BUILTIN["moons"]
    assert load_preset(f"{user_pkg}.exps:build") is BUILTIN["spiral"]
    assert preset_name_for_rundir(f"{user_pkg}.exps:build", BUILTIN["spiral"]) == "spiral"
    assert load_preset(f"{user_pkg}.funcs").name == "line"


def test_module_attr_errors(user_pkg: str) -> None:
    with pytest.raises(PresetError, match=r"has no attribute 'nope'"):
        load_preset(f"{user_pkg}.exps:nope")
    with pytest.raises(PresetError, match=r"returned a int, not a Preset"):
        load_preset(f"{user_pkg}.exps:broken")
    with pytest.raises(PresetError, match=r"is a list, not a Preset"):
        load_preset(f"{user_pkg}.exps:NOT_A_PRESET")
    with pytest.raises(PresetError, match=r"^module not found: 'no_such_pkg_xyz\.mod'"):
        load_preset("no_such_pkg_xyz.mod:PRESET")
    with pytest.raises(PresetError, match=rf"^module not found: '{user_pkg}\.missing'"):
        load_preset(f"{user_pkg}.missing:PRESET")
    with pytest.raises(PresetError) as info:
        load_preset(f"{user_pkg}.boom:PRESET")
    assert str(info.value).endswith("boom.py:3: RuntimeError: bad module while importing the preset")


# --- loader: errors --------------------------------------------------------------


def _error(spec: str) -> str:
    with pytest.raises(PresetError) as info:
        load_preset(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_name() -> None:
    assert _error("foo") == UNKNOWN


def test_bare_word_never_imports_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "foo.py", "raise SystemExit('must not be imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _error("foo") == UNKNOWN


def test_missing_file(tmp_path: Path) -> None:
    assert _error("exp.py") == "preset file not found: exp.py"
    missing = tmp_path / "nope.py"
    assert _error(str(missing)) == f"preset file not found: {missing}"


def test_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.py", "x = 1\n\ndef broken(:\n    pass\n")
    message = _error(str(path))
    assert message.startswith(f"{path}:3: syntax error: ")


def test_exception_while_importing_reports_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "raises.py", "import torch\n\n\nvalue = {}['missing']\n")
    assert _error(str(path)) == f"{path}:4: KeyError: 'missing' while importing the preset"


def test_exception_in_called_code_points_at_the_users_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "deep.py", "import torch\nt = torch.zeros(2) @ torch.zeros(3)\n")
    message = _error(str(path))
    assert message.startswith(f"{path}:2: RuntimeError: ")
    assert message.endswith(" while importing the preset")


def test_file_with_nothing_usable(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.py", "X = 1\n")
    assert _error(str(path)) == f"{path} defines no PRESET and no make_data/make_model"


def test_file_with_half_the_functions(tmp_path: Path) -> None:
    path = _write(tmp_path / "half.py", "def make_data(seed):\n    return None\n")
    assert _error(str(path)) == f"{path} defines make_data but no make_model"


def test_preset_of_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path / "wrong.py", "PRESET = {'name': 'x'}\n")
    assert _error(str(path)) == f"{path}: PRESET is a dict, not a tuitrain Preset"


def test_bad_task_and_defaults(tmp_path: Path) -> None:
    body = "def make_data(seed): pass\ndef make_model(): pass\n"
    path = _write(tmp_path / "task.py", body + "TASK = 'ranking'\n")
    assert "TASK must be 'classification' or 'regression'" in _error(str(path))
    path = _write(tmp_path / "defs.py", body + "DEFAULTS = [1]\n")
    assert _error(str(path)) == f"{path}: DEFAULTS must be a dict, not a list"


def test_non_py_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "exp.txt", "PRESET = 1\n")
    assert _error(str(path)) == f"preset file must be a .py file: {path}"


def test_failed_import_leaves_no_module_behind(tmp_path: Path) -> None:
    path = _write(tmp_path / "raises_again.py", "raise ValueError('x')\n")
    before = set(sys.modules)
    _error(str(path))
    assert not [m for m in set(sys.modules) - before if "raises_again" in m]


def test_rundir_name_is_filesystem_safe() -> None:
    preset = Preset(
        name="my exp/v2: *final*",
        description="d",
        task="classification",
        make_data=lambda seed: Data(train=(torch.zeros(1, 1), torch.zeros(1)), val=(torch.zeros(1, 1), torch.zeros(1))),
        make_model=lambda: torch.nn.Linear(1, 1),
    )
    name = preset_name_for_rundir("pkg.mod:attr", preset)
    assert name and all(c.isalnum() or c in "._-" for c in name)
    assert preset_name_for_rundir("/tmp/we ird$name.py", preset) == "we-ird-name"
