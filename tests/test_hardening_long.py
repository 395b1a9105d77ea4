"""Long runs and many runs: memory stays bounded, the record stays valid, nothing leaks.

- A 1,000,000-step run (a scalar model, batch 1) keeps the process RSS within
  64 MB of what it was after warm-up, and metrics.jsonl holds every step once,
  every line valid. Measured here (a loaded 2-core box): 1M steps in 178 s,
  RSS growth 0.3 MB after warm-up (before the fixes below: 73 MB, and 1.5 GB
  of batch views). The full run is marked slow and runs only with
  TUITRAIN_SLOW=1; the default suite runs the same check over 20,000 steps
  with the bound scaled down to the steps (the same bytes per step: 64 MB
  per 60,000 steps), to keep CI short.
- The dashboard's state after a million steps costs what it cost after ten
  thousand: applying a batch of steps and building the loss plot's columns.
- Ten runs back to back in one process leave no thread, file descriptor,
  DataLoader worker process or CUDA memory behind.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conftest import SLOW, classifier_preset, make_cfg

from tuitrain.engine import events as ev
from tuitrain.engine.rundir import read_metrics
from tuitrain.engine.trainer import Trainer
from tuitrain.presets.base import Data, Preset

MB = 2**20
RSS_BOUND = 64 * MB
#: The shortest run that gets RSS_BOUND whole; a shorter one gets it in proportion (the same growth per step).
BOUND_STEPS = 60_000
#: Never tighter than this: the allocator's own noise after warm-up (measured growth: 0.3 MB per 1M steps).
MIN_BOUND = 16 * MB


def _line_preset(n: int) -> Preset:
    """w * x on x = +-1, n training samples: one epoch at batch 1 is n optimizer steps."""
    x = torch.tensor([[1.0], [-1.0]]).repeat(n // 2, 1)

    def make_data(seed: int) -> Data:
        return Data(train=(x, 2 * x), val=(x[:2], 2 * x[:2]))

    return Preset("line", "scalar regression", "regression", make_data, lambda: nn.Linear(1, 1, bias=False))


def _long_run(tmp_path: Path, steps: int) -> None:
    proc = psutil.Process()
    samples: list[tuple[int, int]] = []

    def listener(event: ev.Event) -> None:
        if isinstance(event, ev.StepStats):  # one per flush (every 0.25 s)
            samples.append((event.step, proc.memory_info().rss))

    R = tmp_path / "R"
    cfg = make_cfg(epochs=1, batch_size=1, lr=0.001, log_interval=0.25, scheduler="none")
    # As the headless runner sets it up: the reporter listens, and the unread buffer keeps nothing.
    trainer = Trainer(cfg, _line_preset(steps), R, listeners=[listener], events=ev.EventBuffer(maxlen=0))
    started = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - started
    assert result.status == "finished" and result.summary["steps"] == steps

    warm = [rss for step, rss in samples if step >= steps // 10]
    assert len(warm) >= 5, samples
    growth = max(warm) - warm[0]
    bound = max(MIN_BOUND, RSS_BOUND * min(1.0, steps / BOUND_STEPS))
    print(f"\n{steps:,} steps in {seconds:.1f} s ({steps / seconds:,.0f} steps/s); "
          f"RSS after warm-up {warm[0] / MB:.0f} MB, growth {growth / MB:.1f} MB (bound {bound / MB:.0f} MB)")
    assert growth <= bound, f"RSS grew {growth / MB:.1f} MB after warm-up (bound {bound / MB:.0f} MB)"

    # Every line valid, every step on record exactly once, in order.
    n = 0
    with open(R / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            assert line.endswith("\n")
    for record in read_metrics(R / "metrics.jsonl"):
        if record.get("kind") == "step":
            n += 1
            assert record["step"] == n
    assert n == steps


def test_headless_keeps_no_unread_event_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the million-step run: headless never reads trainer.events, and a full buffer of step
    batches held 73 MB after 100k steps (and would reach ~1 GB at 10,000 events)."""
    import tuitrain.tui.cli as cli
    import tuitrain.tui.run_process as run_process

    seen: dict = {}
    real = run_process.PreparedRun.start

    def start(self, relay, **kwargs):  # type: ignore[no-untyped-def]
        trainer = real(self, relay, **kwargs)
        seen["trainer"] = trainer
        return trainer

    monkeypatch.setattr(run_process.PreparedRun, "start", start)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--preset", "circles", "--headless", "--max-steps", "300", "--run-dir", "R"]) == 0
    assert len(seen["trainer"].events) == 0 and seen["trainer"].events.dropped > 0


@pytest.mark.parametrize("size,bs,drop_last,start", [(10_000, 1, False, 0), (10_000, 1, False, 3000),
                                                     (5000, 3, True, 0), (5000, 3, False, 1666),
                                                     (3000, 7, True, 428), (64, 8, False, 7), (64, 100, False, 0)])
def test_batches_split_a_chunk_at_a_time_are_the_same_batches(size: int, bs: int, drop_last: bool,
                                                               start: int) -> None:
    """Found by the million-step run: splitting a whole epoch at once kept a view per batch alive
    (~1 KB each: 1.5 GB at a million samples and batch size 1); now a chunk at a time, same batches."""
    from tuitrain.engine.batching import TensorBatches, epoch_generator

    x, y = torch.arange(size * 2.0).reshape(size, 2), torch.arange(size)
    b = TensorBatches(x, y, bs, torch.device("cpu"), seed=1, shuffle=True, drop_last=drop_last)
    order = torch.randperm(size, generator=epoch_generator(1, 2))
    xs, ys = x[order].split(bs), y[order].split(bs)
    expected = [(xs[i], ys[i]) for i in range(start, b.batches_per_epoch)]
    got = list(b.epoch(2, start=start))
    assert len(got) == len(expected)
    assert all(torch.equal(a, c) and torch.equal(p, q) for (a, p), (c, q) in zip(got, expected))


def test_20k_steps_keep_memory_bounded_and_the_record_valid(tmp_path: Path) -> None:
    _long_run(tmp_path, 20_000)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="minutes long: set TUITRAIN_SLOW=1")
def test_a_million_steps_keep_memory_bounded_and_the_record_valid(tmp_path: Path) -> None:
    _long_run(tmp_path, 1_000_000)


def test_dashboard_state_costs_the_same_after_a_million_steps() -> None:
    """Feed a million steps (1,000-step batches, as a fast engine sends them) into the dashboard's state;
    applying a batch and building the loss plot's columns must not grow with the run."""
    from tuitrain.tui.state import DashboardState

    state = DashboardState()
    batch = 1000
    columns = 100

    def feed(first: int) -> float:
        steps = list(range(first, first + batch))
        losses = [1.0 / (1 + s * 1e-4) for s in steps]
        event = ev.StepStats(steps[-1], 0.0, epoch=1, steps=steps, loss=losses, lr=[0.01] * batch, grad_norm=None,
                             epoch_step=steps[-1], steps_per_epoch=1_000_000, steps_per_sec=1e4,
                             samples_per_sec=1e4)
        t = time.perf_counter()
        state.apply(event)
        return time.perf_counter() - t

    def plot_cost() -> float:
        t = time.perf_counter()
        for _ in range(5):
            state.loss.thin(columns)
            state.loss.ema(0.6, columns)
        return (time.perf_counter() - t) / 5

    early_apply = [feed(1 + i * batch) for i in range(10)]
    early_plot = min(plot_cost() for _ in range(3))
    for i in range(10, 990):
        feed(1 + i * batch)
    late_apply = [feed(1 + i * batch) for i in range(990, 1000)]
    late_plot = min(plot_cost() for _ in range(3))
    assert state.step == 1_000_000
    print(f"\napply a 1,000-step batch: {min(early_apply) * 1e3:.2f} ms at 10k, {min(late_apply) * 1e3:.2f} ms at 1M; "
          f"plot columns: {early_plot * 1e3:.2f} ms at 10k, {late_plot * 1e3:.2f} ms at 1M")
    # Flat: the best of ten late batches within 3x the best early one (plus scheduling noise).
    assert min(late_apply) <= 3 * min(early_apply) + 0.002
    assert late_plot <= 3 * early_plot + 0.005
    assert late_plot < 0.05  # well inside one 4 Hz drain tick


# -- ten runs in one process ------------------------------------------------------------------------

class _Points(Dataset):
    """A map-style dataset: served by a DataLoader (with a worker process) instead of the tensor path."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _loader_preset() -> Preset:
    return Preset("points", "points via a DataLoader", "classification",
                  lambda seed: Data(train=_Points(64, seed), val=_Points(32, seed + 1)),
                  lambda: nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)))


def _fds() -> int:
    return psutil.Process().num_fds()


def _children() -> list[int]:
    return sorted(c.pid for c in psutil.Process().children(recursive=True))


def test_ten_runs_back_to_back_leak_no_threads_files_processes_or_cuda_memory(tmp_path: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def one(i: int) -> None:
        if i % 2:
            cfg, preset = make_cfg(epochs=2, device=device, num_workers=1), _loader_preset()
        else:
            cfg, preset = make_cfg(epochs=2, device=device), classifier_preset()
        trainer = Trainer(cfg, preset, tmp_path / f"R{i}")
        trainer.commands.put(ev_save())  # a manual checkpoint too: one more write through the writer thread
        result = trainer.run()
        assert result.status == "finished", result.error

    one(0)  # warm-up: torch's own one-time threads and files
    one(1)
    gc.collect()
    threads, fds, children = {t.ident for t in threading.enumerate()}, _fds(), _children()
    cuda = torch.cuda.memory_allocated() if device == "cuda" else None
    for i in range(2, 12):
        one(i)
    gc.collect()
    left = [t for t in threading.enumerate() if t.ident not in threads]
    assert left == [], f"threads left behind: {left}"
    assert _fds() <= fds, f"file descriptors: {fds} before, {_fds()} after ten runs"
    assert _children() == children, "DataLoader worker processes left behind"
    if cuda is not None:
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= cuda, "CUDA memory left allocated"
    print(f"\nten runs: {len(threads)} threads, {fds} fds, {len(children)} child processes before and after"
          + ("" if cuda is None else f", CUDA {cuda} bytes"))


def ev_save():  # noqa: ANN201 - a command, named for what it does here
    from tuitrain.engine.commands import SaveCheckpoint

    return SaveCheckpoint()
