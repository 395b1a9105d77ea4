"""Checkpoints: one plain dict, atomic writes under failure, strict and safe loads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from conftest import classifier_preset, make_cfg, run
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.engine.checkpoint import CheckpointError
from tuitrain.engine.trainer import Trainer

PRESET = classifier_preset()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (its latest.pt is read, never modified)."""
    return run(make_cfg(epochs=2), PRESET, tmp_path_factory.mktemp("ck") / "run")


@pytest.fixture
def latest_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "ck" / "latest.pt"
    dst.parent.mkdir()
    dst.write_bytes((finished.dir / "checkpoints" / "latest.pt").read_bytes())
    return dst


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# -- the format ------------------------------------------------------------------------------------

def test_checkpoint_is_one_plain_dict_with_exactly_the_documented_keys(finished):
    path = finished.dir / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    assert isinstance(state, dict)
    assert set(state) == ckpt.KEYS | (ckpt.OPTIONAL_KEYS - {"group"})  # group: written under torchrun only
    assert state["format"] == ckpt.FORMAT and state["version"] == ckpt.VERSION
    assert state["epoch"] == 2 and state["step"] == 16 and state["batch_in_epoch"] == 0
    assert state["lr_multiplier"] == 1.0 and state["early_stop_counter"] in (0, 1)
    assert state["config"] == make_cfg(epochs=2).to_dict()
    assert state["preset"] == "tiny"
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert set(state["model_state_dict"]) == set(finished.trainer.model.state_dict())
    for k, v in finished.trainer.model.state_dict().items():
        assert torch.equal(state["model_state_dict"][k], v)
    best = torch.load(finished.dir / "checkpoints" / "best.pt", weights_only=True)
    assert set(best) == ckpt.KEYS | (ckpt.OPTIONAL_KEYS - {"group"}) and best["best_val_loss"] == finished.result.summary["best_val_loss"]


def test_load_returns_the_saved_state(latest_copy, tmp_path):
    state = ckpt.load(latest_copy)
    out = tmp_path / "again.pt"
    size = ckpt.save(state, out)
    assert size == out.stat().st_size > 0
    again = ckpt.load(out)
    assert again.keys() == state.keys()
    assert again["step"] == state["step"]
    for k in state["model_state_dict"]:
        assert torch.equal(again["model_state_dict"][k], state["model_state_dict"][k])


# -- atomic writes -----------------------------------------------------------------------------------

def test_a_crash_inside_torch_save_leaves_the_previous_checkpoint_and_no_temp_file(latest_copy, monkeypatch):
    before = latest_copy.read_bytes()
    state = ckpt.load(latest_copy)
    state["step"] = 999

    def half_save(obj, f, *args, **kwargs):
        f.write(before[: len(before) // 2])
        enospc()

    monkeypatch.setattr(ckpt.torch, "save", half_save)
    with pytest.raises(OSError) as info:
        ckpt.save(state, latest_copy)
    assert info.value.errno == errno.ENOSPC
    assert latest_copy.read_bytes() == before
    assert ckpt.load(latest_copy)["step"] == 16
    assert temp_files(latest_copy.parent) == []


def test_a_crash_half_way_through_the_file_write_leaves_the_previous_file(latest_copy):
    before = latest_copy.read_bytes()

    def write_half(f):
        f.write(b"x" * 1000)
        enospc()

    with pytest.raises(OSError):
        ckpt.atomic_write_bytes(latest_copy, write_half)
    assert latest_copy.read_bytes() == before
    assert temp_files(latest_copy.parent) == []


def test_a_failed_rename_leaves_the_previous_file(latest_copy, monkeypatch):
    before = latest_copy.read_bytes()
    monkeypatch.setattr(ckpt.os, "replace", enospc)
    with pytest.raises(OSError):
        ckpt.save(ckpt.load(latest_copy), latest_copy)
    monkeypatch.undo()
    assert latest_copy.read_bytes() == before
    assert temp_files(latest_copy.parent) == []


def test_saved_files_get_the_usual_permissions(latest_copy, tmp_path):
    out = tmp_path / "perm.pt"
    ckpt.save(ckpt.load(latest_copy), out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_run_whose_checkpoints_cannot_be_serialized_reports_it_and_finishes(run_dir, monkeypatch):
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f, *a, **k: (f.write(b"PK"), enospc()))
    r = run(make_cfg(epochs=2), PRESET, run_dir)
    assert r.result.status == "finished" and r.result.summary["steps"] == 16
    failed = r.of(ev.CheckpointFailed)
    assert {(e.reason, e.step) for e in failed} >= {("epoch", 8), ("epoch", 16)}
    assert all("No space left" in e.error for e in failed)
    assert not r.of(ev.CheckpointSaved)
    assert not (run_dir / "checkpoints" / "latest.pt").exists()
    assert temp_files(run_dir / "checkpoints") == []
    assert (run_dir / "summary.json").is_file()


def test_a_disk_that_fills_up_mid_run_keeps_the_last_good_checkpoint(run_dir, monkeypatch):
    real_replace = os.replace
    written = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".pt"):
            if any(Path(d).name == "latest.pt" for d in written):
                enospc()
            written.append(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    r = run(make_cfg(epochs=3), PRESET, run_dir)
    monkeypatch.undo()

    assert r.result.status == "finished" and r.result.summary["steps"] == 24
    failed = [e for e in r.of(ev.CheckpointFailed) if e.reason == "epoch"]
    assert [e.step for e in failed] == [16, 24]
    assert all(e.path == str(run_dir / "checkpoints" / "latest.pt") for e in failed)
    assert all("No space left" in e.error for e in failed)
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 8 and state["epoch"] == 1
    assert temp_files(run_dir / "checkpoints") == []
    failed_lines = [x for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "checkpoint_failed" in x]
    assert len(failed_lines) >= 2


# -- strict, safe loads ---------------------------------------------------------------------------------


def _make_marker(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (_make_marker, (str(self.path),))


def assert_one_line_error(path: Path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_a_pickled_object_is_refused_and_never_run(latest_copy, tmp_path):
    marker = tmp_path / "marker"
    state = ckpt.load(latest_copy)
    state["config"] = {"payload": Payload(marker)}
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    assert_one_line_error(evil, "pickled")
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_of_another_model_shape_does_not_fit(latest_copy, tmp_path):
    wide = classifier_preset(hidden=16)
    with pytest.raises(CheckpointError) as info:
        Trainer(make_cfg(epochs=2), wide, tmp_path / "r", resume=ckpt.load(latest_copy))
    assert "does not fit" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_checkpoint_from_another_scheduler_does_not_fit(latest_copy, tmp_path):
    with pytest.raises(CheckpointError):
        Trainer(make_cfg(epochs=2, scheduler="onecycle"), PRESET, tmp_path / "r", resume=ckpt.load(latest_copy))


def test_empty_truncated_and_random_files_are_checkpoint_errors(latest_copy, tmp_path):
    data = latest_copy.read_bytes()
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_one_line_error(empty, "empty")
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    assert_one_line_error(half, str(half))
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    assert_one_line_error(noise, str(noise))
    text = tmp_path / "notes.pt"
    text.write_text("just some notes\n")
    assert_one_line_error(text)
    assert_one_line_error(tmp_path / "missing.pt", "not found")
    assert_one_line_error(tmp_path, "not a checkpoint")


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s.update(extra=1), "unexpected keys ['extra']"),
    (lambda s: s.pop("rng"), "missing keys ['rng']"),
    (lambda s: s.update(version=99), "version 99"),
    (lambda s: s.update(format="something-else"), "not a tuitrain checkpoint"),
])
def test_a_dict_that_is_not_exactly_a_checkpoint_is_refused(latest_copy, tmp_path, change, fragment):
    state = ckpt.load(latest_copy)
    change(state)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    assert_one_line_error(path, fragment)


def test_a_plain_tensor_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    assert_one_line_error(path, "not a tuitrain checkpoint")


def test_save_refuses_an_incomplete_state(latest_copy, tmp_path):
    state = ckpt.load(latest_copy)
    del state["step"]
    with pytest.raises(ValueError):
        ckpt.save(state, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
