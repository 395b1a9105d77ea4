"""Security: a malicious pickle is never executed; nothing is imported implicitly from cwd or the run dir.

Each payload writes a marker file when it runs, and each test proves the
payload is live (running it the unsafe way plants the marker), so a test that
passes because the payload is broken is impossible.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_usage_error, cli_env, in_process, read_json, train_in_process, tuitrain


def _plant(path: str) -> None:
    Path(path).write_text("code ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_a_malicious_latest_pt_in_a_run_directory_is_refused_and_never_run(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base"
    base.mkdir()
    R = base / "R"
    train_in_process("--preset", "circles", "--headless", "--epochs", "1", "--run-dir", R, cwd=base)
    marker = tmp_path / "MARKER"
    state = torch.load(R / "checkpoints" / "latest.pt", weights_only=True)
    state["config"]["note"] = _Payload(marker)  # hidden inside a nested dict, keys unchanged
    torch.save(state, R / "checkpoints" / "latest.pt")
    before = sorted(p.name for p in R.rglob("*"))

    monkeypatch.chdir(base)
    rc, _, err = in_process("--resume", R, "--headless")  # in this process: a payload that ran would plant the marker
    assert_usage_error(rc, err, "refusing to load", "pickled Python objects")
    assert not marker.exists()
    assert sorted(p.name for p in R.rglob("*")) == before
    # The payload is live: the unsafe load runs it.
    torch.load(R / "checkpoints" / "latest.pt", weights_only=False)
    assert marker.exists()


#: Module names a naive sys.path or an implicit "load presets from here" would pick up.
TRAPS = ["circles.py", "presets.py", "tuitrain.py", "engine.py", "tui.py", "torch.py", "textual.py",
         "sitecustomize.py", "usercustomize.py", "registry.py", "loader.py", "conftest.py", "my_experiment.py"]

TRAP = """
import pathlib
pathlib.Path({marker!r}).write_text("imported from " + __file__)
raise SystemExit("booby trap {name} imported")
"""


def _lay_traps(folder: Path, marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in TRAPS:
        (folder / name).write_text(TRAP.format(marker=str(marker), name=name))
    pkg = folder / "presets" / "__init__.py"  # a package of the same name, too
    pkg.parent.mkdir(exist_ok=True)
    pkg.write_text(TRAP.format(marker=str(marker), name="presets/"))


def test_nothing_is_imported_from_the_cwd_or_the_run_dir(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    cwd = tmp_path / "cwd"
    R = cwd / "R"
    _lay_traps(cwd, marker)
    # The traps are live: Python run from that folder with it on sys.path imports them.
    probe = subprocess.run([sys.executable, "-c", "import circles"], cwd=cwd, capture_output=True, text=True,
                           env=cli_env())
    assert probe.returncode != 0 and marker.exists()
    marker.unlink()

    p = tuitrain("--preset", "circles", "--headless", "--epochs", "1", "--run-dir", "R", cwd=cwd)
    assert p.returncode == 0, p.stderr
    assert not marker.exists(), marker.read_text() if marker.exists() else ""
    # A new run goes only into an empty folder; the run directory's traps are laid for the resumes.
    _lay_traps(R, marker)
    _lay_traps(R / "checkpoints", marker)
    r = tuitrain("--resume", "R", "--headless", "--epochs", "2", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), marker.read_text() if marker.exists() else ""
    assert read_json(R / "summary.json")["epochs"] == 2
    # Resuming from a run directory somewhere else, with the traps in the current directory as well.
    other = tmp_path / "other"
    _lay_traps(other, marker)
    shutil.copytree(R, other / "R2")
    r = tuitrain("--resume", other / "R2", "--headless", "--epochs", "3", cwd=other)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


def test_a_preset_file_is_run_only_when_named(tmp_path: Path) -> None:
    """--preset ./file.py runs that file (it is code the user chose to run), and only it."""
    marker = tmp_path / "MARKER"
    _lay_traps(tmp_path, marker)
    mine = tmp_path / "mine.py"
    mine.write_text(textwrap.dedent(f"""
        import pathlib
        import torch
        from torch import nn
        from tuitrain.presets import Data

        pathlib.Path({str(tmp_path / 'RAN')!r}).write_text("mine ran")

        def make_data(seed):
            x = torch.randn(32, 2, generator=torch.Generator().manual_seed(seed))
            return Data(train=(x, (x[:, 0] > 0).long()), val=(x, (x[:, 0] > 0).long()))

        def make_model():
            return nn.Linear(2, 2)
    """))
    p = tuitrain("--preset", mine, "--headless", "--epochs", "1", "--run-dir", tmp_path / "R", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "RAN").exists()
    assert not marker.exists()  # its folder is on sys.path only while it is imported, and it imports none
