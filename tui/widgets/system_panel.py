"""GPU, CPU and memory readings from the SystemSampler's latest snapshot, and the run's own
RSS and torch CUDA memory from its ProcessStats event when the run sends them."""

from __future__ import annotations

from rich.text import Text

from tuitrain.engine import events as ev
from tuitrain.tui.system import SystemSnapshot, fmt_bytes, fmt_percent, fmt_temp, fmt_watts, with_run_process
from tuitrain.tui.widgets.text_panel import TextPanel


class SystemPanel(TextPanel):
    def show(self, snap: SystemSnapshot | None, process: ev.ProcessStats | None = None) -> None:
        """`process`: the run's latest ProcessStats (DashboardState.process); it replaces the
        sampler's process RSS and torch CUDA lines, since only the run's process knows those."""
        snap = with_run_process(snap, process)
        if snap is None:
            self.set_content(Text("system: sampling…"), None)
            return
        lines = []
        for gpu in snap.gpus:
            lines.append(f"GPU{gpu.index} {gpu.name or 'N/A'}")
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
        lines.append(f"{snap.process_label} RSS {fmt_bytes(snap.process_rss_bytes)}")
        text = "\n".join(lines)
        self.set_content(Text(text), text)
