"""Text both rooms print: the run's last lines and sizes (the run process's headless reporter, and the
dashboard once it closed). No torch: the viewer uses it."""

from __future__ import annotations

from tuitrain.engine import events as ev


def size_text(n: float) -> str:
    """Bytes as people read them: 812 B, 1.4 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def final_lines(e: ev.RunEnded, metric: str) -> list[tuple[str, bool]]:
    """What a run prints when it ends, as (line, to stderr): headless, and the dashboard once it closed."""
    s = ev.RunSummary.from_dict(e.summary)
    failed = e.status in ("failed", "died")
    line = (f"{e.status}: {_count(s.epochs, 'epoch')}, {_count(s.steps, 'step')} in {s.train_seconds:.1f} s "
            f"({s.steps_per_sec:,.0f} steps/s)")
    if s.best_val_loss is not None:
        line += f" | best val {s.best_val_loss:.4f} (epoch {s.best_epoch})"
    value = (s.final or {}).get(f"val_{metric}")
    if value is not None:
        line += f" | val {metric} {value:.4f}"
    out = [(line, failed)]
    if e.status == "failed":
        out.append((f"error: {s.reason} (details in {s.run_dir}/error.txt)"
                    if "error.txt" not in s.reason else f"error: {s.reason}", True))
    elif e.status == "died":
        out.append((f"error: {s.reason}", True))
    out.append((f"run dir: {s.run_dir}", False))
    return out


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
