"""Helpers for the dashboard tests: fake sampler and trainer, tiny presets, condition waits.

Pilot tests drive the real TuitrainApp with the real engine in its thread
worker. Waiting is always on a condition with a deadline (a record in
metrics.jsonl, a status word, an app attribute), never a fixed sleep. The
only clock used for "some time passed" is the app's own drain timer, counted
through the fake sampler's latest() calls (one per drain tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import torch
from torch import nn

from conftest import Probe, blobs, make_cfg
from tuitrain.engine import events as ev
from tuitrain.engine.commands import CommandQueue, Stop
from tuitrain.engine.config import RunConfig
from tuitrain.engine.rundir import read_metrics
from tuitrain.engine.trainer import Trainer
from tuitrain.presets.base import Preset
from tuitrain.tui.system import SystemSnapshot

SIZE = (120, 40)

#: Deadline for anything that needs the engine or the UI to move (the machine is slow).
DEADLINE = 20.0

GIB = 1024 ** 3


# -- fake system sampler --------------------------------------------------------------

def two_gpu_snapshot() -> SystemSnapshot:
    """A fixed machine: two GPUs read through the real NVML wrapper from a fake pynvml,
    and fixed CPU/RAM readings (psutil's would change between runs)."""
    from test_system import FakeGpu, fake_pynvml

    from tuitrain.tui.system import Nvml

    nvml = Nvml(fake_pynvml([
        FakeGpu(name=b"NVIDIA Fake A100", util=87, used=30 * GIB, total=80 * GIB, temp=64,
                power_mw=250_000, limit_mw=400_000),
        FakeGpu(name="NVIDIA Fake T4", util=12, used=2 * GIB, total=16 * GIB, temp=41,
                power_mw=28_500, limit_mw=70_000),
    ]))
    ok, reason = nvml.init()
    assert ok, reason
    gpus = tuple(nvml.gpu_stats(i) for i in range(nvml.device_count() or 0))
    nvml.shutdown()
    assert len(gpus) == 2
    return SystemSnapshot(
        t=1_700_000_000.0, cpu_percent=37.5, ram_used_bytes=12.5 * GIB, ram_total_bytes=64 * GIB,
        process_rss_bytes=1.25 * GIB, gpus=gpus, gpu_note=None, torch_cuda=())


def cpu_only_snapshot() -> SystemSnapshot:
    return SystemSnapshot(t=1_700_000_000.0, cpu_percent=50.0, ram_used_bytes=4 * GIB, ram_total_bytes=16 * GIB,
                          process_rss_bytes=0.5 * GIB, gpus=(), gpu_note="no NVIDIA driver (NVML unavailable)",
                          torch_cuda=())


class FakeSampler:
    """Stands in for SystemSampler: no thread, no psutil, a fixed snapshot.

    `reads` counts latest() calls: the app reads it once per drain tick, so it
    doubles as a tick counter for "a few refreshes later".
    """

    def __init__(self, snapshot: SystemSnapshot | None = None) -> None:
        self.snapshot = snapshot if snapshot is not None else cpu_only_snapshot()
        self.started = 0
        self.stopped = 0
        self.reads = 0

    def start(self) -> "FakeSampler":
        self.started += 1
        return self

    def stop(self, timeout: float | None = None) -> None:
        self.stopped += 1

    def latest(self) -> SystemSnapshot:
        self.reads += 1
        return self.snapshot


# -- presets and trainers ---------------------------------------------------------------

class Throttled(Probe):
    """A Probe whose training forward also waits `delay` seconds.

    Keeps the engine at a few hundred steps a second on a 2-core machine, so
    the UI thread is never starved and an epoch lasts seconds (no routine
    epoch-end checkpoint storm during the tests).
    """

    def __init__(self, inner: nn.Module, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.delay:
            time.sleep(self.delay)  # wait-ok: the model's own cost, not a wait in the test
        return super().forward(x)


def long_preset(*, n_train: int = 4000, n_val: int = 64, delay: float = 0.05, name: str = "tiny") -> Preset:
    """A tiny classifier with long epochs (500 steps at batch 8) and a throttled forward."""

    def make_model() -> nn.Module:
        return Throttled(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), delay)

    return Preset(name, "tiny throttled classifier", "classification",
                  lambda seed: blobs(seed, n_train, n_val), make_model)


def long_cfg(**overrides: Any) -> RunConfig:
    """Many epochs (never finishes during a test), constant LR 0.05, a flush every 0.05 s."""
    base: dict[str, Any] = dict(epochs=1000, log_interval=0.05, scheduler="none")
    base.update(overrides)
    return make_cfg(**base)


def make_trainer(tmp_path: Path, cfg: RunConfig | None = None, preset: Preset | None = None) -> Trainer:
    return Trainer(cfg or long_cfg(), preset or long_preset(), tmp_path / "run")


# -- the run directory -------------------------------------------------------------------

def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return list(read_metrics(path)) if path.exists() else []


def events_named(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in records(run_dir) if r.get("kind") == "event" and r.get("event") == name]


def event_names(run_dir: Path) -> list[str]:
    return [r["event"] for r in records(run_dir) if r.get("kind") == "event"]


def step_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in records(run_dir) if r.get("kind") == "step"]


# -- waiting ----------------------------------------------------------------------------

async def until(pilot: Any, predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Let the app run until predicate() is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)  # wait-ok: poll interval inside a condition wait with a deadline


async def ticks(pilot: Any, sampler: FakeSampler, n: int = 3) -> None:
    """Wait until the app's drain timer has run `n` more times."""
    target = sampler.reads + n
    await until(pilot, lambda: sampler.reads >= target, f"{n} drain ticks")


async def wait_event(pilot: Any, run_dir: Path, name: str, count: int = 1, timeout: float = DEADLINE,
                     where: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[dict[str, Any]]:
    """Wait until metrics.jsonl holds `count` events called `name` (matching `where`); return them."""
    def found() -> list[dict[str, Any]] | None:
        hits = [r for r in events_named(run_dir, name) if where(r)]
        return hits if len(hits) >= count else None

    return await until(pilot, found, f"{count} {name!r} event(s) in metrics.jsonl", timeout)


async def set_lr(pilot: Any, text: str, *, confirm: bool = False) -> None:
    """l, then type an LR and Enter once the dialog is the screen (keys typed before it is there are lost);
    `confirm`: a jump above 100x the current LR, so Enter once more."""
    from tuitrain.tui.screens.lr_dialog import LRDialog

    await pilot.press("l")
    await until(pilot, lambda: isinstance(pilot.app.screen, LRDialog), "the LR dialog")
    await pilot.press(*text)
    await pilot.press("enter")
    if confirm:
        await until(pilot, lambda: pilot.app.screen.query_one("#lr-message").has_class("-confirm"),
                    "the dialog to ask for confirmation")
        await pilot.press("enter")


async def wait_steps_after(pilot: Any, run_dir: Path, step: int, n: int = 5) -> list[dict[str, Any]]:
    """Wait for `n` step records after optimizer step `step`; return all step records after it."""
    def found() -> list[dict[str, Any]] | None:
        after = [r for r in step_records(run_dir) if r["step"] > step]
        return after if len(after) >= n else None

    return await until(pilot, found, f"{n} step records after step {step}")


async def wait_running(pilot: Any, app: Any, run_dir: Path, steps: int = 3) -> None:
    """Wait until the engine has trained a few steps and the dashboard has shown them."""
    await until(pilot, lambda: app.state.step >= steps and app.state.status == "RUNNING",
                f"the dashboard to show {steps} steps RUNNING")


async def wait_exit(pilot: Any, app: Any, timeout: float = DEADLINE) -> None:
    await until(pilot, lambda: app.return_code is not None or not app.is_running, "the app to exit", timeout)


# -- screen text ------------------------------------------------------------------------

def log_text(app: Any) -> str:
    """Everything the event log has written so far (plain text, one entry a line, unwrapped)."""
    from tuitrain.tui.widgets.event_log import EventLog

    return "\n".join(app.query_one(EventLog).entries)


def widget_text(widget: Any) -> str:
    """The plain text a widget renders (a rich Text, a Textual Content or a str)."""
    rendered = widget.render()
    plain = getattr(rendered, "plain", None)
    return plain if isinstance(plain, str) else str(rendered)


def screen_text(screen: Any) -> str:
    """The text of every widget on a screen that renders text (dialogs, help)."""
    from rich.text import Text
    from textual.content import Content

    parts = []
    for widget in screen.query("*"):
        rendered = widget.render()
        if isinstance(rendered, (str, Text, Content)):
            parts.append(widget_text(widget))
    return "\n".join(parts)


def status_text(app: Any) -> str:
    from tuitrain.tui.widgets.status_bar import StatusBar

    return widget_text(app.query_one(StatusBar))


def progress_text(app: Any) -> str:
    from tuitrain.tui.widgets.progress_panel import ProgressPanel

    panel = app.query_one(ProgressPanel)
    parts = [widget_text(panel)] + [widget_text(w) for w in panel.query("*") if hasattr(w, "render")]
    return "\n".join(parts)


# -- running the app --------------------------------------------------------------------

@contextlib.asynccontextmanager
async def dashboard(trainer: Trainer, sampler: FakeSampler | None = None,
                    size: tuple[int, int] = SIZE) -> AsyncIterator[tuple[Any, Any, FakeSampler]]:
    """Run the TuitrainApp under the Pilot; afterwards make sure the engine thread has ended.

    Yields (app, pilot, sampler). If a test fails while training still runs,
    the run is stopped (and waited for) so no engine thread outlives its test.
    """
    from tuitrain.tui.app import TuitrainApp
    from tuitrain.tui.source import InProcessRun

    sampler = sampler or FakeSampler()
    app = TuitrainApp(InProcessRun(trainer), sampler=sampler)
    try:
        async with app.run_test(size=size) as pilot:
            try:
                yield app, pilot, sampler
            finally:
                # Leave the way a user does (App.exit). run_test's own teardown alone calls
                # App._shutdown() while the app's timers still run, so a drain tick can land after
                # the widgets are gone (NoMatches); a real exit stops the timers first.
                if app.is_running:
                    app.exit()
                    await until(pilot, lambda: not app.is_running, "the app to exit", timeout=10)
    finally:
        if not app.source_done.is_set():
            trainer.commands.put(Stop(reason="test cleanup"))
            # The engine answers at its next step boundary; blocking here is fine (the app is gone).
            await asyncio.get_running_loop().run_in_executor(None, app.source_done.wait, 60)


def run_async(coro_fn: Callable[[], Any]) -> Any:
    """Run an async test body (no pytest-asyncio here)."""
    return asyncio.run(coro_fn())


# -- a fake trainer for snapshots ----------------------------------------------------------

class FakeTrainer:
    """What the app needs from a Trainer: .events, .commands and .run() (returns at once)."""

    def __init__(self, events: list[ev.Event]) -> None:
        self.events = ev.EventBuffer()
        for event in events:
            self.events.put(event)
        self.commands = CommandQueue()
        self.ran = 0

    def run(self) -> None:
        self.ran += 1
        return None


# -- "see the model learn" events for the fake trainer ----------------------------------------

#: The boundary grid's extent in the helpers below (a square, like circles).
EXTENT = [-1.5, 1.5]


def ring_class(x: float, y: float) -> int:
    """Class 1 inside radius 0.8, class 0 outside: a circles-like boundary."""
    return 1 if x * x + y * y < 0.64 else 0


def boundary_points(step: int, t: float, *, classes: int = 2, n: int = 120,
                    label_of=ring_class) -> ev.BoundaryPoints:
    """A fixed, deterministic sample of points on two rings (and their labels)."""
    import math

    points = []
    for i in range(n):
        angle = 2 * math.pi * i / n * 7.3  # spread around, not in order
        radius = 0.45 if i % 2 else 1.15
        x, y = round(radius * math.cos(angle), 4), round(radius * math.sin(angle), 4)
        points.append([x, y, label_of(x, y)])
    return ev.BoundaryPoints(step, t, x_range=list(EXTENT), y_range=list(EXTENT), cols=32, rows=24,
                             classes=classes, points=points)


def boundary_grid(step: int, t: float, *, epoch: int, epoch_end: bool, cols: int = 32, rows: int = 24,
                  label_of=ring_class, radius_scale: float = 1.0) -> ev.BoundaryGrid:
    """The predicted class at each cell centre; row 0 is the top (largest y)."""
    lo, hi = EXTENT
    cells = []
    for r in range(rows):
        y = hi - (r + 0.5) * (hi - lo) / rows
        for c in range(cols):
            x = lo + (c + 0.5) * (hi - lo) / cols
            cells.append(chr(48 + label_of(x / radius_scale, y / radius_scale)))
    return ev.BoundaryGrid(step, t, x_range=list(EXTENT), y_range=list(EXTENT), cols=cols, rows=rows,
                           cells="".join(cells), epoch=epoch, epoch_end=epoch_end)


LAYER_NAMES = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def layer_stats(step: int, t: float, *, flagged: str | None = "net.2.weight", growth: float | None = 4.1,
                scale: float = 1.0) -> ev.LayerStats:
    """Layer health of a 2-16-2 MLP, with `flagged` growing `growth` times."""
    return ev.LayerStats(step, t, names=list(LAYER_NAMES), shapes=[[16, 2], [16], [2, 16], [2]],
                         weight_norm=[3.21, 0.874, 2.05, 0.112],
                         grad_norm=[0.0452 * scale, 0.0123 * scale, 0.318 * scale, 0.0061 * scale],
                         update_ratio=[1.2e-3, 8.4e-4, 4.6e-3, 2.2e-5], total_grad_norm=0.321 * scale,
                         flagged=flagged, growth=growth)


def lr_hint(step: int, t: float) -> ev.Hint:
    return ev.Hint(step, t, rule="lr_too_high", message="the loss is rising and the gradient norm grew x4.1",
                   evidence="loss 0.31 -> 0.58 over the last 40 steps; |grad| 0.08 -> 0.32",
                   remedy="lower the learning rate (l), e.g. to 3e-3", severity="warning")


def run_started(t: float = 1_700_000_000.0, *, epochs: int = 3, steps_per_epoch: int = 100,
                grad_clip: float = 0.0) -> ev.RunStarted:
    """The first event of a small fake run (circles-like, on the CPU)."""
    return ev.RunStarted(0, t, run_dir="runs/fake", preset="circles", task="classification", metric="acc",
                         device="cpu", device_name="cpu", config={"epochs": epochs, "grad_clip": grad_clip},
                         epoch=0, steps_per_epoch=steps_per_epoch, total_steps=epochs * steps_per_epoch,
                         train_size=1600, val_size=400, parameters=82, amp="off")
