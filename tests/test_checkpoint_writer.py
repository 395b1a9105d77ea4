"""The background checkpoint writer under a full disk: the old file survives, the run goes on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine.config import RunConfig
from tuitrain.engine.events import CheckpointFailed, CheckpointSaved, EvalDone
from tuitrain.engine.trainer import Trainer
from tuitrain.presets import load_preset


class _FullDisk:
    """A file object that writes part of the data, then fails like a full disk."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()
        return False


def test_full_disk_keeps_previous_checkpoint_and_run_finishes(tmp_path: Path, monkeypatch) -> None:
    preset = load_preset("circles")
    cfg = RunConfig(**{**preset.defaults, "preset": "circles", "epochs": 3})
    seen: list = []
    real_fdopen = os.fdopen
    state = {"fail": False}

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(f) if state["fail"] else f

    def listener(event) -> None:
        seen.append(event)
        # After epoch 1's checkpoints, the disk "fills up".
        if isinstance(event, EvalDone) and event.epoch == 2:
            trainer._writer.wait()
            state["fail"] = True

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    trainer = Trainer(cfg, preset, tmp_path / "run", listeners=[listener])
    result = trainer.run()

    assert result.status == "finished"
    assert result.summary["epochs"] == 3
    failed = [e for e in seen if isinstance(e, CheckpointFailed)]
    assert failed and all("No space left" in e.error for e in failed)
    saved = [e for e in seen if isinstance(e, CheckpointSaved) and e.path.endswith("latest.pt")]
    assert [e.step for e in saved] == [125]  # only epoch 1's save made it
    state_on_disk = ckpt.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state_on_disk["step"] == 125 and state_on_disk["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state_on_disk["model_state_dict"].values())
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_writer_wait_means_file_is_complete(tmp_path: Path) -> None:
    writer = ckpt.CheckpointWriter()
    data = os.urandom(1 << 20)
    for i in range(5):
        writer.submit(data, [tmp_path / "a.bin"], i, "epoch")
    assert writer.wait(timeout=30)
    assert (tmp_path / "a.bin").read_bytes() == data
    results = writer.completed()
    assert [r.step for r in results] == [0, 1, 2, 3, 4] and all(r.error is None for r in results)
    writer.close()
