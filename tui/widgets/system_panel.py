"""GPU, CPU and memory readings from the SystemSampler's latest snapshot, and the run's own
RSS and torch CUDA memory from its ProcessStats event when the run sends them."""

from __future__ import annotations

from rich.text import Text

from tuitrain.engine import events as ev
from tuitrain.tui.system import GpuStats, SystemSnapshot, fmt_bytes, fmt_percent, fmt_temp, fmt_watts, with_run_process
from tuitrain.tui.widgets.text_panel import TextPanel


#: Ranks listed one line each; a bigger group is summed up in one more line.
MAX_RANK_LINES = 8


def group_ranks(process: ev.ProcessStats | None) -> list[dict]:
    """The ranks a group's ProcessStats carries (it came over a socket: anything malformed is left out)."""
    entries = getattr(process, "ranks", None)
    return [r for r in entries if isinstance(r, dict) and isinstance(r.get("rank"), int)] \
        if isinstance(entries, (list, tuple)) else []


def nvml_index(pci: object, ordinal: object, gpus: tuple[GpuStats, ...]) -> int | None:
    """NVML's index of the GPU a run's CUDA device is, found by PCI location: a CUDA ordinal is NVML's
    index only when CUDA_VISIBLE_DEVICES does not renumber and CUDA's fastest-first order happens to
    be PCI order. By the ordinal only when the run or NVML could not say where the GPU sits."""
    if isinstance(pci, int) and any(g.pci is not None for g in gpus):
        return next((g.index for g in gpus if g.pci == pci), None)
    return ordinal if isinstance(ordinal, int) else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class SystemPanel(TextPanel):
    def show(self, snap: SystemSnapshot | None, process: ev.ProcessStats | None = None) -> None:
        """`process`: the run's latest ProcessStats (DashboardState.process); it replaces the
        sampler's process RSS and torch CUDA lines, since only the run's process knows those."""
        snap = with_run_process(snap, process)
        if snap is None:
            self.set_content(Text("system: sampling…"), None)
            return
        lines = []
        ranks = group_ranks(process)
        on_gpu: dict[int, list[int]] = {}
        for r in ranks:
            index = nvml_index(r.get("cuda_pci"), r.get("cuda_device"), snap.gpus)
            if index is not None:
                on_gpu.setdefault(index, []).append(r["rank"])
        # One process (no ranks): the GPUs whose memory the run's torch holds.
        this_run = set() if ranks or process is None else \
            {nvml_index(m.pci, m.device_index, snap.gpus) for m in snap.torch_cuda}
        for gpu in snap.gpus:
            used = on_gpu.get(gpu.index)
            mark = f" · rank {', '.join(map(str, used))}" if used else " · this run" if gpu.index in this_run else ""
            lines.append(f"GPU{gpu.index} {gpu.name or 'N/A'}{mark}")
            lines.append(f"  util {fmt_percent(gpu.util_percent)} · mem {fmt_bytes(gpu.mem_used_bytes)}"
                         f"/{fmt_bytes(gpu.mem_total_bytes)}")
            lines.append(f"  {fmt_temp(gpu.temperature_c)} · {fmt_watts(gpu.power_w, gpu.power_limit_w)}")
        if not snap.gpus:
            lines.append(f"GPU: {snap.gpu_note or 'none'}")
        for mem in snap.torch_cuda:
            lines.append(f"torch cuda:{mem.device_index} alloc {fmt_bytes(mem.allocated_bytes)} · "
                         f"reserved {fmt_bytes(mem.reserved_bytes)} · peak {fmt_bytes(mem.peak_bytes)}")
        lines.append(f"CPU {fmt_percent(snap.cpu_percent)} · RAM {fmt_bytes(snap.ram_used_bytes)}"
                     f"/{fmt_bytes(snap.ram_total_bytes)}")
        lines.append(f"{snap.process_label} ended" if snap.process_ended
                     else f"{snap.process_label} RSS {fmt_bytes(snap.process_rss_bytes)}")
        for r in ranks[:MAX_RANK_LINES]:
            cuda = (f" · cuda:{r['cuda_device']} {fmt_bytes(_number(r.get('cuda_allocated_bytes')))}"
                    f" (peak {fmt_bytes(_number(r.get('cuda_peak_bytes')))})"
                    if isinstance(r.get("cuda_device"), int) else "")
            rate = _number(r.get("steps_per_sec"))
            lines.append(f"rank {r['rank']} {'N/A' if rate is None else f'{rate:,.0f}'} steps/s · RSS "
                         f"{fmt_bytes(_number(r.get('rss_bytes')))}{cuda}")
        if len(ranks) > MAX_RANK_LINES:
            lines.append(f"… {len(ranks) - MAX_RANK_LINES} more ranks")
        text = "\n".join(lines)
        self.set_content(Text(text), text)
