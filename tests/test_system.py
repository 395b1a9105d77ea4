"""SystemSampler and Nvml, with NVIDIA hardware faked at the pynvml boundary."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import types
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import psutil
import pytest

from tuitrain.tui import system
from tuitrain.tui.system import (GpuStats, Nvml, SystemSampler, SystemSnapshot, fmt_bytes, fmt_percent,
                                    fmt_temp, fmt_watts)

from conftest import wait_until

GiB = 2**30


# -- a fake pynvml --------------------------------------------------------------------

class NVMLError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(3)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(12)

    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


class NVMLError_DriverNotLoaded(NVMLError):
    def __init__(self) -> None:
        super().__init__(9)


class NVMLError_NoPermission(NVMLError):
    def __init__(self) -> None:
        super().__init__(4)

    def __str__(self) -> str:
        return "Insufficient Permissions"


@dataclass
class FakeGpu:
    name: Any = "NVIDIA H100 80GB HBM3"
    util: int = 87
    used: int = 3 * GiB
    total: int = 80 * GiB
    temp: int = 54
    power_mw: int = 215_000
    limit_mw: int = 700_000
    pci: tuple[int, int, int] = (0, 0x17, 0)  # domain, bus, device
    unsupported: set[str] = field(default_factory=set)  # e.g. {"temp", "power"}


def fake_pynvml(gpus: list[FakeGpu], init_error: Exception | None = None) -> types.SimpleNamespace:
    """A module-like object with pynvml's names; `calls` records every call by name."""
    calls: list[str] = []

    def check(gpu: FakeGpu, what: str) -> None:
        if what in gpu.unsupported:
            raise NVMLError_NotSupported()

    def rec(fn):
        def wrapper(*args):
            calls.append(fn.__name__)
            return fn(*args)
        wrapper.__name__ = fn.__name__
        return wrapper

    @rec
    def nvmlInit():
        if init_error is not None:
            raise init_error

    @rec
    def nvmlShutdown():
        pass

    @rec
    def nvmlDeviceGetCount():
        return len(gpus)

    @rec
    def nvmlDeviceGetHandleByIndex(i):
        if not 0 <= i < len(gpus):
            raise NVMLError(2)
        return gpus[i]

    @rec
    def nvmlDeviceGetName(h):
        check(h, "name")
        return h.name

    @rec
    def nvmlDeviceGetUtilizationRates(h):
        check(h, "util")
        return types.SimpleNamespace(gpu=h.util, memory=10)

    @rec
    def nvmlDeviceGetMemoryInfo(h):
        check(h, "mem")
        return types.SimpleNamespace(used=h.used, total=h.total, free=h.total - h.used)

    @rec
    def nvmlDeviceGetTemperature(h, sensor):
        assert sensor == 0, "asks for NVML_TEMPERATURE_GPU"
        check(h, "temp")
        return h.temp

    @rec
    def nvmlDeviceGetPowerUsage(h):
        check(h, "power")
        return h.power_mw

    @rec
    def nvmlDeviceGetEnforcedPowerManagementLimit(h):
        check(h, "limit")
        return h.limit_mw

    @rec
    def nvmlDeviceGetPciInfo(h):
        check(h, "pci")
        domain, bus, device = h.pci
        return types.SimpleNamespace(domain=domain, bus=bus, device=device, busId=b"%08X:%02X:%02X.0" % h.pci)

    ns = types.SimpleNamespace(
        NVMLError=NVMLError, NVMLError_NotSupported=NVMLError_NotSupported,
        NVMLError_LibraryNotFound=NVMLError_LibraryNotFound,
        NVMLError_DriverNotLoaded=NVMLError_DriverNotLoaded, NVMLError_NoPermission=NVMLError_NoPermission,
        NVML_TEMPERATURE_GPU=0, calls=calls)
    for fn in (nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetName,
               nvmlDeviceGetUtilizationRates, nvmlDeviceGetMemoryInfo, nvmlDeviceGetTemperature,
               nvmlDeviceGetPowerUsage, nvmlDeviceGetEnforcedPowerManagementLimit, nvmlDeviceGetPciInfo):
        setattr(ns, fn.__name__, fn)
    return ns


def sampler_for(module: Any, interval: float = 1.0) -> SystemSampler:
    return SystemSampler(interval=interval, nvml=Nvml(module))


def assert_host_fields(snap: SystemSnapshot) -> None:
    assert snap.cpu_percent is not None and 0.0 <= snap.cpu_percent <= 100.0
    assert snap.ram_total_bytes is not None and snap.ram_total_bytes > 0
    assert snap.ram_used_bytes is not None and 0 < snap.ram_used_bytes <= snap.ram_total_bytes
    assert snap.process_rss_bytes is not None and snap.process_rss_bytes > 0


# -- GPUs -------------------------------------------------------------------------------

def test_two_gpus_report_every_field():
    nv = fake_pynvml([FakeGpu(), FakeGpu(name="NVIDIA A100-SXM4-40GB", util=5, used=1 * GiB, total=40 * GiB,
                                         temp=33, power_mw=61_500, limit_mw=400_000, pci=(1, 0x65, 2))])
    snap = sampler_for(nv).sample_now()
    assert snap.gpu_note is None
    assert snap.gpus == (
        GpuStats(0, "NVIDIA H100 80GB HBM3", 87.0, 3.0 * GiB, 80.0 * GiB, 54.0, 215.0, 700.0, pci=0x1700),
        GpuStats(1, "NVIDIA A100-SXM4-40GB", 5.0, 1.0 * GiB, 40.0 * GiB, 33.0, 61.5, 400.0, pci=0x1_6502),
    )
    assert all(isinstance(v, float) for g in snap.gpus
               for v in (g.util_percent, g.mem_used_bytes, g.temperature_c, g.power_w, g.power_limit_w))
    assert_host_fields(snap)
    assert nv.calls.count("nvmlInit") == 1


def test_unsupported_fields_are_none_and_the_rest_present():
    nv = fake_pynvml([FakeGpu(unsupported={"temp", "power"}), FakeGpu(unsupported={"limit", "mem", "pci"})])
    g0, g1 = sampler_for(nv).sample_now().gpus
    assert (g0.temperature_c, g0.power_w) == (None, None)
    assert (g0.name, g0.util_percent, g0.mem_used_bytes, g0.mem_total_bytes, g0.power_limit_w) == (
        "NVIDIA H100 80GB HBM3", 87.0, 3.0 * GiB, 80.0 * GiB, 700.0)
    assert (g1.power_limit_w, g1.mem_used_bytes, g1.mem_total_bytes) == (None, None, None)
    assert (g1.temperature_c, g1.power_w, g1.pci, g0.pci) == (54.0, 215.0, None, 0x1700)
    assert fmt_temp(g0.temperature_c) == "N/A" and fmt_watts(g0.power_w, g0.power_limit_w) == "N/A/700 W"


def test_any_nvml_error_in_a_field_reader_is_none_but_other_errors_are_not_swallowed():
    nv = fake_pynvml([FakeGpu()])
    nvml = Nvml(nv)
    assert nvml.init() == (True, None)
    h = nvml.handle(0)

    def no_permission(_h):
        raise NVMLError_NoPermission()
    nv.nvmlDeviceGetUtilizationRates = no_permission
    assert nvml.util_percent(h) is None

    def bug(_h):
        raise KeyError("not an NVML error")
    nv.nvmlDeviceGetPowerUsage = bug
    with pytest.raises(KeyError):
        nvml.power_w(h)


def test_name_returned_as_bytes_is_decoded():
    nv = fake_pynvml([FakeGpu(name=b"Tesla V100-SXM2-16GB"), FakeGpu(name=b"caf\xc3\xa9 \xff")])
    names = [g.name for g in sampler_for(nv).sample_now().gpus]
    assert names == ["Tesla V100-SXM2-16GB", "café \ufffd"]


def test_a_gpu_whose_handle_fails_is_all_na_and_the_others_still_report():
    nv = fake_pynvml([FakeGpu(), FakeGpu()])
    real = nv.nvmlDeviceGetHandleByIndex

    def handle(i):
        if i == 1:
            raise NVMLError(15)  # GPU is lost
        return real(i)
    nv.nvmlDeviceGetHandleByIndex = handle
    g0, g1 = sampler_for(nv).sample_now().gpus
    assert g0.util_percent == 87.0
    assert g1 == GpuStats(1, None, None, None, None, None, None, None)


@pytest.mark.parametrize("error, note", [
    (NVMLError_LibraryNotFound(), "no NVIDIA driver (NVML unavailable)"),
    (NVMLError_DriverNotLoaded(), "no NVIDIA driver (NVML unavailable)"),
    (OSError("libnvidia-ml.so.1: cannot open shared object file"), "no NVIDIA driver (NVML unavailable)"),
    (NVMLError_NoPermission(), "NVML unavailable (Insufficient Permissions)"),
])
def test_nvml_init_failure_gives_no_gpus_and_a_note_in_words(error, note):
    nv = fake_pynvml([FakeGpu()], init_error=error)
    sampler = sampler_for(nv)
    snap = sampler.sample_now()
    assert snap.gpus == () and snap.gpu_note == note
    assert_host_fields(snap)
    sampler.sample_now()
    assert nv.calls.count("nvmlInit") == 1, "a missing driver is not retried every second"
    assert "nvmlDeviceGetCount" not in nv.calls
    sampler.stop()
    assert "nvmlShutdown" not in nv.calls, "nothing to shut down when init failed"


def test_missing_pynvml_gives_no_gpus_and_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    nvml = Nvml()
    assert nvml.init() == (False, system.NO_PYNVML)
    snap = SystemSampler(nvml=Nvml()).sample_now()
    assert snap.gpus == () and "pynvml" in snap.gpu_note and "NVML unavailable" in snap.gpu_note
    assert_host_fields(snap)


def test_nvml_with_zero_gpus_says_so():
    snap = sampler_for(fake_pynvml([])).sample_now()
    assert snap.gpus == () and snap.gpu_note == "NVML found no GPUs"


def test_the_real_pynvml_never_raises_here():
    """On this machine: real pynvml, with or without a driver; either GPUs or a note."""
    with SystemSampler() as sampler:
        snap = sampler.sample_now()
    assert (snap.gpus == ()) == (snap.gpu_note is not None)
    assert_host_fields(snap)


# -- the thread -------------------------------------------------------------------------

def test_thread_produces_snapshots_and_stop_ends_it_and_shuts_nvml_down():
    nv = fake_pynvml([FakeGpu()])
    sampler = sampler_for(nv, interval=0.02)
    assert sampler.latest() is None
    sampler.start()
    thread = sampler._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    wait_until(lambda: sampler.latest() is not None, timeout=5, what="a first snapshot")
    first = sampler.latest()
    assert first.gpus[0].name == "NVIDIA H100 80GB HBM3" and first.gpu_note is None
    wait_until(lambda: sampler.latest() is not first, timeout=5, what="a second snapshot")
    assert sampler.latest().t >= first.t
    with pytest.raises(FrozenInstanceError):
        first.cpu_percent = 1.0  # type: ignore[misc]
    sampler.stop()
    assert not thread.is_alive() and not sampler.running
    assert nv.calls.count("nvmlShutdown") == 1 and nv.calls[-1] == "nvmlShutdown"
    assert nv.calls.count("nvmlInit") == 1
    sampler.stop()
    assert nv.calls.count("nvmlShutdown") == 1, "stop() twice shuts down once"


def test_context_manager_starts_and_stops():
    nv = fake_pynvml([FakeGpu()])
    with sampler_for(nv, interval=0.02) as sampler:
        assert sampler.running
        wait_until(lambda: sampler.latest() is not None, timeout=5, what="a snapshot")
        thread = sampler._thread
    assert not thread.is_alive()
    assert "nvmlShutdown" in nv.calls


def test_a_psutil_failure_in_one_field_does_not_kill_sampling(monkeypatch):
    broken = threading.Event()

    def virtual_memory():
        broken.set()
        raise psutil.AccessDenied()
    monkeypatch.setattr(system.psutil, "virtual_memory", virtual_memory)
    with sampler_for(fake_pynvml([FakeGpu()]), interval=0.02) as sampler:
        wait_until(lambda: sampler.latest() is not None, timeout=5, what="a snapshot")
        first = sampler.latest()
        wait_until(lambda: sampler.latest() is not first, timeout=5, what="sampling to go on")
        snap = sampler.latest()
        assert sampler.running
    assert broken.is_set()
    assert snap.ram_used_bytes is None and snap.ram_total_bytes is None
    assert snap.cpu_percent is not None and snap.process_rss_bytes is not None
    assert snap.gpus[0].util_percent == 87.0
    assert isinstance(sampler.last_error, psutil.AccessDenied)


def test_an_unexpected_error_in_nvml_does_not_kill_sampling():
    nv = fake_pynvml([FakeGpu()])

    def count():
        raise RuntimeError("driver went away in a strange way")
    nv.nvmlDeviceGetCount = count
    with sampler_for(nv, interval=0.02) as sampler:
        wait_until(lambda: sampler.latest() is not None, timeout=5, what="a snapshot")
        first = sampler.latest()
        wait_until(lambda: sampler.latest() is not first, timeout=5, what="sampling to go on")
        assert sampler.running
    assert first.gpus == () and "driver went away" in first.gpu_note
    assert first.cpu_percent is not None


def test_no_torch_cuda_memory_unless_cuda_was_initialized(monkeypatch):
    import torch
    snap = sampler_for(fake_pynvml([])).sample_now()
    if not torch.cuda.is_initialized():
        assert snap.torch_cuda == ()
    # a fake initialized CUDA: read per device, and a failing reader is N/A
    fake_cuda = types.SimpleNamespace(
        is_initialized=lambda: True, is_available=lambda: True, device_count=lambda: 2,
        memory_allocated=lambda i: 100 * (i + 1), memory_reserved=lambda i: 200 * (i + 1),
        max_memory_allocated=lambda i: (_ for _ in ()).throw(RuntimeError("x")) if i else 300)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    mem = sampler_for(fake_pynvml([])).sample_now().torch_cuda
    assert [(m.device_index, m.allocated_bytes, m.reserved_bytes, m.peak_bytes) for m in mem] == [
        (0, 100.0, 200.0, 300.0), (1, 200.0, 400.0, None)]


def test_the_sampler_never_initializes_cuda(monkeypatch):
    asked = []
    fake_cuda = types.SimpleNamespace(
        is_initialized=lambda: False, is_available=lambda: asked.append("is_available") or True,
        device_count=lambda: asked.append("device_count") or 1,
        memory_allocated=lambda i: asked.append("memory_allocated") or 0)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    assert sampler_for(fake_pynvml([])).sample_now().torch_cuda == ()
    assert asked == []


# -- formatting -------------------------------------------------------------------------

@pytest.mark.parametrize("n, text", [
    (None, "N/A"), (float("nan"), "N/A"), (0, "0 B"), (512, "512 B"), (1023, "1023 B"),
    (1024, "1.0 KiB"), (1536, "1.5 KiB"), (2**20 - 1, "1.0 MiB"), (3.2 * GiB, "3.2 GiB"),
    (80 * GiB, "80.0 GiB"), (2.5 * 2**40, "2.5 TiB"), (3 * 2**60, "3072.0 PiB"), (-2048, "-2.0 KiB"),
])
def test_fmt_bytes(n, text):
    assert fmt_bytes(n) == text


def test_fmt_percent_temp_watts():
    assert fmt_percent(None) == "N/A"
    assert fmt_percent(42.4) == "42%" and fmt_percent(42.46, digits=1) == "42.5%" and fmt_percent(0) == "0%"
    assert fmt_temp(None) == "N/A" and fmt_temp(54.4) == "54°C"
    assert fmt_watts(215.2, 700.0) == "215/700 W"
    assert fmt_watts(None, 700.0) == "N/A/700 W"
    assert fmt_watts(215.0, None) == "215/N/A W"
    assert fmt_watts(None, None) == "N/A"


def test_sampler_rejects_a_bad_interval():
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError):
            SystemSampler(interval=bad)


# -- import hygiene ---------------------------------------------------------------------

def test_importing_system_pulls_in_no_ui_library_and_no_pynvml():
    code = textwrap.dedent("""
        import sys
        import tuitrain.tui.system
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "rich", "plotext", "pynvml"))
        assert not bad, bad
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_watched_run_that_exited_reads_ended_not_an_rss_of_0_b() -> None:
    """The dashboard's child run, once it exits, is a zombie until reaped: its RSS reads 0 B."""
    from tuitrain.tui.widgets.system_panel import SystemPanel

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        sampler = SystemSampler(pid=child.pid, nvml=Nvml(fake_pynvml([])))
        live = sampler.sample_now()
        assert live.process_rss_bytes and live.process_rss_bytes > 0 and not live.process_ended
        assert child.stdin is not None
        child.stdin.close()
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, what="the child a zombie")
        zombie = sampler.sample_now()
        assert zombie.process_ended and zombie.process_rss_bytes is None, zombie
        child.wait()
        assert sampler.sample_now().process_ended  # reaped: gone
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    panel = SystemPanel()
    shown: list[str] = []
    panel.set_content = lambda renderable, text: shown.append(text)  # type: ignore[method-assign]
    panel.show(zombie)
    assert f"run (pid {child.pid}) ended" in shown[-1] and "RSS" not in shown[-1], shown[-1]
