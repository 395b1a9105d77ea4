"""Machine load for the dashboard: CPU, RAM, NVIDIA GPUs (NVML) and torch CUDA memory.

A `SystemSampler` samples about once a second in its own daemon thread and
swaps in a new immutable `SystemSnapshot`; the UI reads `latest()` on its own
timer and never waits for the sampler (the nvitop habit).

Everything degrades field by field: a field that cannot be read is None (shown
as "N/A"), never an exception. Every pynvml call is wrapped once, in `Nvml`;
without a driver (or without pynvml) the snapshot has no GPUs and `gpu_note`
says why in words.

The viewer's sampler (the engine never samples the machine for a screen).
psutil and the standard library only: no textual, no rich, and never an
import of torch, which a viewer does not load; torch's CUDA memory is read
only when torch is already in this process (a dashboard in the run's process).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable, TypeVar

import psutil

from tuitrain.engine.resources import pci_key

__all__ = [
    "GpuStats",
    "TorchCudaMemory",
    "SystemSnapshot",
    "Nvml",
    "SystemSampler",
    "with_run_process",
    "fmt_bytes",
    "fmt_percent",
    "fmt_watts",
    "fmt_temp",
]

T = TypeVar("T")

NO_DRIVER = "no NVIDIA driver (NVML unavailable)"
NO_PYNVML = "pynvml is not installed (NVML unavailable)"
NO_GPUS = "NVML found no GPUs"


# -- snapshots --------------------------------------------------------------------

@dataclass(frozen=True)
class GpuStats:
    """One NVIDIA GPU as NVML reports it; None = NVML could not read that field (N/A)."""

    index: int
    name: str | None
    util_percent: float | None
    mem_used_bytes: float | None
    mem_total_bytes: float | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    pci: int | None = None
    """Its PCI location (engine.resources.pci_key): how a run's CUDA device is found among NVML's GPUs."""


@dataclass(frozen=True)
class TorchCudaMemory:
    """What this process's torch caching allocator holds on one CUDA device."""

    device_index: int
    allocated_bytes: float | None
    reserved_bytes: float | None
    peak_bytes: float | None
    pci: int | None = None
    """The GPU's PCI location (engine.resources.pci_key), when the run could say: which NVML GPU it is."""


@dataclass(frozen=True)
class SystemSnapshot:
    """One sample of the machine. Numeric fields are None when they could not be read."""

    t: float
    """Unix time in seconds."""
    cpu_percent: float | None
    """System-wide CPU load since the previous sample (0-100)."""
    ram_used_bytes: float | None
    ram_total_bytes: float | None
    process_rss_bytes: float | None
    """Resident memory of this process."""
    gpus: tuple[GpuStats, ...]
    gpu_note: str | None
    """Why there are no GPUs, in words; None when GPUs are listed."""
    torch_cuda: tuple[TorchCudaMemory, ...]
    """Empty unless this process has already initialized CUDA through torch."""
    process_label: str = "process"
    """Whose RSS process_rss_bytes is: 'process' (this one) or 'run (pid N)' (a watched run's)."""
    process_ended: bool = False
    """The watched run's process has exited (gone, or a zombie whose RSS reads 0): no RSS to show."""


# -- NVML ---------------------------------------------------------------------------

class Nvml:
    """Every pynvml call the sampler makes, wrapped once.

    `module` is the pynvml module (tests pass a fake one); by default pynvml is
    imported lazily in `init()`. Field readers return None on any NVMLError
    (NotSupported, NoPermission, GpuIsLost ...).
    """

    def __init__(self, module: ModuleType | Any | None = None) -> None:
        self._module = module
        self._initialized = False
        self._handles: dict[int, Any] = {}

    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def module(self) -> Any:
        return self._module

    def init(self) -> tuple[bool, str | None]:
        """Start NVML: (True, None), or (False, a reason in words) instead of raising."""
        if self._initialized:
            return True, None
        if self._module is None:
            try:
                import pynvml
            except ImportError:
                return False, NO_PYNVML
            self._module = pynvml
        nv = self._module
        try:
            nv.nvmlInit()
        except OSError:
            return False, NO_DRIVER
        except nv.NVMLError as err:
            driver_errors = tuple(c for c in (getattr(nv, "NVMLError_LibraryNotFound", None),
                                              getattr(nv, "NVMLError_DriverNotLoaded", None))
                                  if isinstance(c, type))
            if driver_errors and isinstance(err, driver_errors):
                return False, NO_DRIVER
            return False, f"NVML unavailable ({_describe(err)})"
        self._initialized = True
        self._handles.clear()
        return True, None

    def shutdown(self) -> None:
        """Stop NVML if `init()` started it; never raises."""
        if not self._initialized:
            return
        self._initialized = False
        self._handles.clear()
        try:
            self._module.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down is best effort
            pass

    def _call(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except self._module.NVMLError:
            return None

    def device_count(self) -> int | None:
        """How many GPUs NVML sees; None when it cannot say."""
        count = self._call(self._module.nvmlDeviceGetCount)
        return None if count is None else int(count)

    def handle(self, index: int) -> Any | None:
        if index not in self._handles:
            h = self._call(lambda: self._module.nvmlDeviceGetHandleByIndex(index))
            if h is None:
                return None
            self._handles[index] = h
        return self._handles[index]

    def name(self, handle: Any) -> str | None:
        raw = self._call(lambda: self._module.nvmlDeviceGetName(handle))
        if raw is None:
            return None
        if isinstance(raw, (bytes, bytearray)):
            return bytes(raw).decode("utf-8", errors="replace")
        return str(raw)

    def util_percent(self, handle: Any) -> float | None:
        rates = self._call(lambda: self._module.nvmlDeviceGetUtilizationRates(handle))
        return None if rates is None else float(rates.gpu)

    def memory(self, handle: Any) -> tuple[float | None, float | None]:
        """(used, total) in bytes."""
        info = self._call(lambda: self._module.nvmlDeviceGetMemoryInfo(handle))
        if info is None:
            return None, None
        return float(info.used), float(info.total)

    def temperature_c(self, handle: Any) -> float | None:
        nv = self._module
        temp = self._call(lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        return None if temp is None else float(temp)

    def power_w(self, handle: Any) -> float | None:
        mw = self._call(lambda: self._module.nvmlDeviceGetPowerUsage(handle))
        return None if mw is None else mw / 1000.0

    def power_limit_w(self, handle: Any) -> float | None:
        mw = self._call(lambda: self._module.nvmlDeviceGetEnforcedPowerManagementLimit(handle))
        return None if mw is None else mw / 1000.0

    def pci(self, handle: Any) -> int | None:
        info = self._call(lambda: self._module.nvmlDeviceGetPciInfo(handle))
        return None if info is None else pci_key(info.domain, info.bus, info.device)

    def gpu_stats(self, index: int) -> GpuStats:
        """All fields of one GPU; a GPU whose handle cannot be had is all N/A."""
        h = self.handle(index)
        if h is None:
            return GpuStats(index, None, None, None, None, None, None, None)
        used, total = self.memory(h)
        return GpuStats(index=index, name=self.name(h), util_percent=self.util_percent(h),
                        mem_used_bytes=used, mem_total_bytes=total,
                        temperature_c=self.temperature_c(h), power_w=self.power_w(h),
                        power_limit_w=self.power_limit_w(h), pci=self.pci(h))


def _describe(err: BaseException) -> str:
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break sampling
        text = ""
    return text or type(err).__name__


# -- the sampler --------------------------------------------------------------------

class SystemSampler:
    """Samples the machine every `interval` seconds in a daemon thread.

    `latest()` is a plain attribute read of the newest immutable snapshot (None
    before the first one). Sampling errors never leave the thread; the last one
    is kept in `last_error` for debugging.
    """

    def __init__(self, interval: float = 1.0, nvml: Nvml | None = None, pid: int | None = None) -> None:
        """`pid`: the process whose RSS to report (a watched run's, from run.pid); default this one."""
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.interval = float(interval)
        self.nvml = nvml if nvml is not None else Nvml()
        self.last_error: BaseException | None = None
        self._latest: SystemSnapshot | None = None
        self._lock = threading.Lock()  # one sample at a time (NVML state, cpu_percent window)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_state: tuple[bool, str | None] | None = None  # init() result, tried once
        self._cpu_primed = False
        self._process: psutil.Process | None = None
        self.pid = pid

    # lifecycle

    def start(self) -> SystemSampler:
        """Start the sampling thread (no-op if it is running)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._prime_cpu()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tuitrain-system-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """End the thread (waits for it) and shut NVML down. Safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self.nvml.shutdown()
            self._nvml_state = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> SystemSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def latest(self) -> SystemSnapshot | None:
        return self._latest

    def _loop(self) -> None:
        # The first sample comes soon (cpu_percent was primed in start()), then one per interval.
        wait = min(self.interval, 0.1)
        while not self._stop.wait(wait):
            try:
                self._latest = self.sample_now()
            except Exception as err:  # noqa: BLE001 - sampling must never kill the thread
                self.last_error = err
            wait = self.interval

    # sampling

    def sample_now(self) -> SystemSnapshot:
        """Take one sample in the calling thread, store it as the latest, and return it."""
        with self._lock:
            cpu = self._field(lambda: psutil.cpu_percent(interval=None))
            vm = self._field(psutil.virtual_memory)
            ram_used = self._field(lambda: vm.used) if vm is not None else None
            ram_total = self._field(lambda: vm.total) if vm is not None else None
            rss, ended = self._process_rss()
            gpus, note = self._sample_gpus()
            torch_cuda = self._sample_torch_cuda()
            snap = SystemSnapshot(t=time.time(), cpu_percent=_num(cpu), ram_used_bytes=_num(ram_used),
                                  ram_total_bytes=_num(ram_total), process_rss_bytes=_num(rss),
                                  gpus=gpus, gpu_note=note, torch_cuda=torch_cuda,
                                  process_label="process" if self.pid is None else f"run (pid {self.pid})",
                                  process_ended=ended)
            self._latest = snap
            return snap

    def _prime_cpu(self) -> None:
        if not self._cpu_primed:
            self._field(lambda: psutil.cpu_percent(interval=None))
            self._cpu_primed = True

    def _process_rss(self) -> tuple[float | None, bool]:
        """(RSS in bytes or None, whether the watched run's process has ended). A child that exited but
        is not yet reaped is a zombie, whose RSS reads 0 B: that is "ended", not a number."""
        try:
            process = self._get_process()
            if self.pid is not None and process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None, True
            return _num(process.memory_info().rss), False
        except psutil.NoSuchProcess:  # ZombieProcess too
            return None, self.pid is not None
        except Exception as err:  # noqa: BLE001 - N/A, not a failure
            self.last_error = err
            return None, False

    def _get_process(self) -> psutil.Process:
        if self._process is None:
            self._process = psutil.Process(self.pid)  # None: this process
        return self._process

    def _field(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one unreadable field is N/A, not a failure
            self.last_error = err
            return None

    def _sample_gpus(self) -> tuple[tuple[GpuStats, ...], str | None]:
        try:
            if self._nvml_state is None:
                self._nvml_state = self.nvml.init()  # tried once: no retry storm without a driver
            ok, reason = self._nvml_state
            if not ok:
                return (), reason or NO_DRIVER
            count = self.nvml.device_count()
            if count is None:
                return (), "NVML could not count the GPUs"
            if count == 0:
                return (), NO_GPUS
            return tuple(self.nvml.gpu_stats(i) for i in range(count)), None
        except Exception as err:  # noqa: BLE001 - a misbehaving NVML is N/A, not a crash
            self.last_error = err
            return (), f"NVML error ({_describe(err)})"

    def _sample_torch_cuda(self) -> tuple[TorchCudaMemory, ...]:
        torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to look
        if torch is None:
            return ()
        try:
            cuda = torch.cuda
            # is_initialized() first: the sampler must never be the one to initialize CUDA.
            if not (cuda.is_initialized() and cuda.is_available()):
                return ()
            count = cuda.device_count()
        except Exception as err:  # noqa: BLE001
            self.last_error = err
            return ()
        out = []
        for i in range(count):
            out.append(TorchCudaMemory(
                device_index=i,
                allocated_bytes=_num(self._field(lambda: cuda.memory_allocated(i))),
                reserved_bytes=_num(self._field(lambda: cuda.memory_reserved(i))),
                peak_bytes=_num(self._field(lambda: cuda.max_memory_allocated(i))),
            ))
        return tuple(out)


def with_run_process(snap: SystemSnapshot | None, process: Any | None) -> SystemSnapshot | None:
    """`snap` with the run's own RSS and torch CUDA memory from its ProcessStats event, when there is one.

    Only the run's process knows what torch's allocator holds (a watcher never
    loads torch), and its RSS is the number to watch: so those come from the
    run's event, and the machine (GPUs, CPU, RAM) from the local sampler. The
    event arrived over a socket: a field of the wrong type reads N/A, never an
    error. Without an event (or before the first sample) `snap` is returned as is.
    """
    if snap is None or process is None:
        return snap
    pid = getattr(process, "pid", None)
    label = f"run (pid {pid})" if isinstance(pid, int) and not isinstance(pid, bool) else "run"
    cuda = []
    entries = getattr(process, "cuda", None)
    for entry in entries if isinstance(entries, (list, tuple)) else ():
        device = entry.get("device") if isinstance(entry, dict) else None
        if not isinstance(device, int) or isinstance(device, bool):
            continue
        pci = entry.get("pci")
        cuda.append(TorchCudaMemory(device_index=device, allocated_bytes=_num(entry.get("allocated_bytes")),
                                    reserved_bytes=_num(entry.get("reserved_bytes")),
                                    peak_bytes=_num(entry.get("peak_bytes")),
                                    pci=pci if isinstance(pci, int) and not isinstance(pci, bool) else None))
    return replace(snap, process_rss_bytes=_num(getattr(process, "rss_bytes", None)), process_label=label,
                   torch_cuda=tuple(cuda))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# -- formatting (pure; for the UI) --------------------------------------------------

_NA = "N/A"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt_bytes(n: float | None) -> str:
    """Binary units: 512 -> "512 B", 3.2 * 2**30 -> "3.2 GiB"; None -> "N/A"."""
    if not _finite(n):
        return _NA
    value = float(n)  # type: ignore[arg-type]
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 1024:
        return f"{sign}{value:.0f} B"
    for unit in _UNITS[1:]:
        value /= 1024
        # round first, so 1023.96 KiB reads "1.0 MiB" and not "1024.0 KiB"
        if round(value, 1) < 1024 or unit == _UNITS[-1]:
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_percent(p: float | None, digits: int = 0) -> str:
    """42.4 -> "42%" (digits=1: "42.4%"); None -> "N/A"."""
    if not _finite(p):
        return _NA
    return f"{float(p):.{digits}f}%"  # type: ignore[arg-type]


def fmt_watts(draw: float | None, limit: float | None = None) -> str:
    """Power draw over the limit: "215/700 W", "N/A/700 W", "215/N/A W"; both missing -> "N/A"."""
    has_draw, has_limit = _finite(draw), _finite(limit)
    if not has_draw and not has_limit:
        return _NA
    d = f"{float(draw):.0f}" if has_draw else _NA  # type: ignore[arg-type]
    lim = f"{float(limit):.0f}" if has_limit else _NA  # type: ignore[arg-type]
    return f"{d}/{lim} W"


def fmt_temp(c: float | None) -> str:
    """54.0 -> "54°C"; None -> "N/A"."""
    if not _finite(c):
        return _NA
    return f"{float(c):.0f}°C"  # type: ignore[arg-type]
