"""The CUDA paths: a real GPU, AMP, NVML, torch's CUDA memory, NCCL under torchrun. Skipped without CUDA.

Run them wherever a GPU is at hand: `python -m pytest -q -m gpu`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import wait_until
from group_helpers import live_events, steps_taken, torchrun, write_preset
from integration_helpers import connect

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")]


def tuitrain(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuitrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_circles_trains_on_the_gpu_with_amp(tmp_path: Path, dtype: str) -> None:
    done = tuitrain("--preset", "circles", "--headless", "--epochs", "3", "--amp", "--amp-dtype", dtype,
                    "--run-dir", "R", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"amp {dtype}" in done.stdout
    summary = json.loads((tmp_path / "R" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["device"].startswith("cuda")
    assert summary["final"]["val_acc"] > 0.9


def test_shapes64_on_the_gpu_reports_its_speed_and_cuda_memory(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tuitrain", "--preset", "shapes64", "--headless", "--epochs", "2",
                             "--run-dir", "R"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    R = tmp_path / "R"
    try:
        client = connect(R)
        seen: list[dict] = []
        stats = wait_until(lambda: live_events(client, "process", seen, lambda e: e.get("cuda")), timeout=300,
                           what="the run's CUDA memory over the socket")[-1]
        assert stats["cuda"][0]["allocated_bytes"] > 10 * 2**20
        client.close()
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((R / "summary.json").read_text())
    print(f"shapes64 on {summary['device']}: {summary['steps_per_sec']} steps/s, "
          f"{summary['samples_per_sec']} samples/s, val acc {summary['final']['val_acc']}")
    assert summary["status"] == "finished"


def test_nvml_sees_the_gpus() -> None:
    from tuitrain.tui.system import SystemSampler

    with SystemSampler(interval=0.2) as sampler:
        snap = wait_until(lambda: sampler.latest(), timeout=10, what="a snapshot")
    assert snap.gpus and snap.gpus[0].mem_total_bytes
    torch.zeros(1, device="cuda")
    from tuitrain.engine.resources import cuda_pci

    # What the panel marks a rank's GPU by: CUDA's device 0 is one of NVML's GPUs, by PCI location.
    assert cuda_pci(0) is not None and cuda_pci(0) in {g.pci for g in snap.gpus}, (cuda_pci(0), snap.gpus)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs for two NCCL ranks")
def test_two_nccl_ranks_one_gpu_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = write_preset(tmp_path)
    proc = torchrun(tmp_path, "--preset", str(preset), "--epochs", "300", "--run-dir", "R")
    R = tmp_path / "R"
    try:
        client = connect(R)
        seen: list[dict] = []
        stats = wait_until(lambda: live_events(client, "process", seen, lambda e: len(e.get("ranks", [])) == 2),
                           timeout=120, what="both ranks' numbers")[-1]
        assert [r["cuda_device"] for r in stats["ranks"]] == [0, 1]
        client.close()
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((R / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2 and summary["device"] == "cuda:0"
    assert steps_taken(tmp_path, 0) == steps_taken(tmp_path, 1) == summary["steps"]
