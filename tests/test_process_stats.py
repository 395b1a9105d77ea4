"""The run's own RSS and torch CUDA memory, published live for viewers (ProcessStats).

Only the run's process knows what torch's allocator holds (a watcher never
imports torch), so the Trainer samples itself at most once a second and sends
a live-only event: never in metrics.jsonl, forwarded by the control socket,
kept by DashboardState and shown by the system panel instead of the local
sampler's process line.
"""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import classifier_preset, make_cfg, start
from dashboard_helpers import (FakeSampler, FakeTrainer, cpu_only_snapshot, dashboard, run_async, run_started, until,
                               widget_text)
from test_control import collect
from tuitrain.engine import events as ev
from tuitrain.engine.commands import Stop
from tuitrain.engine.control import LIVE_ONLY_TYPES, ControlClient
from tuitrain.engine.replay import events_from_records
from tuitrain.engine.resources import INTERVAL, RANK_FIELDS, ProcessProbe, cuda_memory, pci_key, rank_numbers
from tuitrain.tui.state import DashboardState

GiB = 2**30
T0 = 1_700_000_000.0


class FakeCuda:
    """torch.cuda as far as the probe asks: one GPU of two in use; counts every call."""

    def __init__(self, initialized: bool = True) -> None:
        self.initialized = initialized
        self.calls: list[str] = []
        self.used = {0: (2 * GiB, 3 * GiB, int(2.5 * GiB)), 1: (0, 0, 0)}

    def is_initialized(self) -> bool:
        self.calls.append("is_initialized")
        return self.initialized

    def _touch(self, name: str) -> None:
        self.calls.append(name)
        if not self.initialized:
            raise AssertionError(f"{name}() asked before CUDA was initialized: it could initialize it")

    def is_available(self) -> bool:
        self._touch("is_available")
        return True

    def device_count(self) -> int:
        self._touch("device_count")
        return 2

    def memory_allocated(self, i: int) -> int:
        self._touch("memory_allocated")
        return self.used[i][0]

    def memory_reserved(self, i: int) -> int:
        self._touch("memory_reserved")
        return self.used[i][1]

    def max_memory_allocated(self, i: int) -> int:
        self._touch("max_memory_allocated")
        return self.used[i][2]

    def get_device_properties(self, i: int) -> types.SimpleNamespace:
        self._touch("get_device_properties")
        return types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x65 + i, pci_device_id=0)


def process_stats(t: float = T0 + 1, *, pid: int = 4242, rss: int | None = int(1.5 * GiB),
                  cuda: list[dict[str, Any]] | None = None) -> ev.ProcessStats:
    return ev.ProcessStats(10, t, pid=pid, rss_bytes=rss, cuda=cuda or [])


# -- the engine side ------------------------------------------------------------------------

def test_a_run_sends_its_own_rss_at_most_once_a_second_and_never_to_the_file(tmp_path: Path) -> None:
    cfg = make_cfg(epochs=100_000, log_interval=0.02)  # flushes 50 times a second: the 1 s limit must hold
    seen: list[ev.ProcessStats] = []
    holder: list[Any] = []

    def listener(event: ev.Event) -> None:
        if isinstance(event, ev.ProcessStats):
            seen.append(event)
            if len(seen) == 3:
                holder[0].commands.put(Stop("enough samples"))

    trainer, events = start(cfg, classifier_preset(), tmp_path / "run", listeners=[listener])
    holder.append(trainer)
    began = time.monotonic()
    result = trainer.run()
    took = time.monotonic() - began
    assert result.status == "stopped"
    assert len(seen) >= 3
    assert len(seen) <= took / INTERVAL + 1.5  # at most about one a second
    gaps = [b.t - a.t for a, b in zip(seen, seen[1:])]
    assert all(gap >= INTERVAL * 0.9 for gap in gaps), gaps
    ours = psutil.Process().memory_info().rss
    for stats in seen:
        assert stats.pid == os.getpid()
        # A torch process is tens of MB at least; this is the same process, so close to its RSS now.
        assert stats.rss_bytes is not None and 30 * 2**20 < stats.rss_bytes < 2 * ours
        assert stats.cuda == []  # a CPU run: no CUDA memory, and CUDA was not started to look
    assert [e for e in events if isinstance(e, ev.ProcessStats)] == seen  # the dashboard's buffer too
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"event":"process"' not in metrics and '"kind":"step"' in metrics


def test_cuda_memory_is_read_only_once_cuda_is_initialized_and_only_for_devices_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cold = FakeCuda(initialized=False)
    assert cuda_memory(cold) == [] and cold.calls == ["is_initialized"]  # nothing else asked

    warm = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=warm))  # the probe's default path
    stats = ProcessProbe().sample(7, T0)
    assert stats.cuda == [{"device": 0, "allocated_bytes": 2 * GiB, "reserved_bytes": 3 * GiB,
                           "peak_bytes": int(2.5 * GiB), "pci": pci_key(0, 0x65, 0)}]  # device 1: nothing held
    monkeypatch.delitem(sys.modules, "torch")
    assert cuda_memory() == []  # no torch in the process: nothing to read, and nothing imported
    assert "torch" not in sys.modules


def test_a_broken_cuda_reading_is_n_a_not_a_failed_run() -> None:
    broken = FakeCuda()
    broken.memory_reserved = lambda i: (_ for _ in ()).throw(RuntimeError("driver gone"))  # type: ignore[method-assign]
    broken.get_device_properties = lambda i: types.SimpleNamespace()  # type: ignore[method-assign]
    assert cuda_memory(broken)[0] == {"device": 0, "allocated_bytes": 2 * GiB, "reserved_bytes": None,
                                      "peak_bytes": int(2.5 * GiB), "pci": None}
    hopeless = types.SimpleNamespace(is_initialized=lambda: (_ for _ in ()).throw(RuntimeError("no")))
    assert cuda_memory(hopeless) == []


def test_the_probe_waits_its_interval() -> None:
    probe = ProcessProbe(interval=1.0)
    assert probe.due()
    probe.sample(1, T0)
    now = time.monotonic()
    assert not probe.due(now) and probe.due(now + 1.0)


def test_process_stats_are_live_only_and_forwarded_to_watchers(served) -> None:
    server, _, run_dir = served
    assert ev.ProcessStats in LIVE_ONLY_TYPES and process_stats().records() == []
    early = process_stats(cuda=[{"device": 0, "allocated_bytes": 1, "reserved_bytes": 2, "peak_bytes": 3}])
    server.listener(early)  # before anyone watches: a late watcher still gets the newest
    with ControlClient.connect(run_dir) as client:
        seen = collect(client, lambda m: m.get("event", {}).get("event") == "process", what="the stats")
        live = [m["event"] for m in seen if m.get("kind") == "live" and m["event"]["event"] == "process"]
        # A watcher decodes live events as it decodes the file: it gets the same event back.
        assert events_from_records(live) == [early]


# -- the viewer side ------------------------------------------------------------------------

def test_dashboard_state_keeps_the_latest_and_forgets_it_when_the_run_ends() -> None:
    state = DashboardState()
    state.apply_all([run_started(T0), process_stats(T0 + 1, rss=100), process_stats(T0 + 2, rss=200)])
    assert state.process is not None and state.process.rss_bytes == 200 and "process" in state.dirty
    state.dirty.clear()
    state.apply(ev.RunEnded(10, T0 + 3, status="finished", summary={"steps": 10}))
    assert state.process is None and "process" in state.dirty  # its process is gone: no stale numbers
    state.apply(process_stats(T0 + 4))  # a live frame that arrived after the end record
    assert state.process is None


def test_the_system_panel_shows_the_runs_rss_and_cuda_memory_when_the_run_sends_them() -> None:
    from tuitrain.tui.widgets.system_panel import SystemPanel

    cuda = [{"device": 0, "allocated_bytes": 2 * GiB, "reserved_bytes": 3 * GiB, "peak_bytes": int(2.5 * GiB)}]
    trainer = FakeTrainer([run_started(T0)])

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            panel = app.query_one(SystemPanel)
            # Before the run sends anything: the local sampler's own process line.
            await until(pilot, lambda: "process RSS 512.0 MiB" in widget_text(panel), "the sampler's RSS")
            trainer.events.put(process_stats(pid=4242, rss=int(1.5 * GiB), cuda=cuda))
            await until(pilot, lambda: "run (pid 4242) RSS 1.5 GiB" in widget_text(panel), "the run's RSS")
            text = widget_text(panel)
            assert "torch cuda:0 alloc 2.0 GiB · reserved 3.0 GiB · peak 2.5 GiB" in text, text
            assert "process RSS" not in text
            # Every field the panel showed before is still there: the machine comes from the sampler.
            assert "GPU: no NVIDIA driver (NVML unavailable)" in text and "CPU 50% · RAM 4.0 GiB/16.0 GiB" in text
            trainer.events.put(process_stats(pid=4242, rss=None, cuda=[{"device": "x"}, "junk", {"device": 1}]))
            await until(pilot, lambda: "run (pid 4242) RSS N/A" in widget_text(panel), "an unreadable RSS")
            text = widget_text(panel)
            assert "torch cuda:1 alloc N/A · reserved N/A · peak N/A" in text and "cuda:0" not in text, text
            trainer.events.put(ev.RunEnded(10, T0 + 3, status="finished", summary={"steps": 10}))
            await until(pilot, lambda: "process RSS 512.0 MiB" in widget_text(panel), "the sampler again")

    run_async(body)


def test_the_system_panel_lists_every_rank_of_a_torchrun_group() -> None:
    from tuitrain.tui.widgets.system_panel import SystemPanel

    trainer = FakeTrainer([run_started(T0)])
    ranks = [{"rank": 0, "pid": 11, "steps_per_sec": 512.4, "rss_bytes": 300 * 2**20, "cuda_device": 0,
              "cuda_allocated_bytes": 2 * GiB, "cuda_reserved_bytes": 3 * GiB, "cuda_peak_bytes": int(2.5 * GiB)},
             {"rank": 1, "pid": 12, "steps_per_sec": None, "rss_bytes": None, "cuda_device": None},
             {"rank": "x"}, "junk"]

    async def body() -> None:
        async with dashboard(trainer, size=(120, 40)) as (app, pilot, sampler):  # type: ignore[arg-type]
            panel = app.query_one(SystemPanel)
            stats = ev.ProcessStats(5, T0 + 1, pid=11, rss_bytes=300 * 2**20, ranks=ranks)
            trainer.events.put(stats)
            await until(pilot, lambda: "rank 1" in widget_text(panel), "the ranks")
            text = widget_text(panel)
            assert "rank 0 512 steps/s · RSS 300.0 MiB · cuda:0 2.0 GiB (peak 2.5 GiB)" in text, text
            assert "rank 1 N/A steps/s · RSS N/A" in text and "rank x" not in text, text

    run_async(body)


#: NVML's two GPUs by PCI bus: 0x17 is GPU0, 0x65 is GPU1.
H100_PCI, H200_PCI = pci_key(0, 0x17, 0), pci_key(0, 0x65, 0)


def panel_over_two_gpus(stats: ev.ProcessStats, ready: str) -> str:
    """The system panel's text once it shows `ready`, after the run sent `stats`, on a machine whose
    NVML sees an H100 (GPU0) and an H200 (GPU1)."""
    from tuitrain.tui.system import GpuStats
    from tuitrain.tui.widgets.system_panel import SystemPanel

    gpus = (GpuStats(0, "NVIDIA H100", 10.0, GiB, 80 * GiB, 40.0, 100.0, 700.0, pci=H100_PCI),
            GpuStats(1, "NVIDIA H200", 90.0, GiB, 141 * GiB, 60.0, 600.0, 700.0, pci=H200_PCI))
    sampler = FakeSampler(replace(cpu_only_snapshot(), gpus=gpus, gpu_note=None))
    trainer = FakeTrainer([run_started(T0)])

    async def body() -> str:
        async with dashboard(trainer, sampler, size=(120, 40)) as (app, pilot, _):  # type: ignore[arg-type]
            panel = app.query_one(SystemPanel)
            trainer.events.put(stats)
            await until(pilot, lambda: ready in widget_text(panel), ready)
            return widget_text(panel)

    return run_async(body)


@pytest.mark.parametrize("by_pci", [True, False], ids=["by PCI location", "by ordinal (no PCI reported)"])
def test_the_system_panel_marks_the_gpu_each_rank_really_uses(by_pci: bool) -> None:
    """CUDA_VISIBLE_DEVICES=1,0: each rank's cuda:N is NVML's other GPU; the PCI location says which."""
    ranks = [{"rank": 0, "pid": 11, "cuda_device": 0, "cuda_pci": H200_PCI},
             {"rank": 1, "pid": 12, "cuda_device": 1, "cuda_pci": H100_PCI}]
    if not by_pci:
        ranks = [{k: v for k, v in r.items() if k != "cuda_pci"} for r in ranks]
    text = panel_over_two_gpus(ev.ProcessStats(5, T0 + 1, pid=11, rss_bytes=GiB, ranks=ranks), "rank 1 ")
    if by_pci:
        assert "GPU0 NVIDIA H100 · rank 1\n" in text and "GPU1 NVIDIA H200 · rank 0\n" in text, text
    else:
        assert "GPU0 NVIDIA H100 · rank 0\n" in text and "GPU1 NVIDIA H200 · rank 1\n" in text, text


def test_the_system_panel_marks_the_gpu_a_single_run_uses_by_pci_location() -> None:
    cuda = [{"device": 0, "allocated_bytes": GiB, "reserved_bytes": GiB, "peak_bytes": GiB,
             "pci": H200_PCI}]  # CUDA_VISIBLE_DEVICES=1: its cuda:0 is NVML's GPU1
    text = panel_over_two_gpus(ev.ProcessStats(5, T0 + 1, pid=11, rss_bytes=GiB, cuda=cuda), "torch cuda:0")
    assert "GPU1 NVIDIA H200 · this run\n" in text and "GPU0 NVIDIA H100\n" in text, text


def test_a_rank_reports_where_its_gpu_sits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The number a rank gathers for the panel: its CUDA ordinal and that device's PCI location."""
    import torch

    from tuitrain.engine import resources

    monkeypatch.setattr(resources, "cuda_memory", lambda: [
        {"device": 1, "allocated_bytes": 5, "reserved_bytes": 6, "peak_bytes": 7, "pci": pci_key(0, 0x65, 0)}])
    row = dict(zip(RANK_FIELDS, rank_numbers(100.0, torch.device("cuda", 1))))
    assert (row["cuda_device"], row["cuda_allocated_bytes"], row["cuda_pci"]) == (1, 5, pci_key(0, 0x65, 0))
    monkeypatch.setattr(resources, "cuda_memory", lambda: [])  # no memory held on it yet: asked directly
    props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x65, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props if i == 1 else None)
    assert dict(zip(RANK_FIELDS, rank_numbers(100.0, torch.device("cuda", 1))))["cuda_pci"] == pci_key(0, 0x65, 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace())  # an older torch
    assert dict(zip(RANK_FIELDS, rank_numbers(100.0, torch.device("cuda", 1))))["cuda_pci"] == -1
    assert dict(zip(RANK_FIELDS, rank_numbers(100.0, torch.device("cpu"))))["cuda_pci"] == -1
