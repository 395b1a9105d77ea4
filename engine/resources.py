"""What only the run's own process can tell about itself, for viewers: its RSS and torch's CUDA memory.

A watcher in another process can read the machine (NVML, psutil), but not
what torch's caching allocator holds inside the run, and on another host not
even the run's RSS. So the Trainer samples them here, at its log interval but
at most once a second (`INTERVAL`), and emits a live-only ProcessStats event
(never written to metrics.jsonl; the control socket carries it to watchers).

Looking must cost the run nothing and change nothing: psutil reads one
/proc file, and torch.cuda is asked only when CUDA is already initialized in
this process (torch already imported, `is_initialized()`), never started
just to look. A field that cannot be read is None, never an exception.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import psutil

from .events import ProcessStats

__all__ = ["INTERVAL", "ProcessProbe", "RANK_FIELDS", "cuda_memory", "cuda_pci", "pci_key", "rank_numbers",
           "silent_ranks"]

#: The fewest seconds between two samples (the system panel redraws about once a second).
INTERVAL = 1.0


def cuda_memory(cuda: Any | None = None) -> list[dict[str, int | None]]:
    """torch's CUDA memory per device this process has used: allocated, reserved and peak bytes.

    `cuda` is torch.cuda (tests pass a fake); without torch in this process, or
    before CUDA is initialized, the list is empty. A device on which the
    allocator holds nothing and never did is left out (one GPU of eight used:
    one entry).
    """
    if cuda is None:
        torch = sys.modules.get("torch")  # the run has imported it; never import it just to look
        cuda = getattr(torch, "cuda", None)
        if cuda is None:
            return []
    try:
        # is_initialized() first: asking anything else might be what initializes CUDA.
        if not (cuda.is_initialized() and cuda.is_available()):
            return []
        count = int(cuda.device_count())
    except Exception:  # noqa: BLE001 - a broken CUDA is "no CUDA memory to show", not a failed run
        return []
    out: list[dict[str, int | None]] = []
    for i in range(count):
        allocated = _bytes(cuda.memory_allocated, i)
        reserved = _bytes(cuda.memory_reserved, i)
        peak = _bytes(cuda.max_memory_allocated, i)
        if not any((allocated, reserved, peak)):
            continue  # not a device this run uses (0 or unreadable everywhere)
        out.append({"device": i, "allocated_bytes": allocated, "reserved_bytes": reserved, "peak_bytes": peak,
                    "pci": cuda_pci(i, cuda)})
    return out


def _bytes(read: Any, device: int) -> int | None:
    try:
        value = int(read(device))
    except Exception:  # noqa: BLE001 - one unreadable field is N/A
        return None
    return value if value >= 0 else None


#: What each rank of a torchrun group reports at a flush, in this order (one small all_gather).
RANK_FIELDS = ("pid", "steps_per_sec", "rss_bytes", "cuda_device", "cuda_allocated_bytes", "cuda_reserved_bytes",
               "cuda_peak_bytes", "cuda_pci")


def pci_key(domain: int, bus: int, device: int) -> int:
    """A GPU's PCI location as one number: the name NVML and CUDA share. Their indexes differ whenever
    CUDA_VISIBLE_DEVICES renumbers the devices or CUDA orders them fastest first (its default)."""
    return (int(domain) << 16) | (int(bus) << 8) | int(device)


def cuda_pci(index: int, cuda: Any | None = None) -> int | None:
    """pci_key of CUDA device `index` of this process (`cuda`: torch.cuda, or a test's fake); None
    when torch cannot say."""
    try:
        cuda = cuda if cuda is not None else sys.modules["torch"].cuda
        props = cuda.get_device_properties(index)
        return pci_key(props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
    except Exception:  # noqa: BLE001 - an older torch without the fields, or no CUDA: N/A
        return None


def rank_numbers(steps_per_sec: float, device: Any, process: "psutil.Process | None" = None) -> list[float]:
    """This rank's RANK_FIELDS as numbers (-1: none), for the group's gather at a flush."""
    rss = -1.0
    try:
        rss = float((process or psutil.Process()).memory_info().rss)
    except Exception:  # noqa: BLE001 - N/A, the run goes on
        pass
    cuda = [-1.0] * 5
    if getattr(device, "type", None) == "cuda":
        index = device.index or 0
        mine = [m for m in cuda_memory() if m["device"] == index]
        memory = (mine[0]["allocated_bytes"], mine[0]["reserved_bytes"], mine[0]["peak_bytes"], mine[0].get("pci")) \
            if mine else (None, None, None, cuda_pci(index))
        cuda = [-1.0 if v is None else float(v) for v in (index, *memory)]
    return [float(os.getpid()), float(steps_per_sec), rss, *cuda]


def silent_ranks(ranks: list[dict[str, Any]], me: int) -> list[int]:
    """The ranks of this machine, from the last gather's rows (`ranks`, with "rank" and "pid"), whose
    process has exited, is a zombie or is stopped: the ones a failed collective was waiting for.

    Only this machine's ranks can be looked up by pid: torchrun numbers one agent's ranks as one
    block (LOCAL_RANK 0 .. LOCAL_WORLD_SIZE-1 from the block's first rank). A rank that hangs while
    running is not found here, and neither is one on another machine.
    """
    try:
        first = me - int(os.environ.get("LOCAL_RANK", "0"))
        size = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    except ValueError:
        return []
    gone = []
    for row in ranks:
        rank, pid = row.get("rank"), row.get("pid")
        if not (isinstance(rank, int) and isinstance(pid, int)) or rank == me or not first <= rank < first + size:
            continue
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            status = psutil.STATUS_DEAD
        except psutil.Error:
            continue
        if status in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
            gone.append(rank)
    return gone


class ProcessProbe:
    """Samples this process for ProcessStats, at most once per `interval` seconds.

    `due()` is one clock read, so the Trainer can ask at every flush; `sample()`
    costs about a /proc read plus, on CUDA, a few allocator counters.
    """

    def __init__(self, interval: float = INTERVAL, cuda: Any | None = None) -> None:
        self.interval = interval
        self._cuda = cuda
        self._pid = os.getpid()
        self._process: psutil.Process | None = None
        self._last = -float("inf")

    def due(self, now: float | None = None) -> bool:
        """Has `interval` passed since the last sample (time.monotonic())?"""
        return (time.monotonic() if now is None else now) - self._last >= self.interval

    def sample(self, step: int, t: float, ranks: list[dict[str, Any]] | None = None) -> ProcessStats:
        """The ProcessStats of this process now (and the interval starts again)."""
        self._last = time.monotonic()
        pid = os.getpid()
        if pid != self._pid or self._process is None:  # a forked child measures itself, not its parent
            self._pid, self._process = pid, None
            try:
                self._process = psutil.Process(pid)
            except Exception:  # noqa: BLE001
                self._process = None
        rss: int | None = None
        if self._process is not None:
            try:
                rss = int(self._process.memory_info().rss)
            except Exception:  # noqa: BLE001 - N/A, the run goes on
                rss = None
        return ProcessStats(step, t, pid=pid, rss_bytes=rss, cuda=cuda_memory(self._cuda), ranks=list(ranks or []))
