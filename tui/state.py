"""What the dashboard knows about a run, built from engine events alone.

The app drains the engine's EventBuffer on a timer and feeds every event
here; widgets read this state and redraw only the parts marked dirty. The
same class can rebuild a run from metrics.jsonl, since those are the same
events.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field
from tuitrain.engine import events as ev
from tuitrain.tui.history import EpochSeries, Marks, Series

STATUS_WORDS = {
    "finished": "FINISHED",
    "stopped": "STOPPED",
    "early_stopped": "STOPPED",
    "interrupted": "STOPPED",
    "failed": "FAILED",
    "died": "DIED",
}


@dataclass
class LogLine:
    t: float
    level: str
    """'info', 'action', 'warning' or 'error'."""
    text: str


@dataclass
class DashboardState:
    preset: str = "?"
    device: str = "?"
    task: str = "classification"
    metric: str = "acc"
    status: str = "RUNNING"
    phase: str | None = None
    """While STARTING: what the run process is doing ("importing torch", "building the model")."""
    end_status: str | None = None
    end_signal: int | None = None
    run_dir: str = ""
    epochs: int = 0
    epoch: int = 1
    step: int = 0
    epoch_step: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 1
    total_known: bool = True
    """The run said how many steps it plans (a user's own loop may not)."""
    own_loop: bool = False
    """The run is a user's own loop (tuitrain.attach): no data sizes, no LR plan, no boundary."""
    steps_per_sec: float = 0.0
    samples_per_sec: float = 0.0
    lr: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    patience: int | None = None
    patience_used: int = 0
    started_at: float | None = None
    paused_at: float | None = None
    paused_total: float = 0.0
    ended_at: float | None = None
    loss: Series = field(default_factory=Series)
    lr_used: Series = field(default_factory=Series)
    grad_norm: Series = field(default_factory=Series)
    train_loss: EpochSeries = field(default_factory=EpochSeries)
    val_loss: EpochSeries = field(default_factory=EpochSeries)
    train_metric: EpochSeries = field(default_factory=EpochSeries)
    val_metric: EpochSeries = field(default_factory=EpochSeries)
    marks: Marks = field(default_factory=Marks)
    plan_steps: list[int] = field(default_factory=list)
    plan_lrs: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    """The run's resolved config (from RunStarted)."""
    extras: dict[str, float | None] = field(default_factory=dict)
    """The latest evaluation's preset-specific numbers (charlm: val_ppl ...)."""
    boundary_points: ev.BoundaryPoints | None = None
    """Set once for 2-D classification presets; None means no boundary panel."""
    boundary_grid: ev.BoundaryGrid | None = None
    """Only the latest grid: a frame costs the same however long the run."""
    layers: ev.LayerStats | None = None
    """Only the latest layer health snapshot."""
    total_grad_norm: Series = field(default_factory=Series)
    """LayerStats.total_grad_norm over steps (bounded, like the loss)."""
    hint: ev.Hint | None = None
    """The latest diagnosis, shown in the hint bar."""
    process: ev.ProcessStats | None = None
    """The run process's latest RSS and CUDA memory (live-only, about once a second); None before
    the first and once the run ended (its process is gone: the panel falls back to the sampler)."""
    log: list[LogLine] = field(default_factory=list)
    """New log lines since the widgets last took them."""
    dirty: set[str] = field(default_factory=set)
    """Which parts changed: 'loss', 'metric', 'lr', 'plan', 'progress', 'status',
    'boundary-ready', 'boundary', 'layers', 'grad', 'hint', 'process'."""

    # -- feeding ---------------------------------------------------------------
    def apply_all(self, events: list[ev.Event]) -> None:
        for event in events:
            self.apply(event)

    def apply(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def take_log(self) -> list[LogLine]:
        lines, self.log = self.log, []
        return lines

    def _say(self, event: ev.Event, level: str, text: str) -> None:
        self.log.append(LogLine(event.t, level, text))

    # -- derived -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.end_status is None

    def elapsed(self, now: float | None = None) -> float:
        """Training time so far, paused time excluded."""
        if self.started_at is None:
            return 0.0
        end = self.ended_at or (now if now is not None else time.time())
        paused = self.paused_total + ((end - self.paused_at) if self.paused_at is not None else 0.0)
        return max(0.0, end - self.started_at - paused)

    def eta(self) -> float | None:
        if not self.running or self.steps_per_sec <= 0 or not self.total_known:
            return None
        return max(0, self.total_steps - self.step) / self.steps_per_sec

    # -- event handlers ------------------------------------------------------------
    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        self.preset, self.device, self.task, self.metric = e.preset, e.device_name, e.task, e.metric
        if e.world_size > 1:  # a torchrun group: the header says so
            self.device = f"{e.device_name} x {e.world_size} ranks"
        self.run_dir, self.epochs = e.run_dir, int(e.config.get("epochs", 0))
        self.config = dict(e.config)
        self.steps_per_epoch, self.total_steps = max(1, e.steps_per_epoch), max(1, e.total_steps)
        self.own_loop, self.total_known = e.task == ev.OWN_LOOP, e.total_steps > 0
        self.step, self.epoch = e.step, e.epoch + 1
        self.patience = e.config.get("patience")
        if self.started_at is None:
            self.started_at = e.t
        if e.resumed:
            for series in (self.loss, self.lr_used, self.grad_norm, self.total_grad_norm):
                series.reset_after(e.step)
            for epochs in (self.train_loss, self.val_loss, self.train_metric, self.val_metric):
                epochs.reset_after(e.step)
        verb = f"resumed at step {e.step}" if e.resumed else "started"
        if self.own_loop:
            facts = [f"{e.steps_per_epoch:,} steps/epoch" if e.steps_per_epoch else "",
                     f"{e.parameters:,} parameters" if e.parameters else "no model given"]
            self._say(e, "info", f"{e.preset} (your own loop) {verb} on {e.device_name}: "
                                 + ", ".join(f for f in facts if f))
        else:
            self._say(e, "info", f"{e.preset} {verb} on {e.device_name}: {e.train_size:,} train / {e.val_size:,} "
                                 f"val, {e.steps_per_epoch} steps/epoch, {e.parameters:,} parameters, amp {e.amp}")
        self._say(e, "info", f"run dir {e.run_dir}")
        self.dirty |= {"status", "progress", "loss", "lr", "metric"}

    def _on_SchedulePreview(self, e: ev.SchedulePreview) -> None:
        self.plan_steps, self.plan_lrs = list(e.steps), list(e.lrs)
        if self.lr is None and e.lrs:
            self.lr = e.lrs[0]  # the planned LR now: known before the first steps are flushed
        self.dirty |= {"lr", "plan", "progress"}

    def _on_StepStats(self, e: ev.StepStats) -> None:
        self.loss.extend(e.steps, e.loss)
        self.lr_used.extend(e.steps, e.lr)
        if e.grad_norm is not None:
            self.grad_norm.extend(e.steps, e.grad_norm)
        self.step, self.epoch, self.epoch_step = e.step, e.epoch, e.epoch_step
        self.steps_per_epoch = max(1, e.steps_per_epoch)
        self.steps_per_sec, self.samples_per_sec = e.steps_per_sec, e.samples_per_sec
        self.lr = e.lr[-1] if e.lr else self.lr
        self.dirty |= {"loss", "lr", "progress", "status"}

    def _on_EvalDone(self, e: ev.EvalDone) -> None:
        self.best_val_loss, self.best_epoch = e.best_val_loss, e.best_epoch
        self.patience_used, self.patience = e.patience_used, e.patience
        if e.extras:
            self.extras = dict(e.extras)
        if e.epoch_end:
            self.val_loss.add(e.epoch, e.step, e.val_loss)
            self.val_metric.add(e.epoch, e.step, e.val_metric)
            if e.train_loss is not None:
                self.train_loss.add(e.epoch, e.step, e.train_loss)
            if e.train_metric is not None:
                self.train_metric.add(e.epoch, e.step, e.train_metric)
            # Epoch results are in the plots and the progress panel; the log
            # keeps interventions, warnings and errors readable.
        else:
            extras = "".join(f", {k.replace('_', ' ')} {fmt_extra(v)}" for k, v in e.extras.items())
            self._say(e, "action", f"evaluated at step {e.step}: val loss {e.val_loss:.4f}, "
                                   f"{e.metric} {e.val_metric:.4f}{extras}")
        self.dirty |= {"metric", "loss", "progress"}

    def _on_Paused(self, e: ev.Paused) -> None:
        self.status, self.paused_at = "PAUSED", e.t
        self.marks.add(e.step, "pause", "paused")
        self._say(e, "action", f"paused at step {e.step}" + (" (non-finite loss)" if e.reason == "nan" else ""))
        self.dirty |= {"status", "loss"}

    def _on_Resumed(self, e: ev.Resumed) -> None:
        if self.paused_at is not None:
            self.paused_total += max(0.0, e.t - self.paused_at)
            self.paused_at = None
        self.status = "RUNNING"
        self._say(e, "action", f"resumed at step {e.step} after {e.paused_seconds:.1f} s")
        self.dirty.add("status")

    def _on_LRChanged(self, e: ev.LRChanged) -> None:
        self.lr = e.new_lr
        self.dirty.add("plan")
        self.marks.add(e.step, "lr", f"lr {e.new_lr:.1e}")
        self._say(e, "action", f"learning rate {e.old_lr:.3g} -> {e.new_lr:.3g} at step {e.step} "
                               f"(x{e.multiplier:.3g} on the schedule)")
        self.dirty |= {"lr", "loss", "progress"}

    def _on_CheckpointSaved(self, e: ev.CheckpointSaved) -> None:
        from tuitrain.tui.text import size_text

        if e.reason in ("manual", "stop", "interrupt", "end"):
            self.marks.add(e.step, "checkpoint", "saved")
            self.dirty.add("loss")
        if e.reason in ("epoch", "best"):
            return  # routine saves every epoch would drown the interventions
        level = "action" if e.reason == "manual" else "info"
        self._say(e, level, f"checkpoint {e.path} ({size_text(e.bytes)}, {e.reason}, step {e.step})")

    def _on_CheckpointFailed(self, e: ev.CheckpointFailed) -> None:
        self._say(e, "error", f"could not save {e.path}: {e.error}; {e.outcome}")

    def _on_WriteFailed(self, e: ev.WriteFailed) -> None:
        self._say(e, "error", f"cannot write {e.path}: {e.error}; training goes on, the records wait in memory")

    def _on_CommandRejected(self, e: ev.CommandRejected) -> None:
        self._say(e, "warning", f"{e.command} refused: {e.reason}")

    def _on_NonFinite(self, e: ev.NonFinite) -> None:
        what = {"stop": "stopping the run", "pause": "pausing", "skip": f"skipped {e.count} update(s)"}[e.action]
        back = f"; weights rolled back to step {e.rolled_back_to}" if e.rolled_back_to is not None else ""
        self._say(e, "warning", f"loss became NaN/Inf at step {e.step}: {what}{back}")
        self.marks.add(e.step, "nan", "nan")
        if e.rolled_back_to is not None:
            for series in (self.loss, self.lr_used, self.grad_norm, self.total_grad_norm):
                series.reset_after(e.rolled_back_to)
        self.dirty.add("loss")

    def _on_EarlyStop(self, e: ev.EarlyStop) -> None:
        self._say(e, "warning", f"early stop after epoch {e.epoch}: no better validation loss for {e.patience} "
                                f"epochs (best {e.best_val_loss:.4f} at epoch {e.best_epoch})")

    def _on_Stopped(self, e: ev.Stopped) -> None:
        self.marks.add(e.step, "stop", e.reason)
        self._say(e, "action", f"stopping at step {e.step}: {e.reason}")

    def _on_RunFailed(self, e: ev.RunFailed) -> None:
        self._say(e, "error", f"the run failed: {e.error}")
        for line in e.traceback.rstrip().splitlines():
            self._say(e, "error", line)

    def _on_RunEnded(self, e: ev.RunEnded) -> None:
        self.end_status, self.end_signal = e.status, ev.RunSummary.from_dict(e.summary).signal
        if self.process is not None:
            self.process = None  # the numbers of a process that is gone would read as current
            self.dirty.add("process")
        self.status = STATUS_WORDS.get(e.status, e.status.upper())
        if self.paused_at is not None:
            self.paused_total += max(0.0, e.t - self.paused_at)
            self.paused_at = None
        self.ended_at = e.t
        self.step = e.step
        s = e.summary
        # The run's own average, the number its summary and final line give, not the last window's.
        if isinstance(s.get("steps_per_sec"), (int, float)):
            self.steps_per_sec = float(s["steps_per_sec"])
        if isinstance(s.get("samples_per_sec"), (int, float)):
            self.samples_per_sec = float(s["samples_per_sec"])
        self._say(e, "error" if e.status == "failed" else "info",
                  f"{e.status}: {s.get('reason', '')} ({int(s.get('steps') or 0):,} steps, "
                  f"{s.get('steps_per_sec') or 0:,.0f} steps/s); press q to quit")
        tip = self.longer_run_tip()
        if tip and e.status == "finished":
            self._say(e, "info", tip)
            self.hint = ev.Hint(e.step, e.t, rule="short_run", message=f"done in {self.elapsed():.0f} s",
                                evidence="", remedy=tip.removeprefix("tip: "), severity="info")
            self.dirty.add("hint")
        self.dirty |= {"status", "progress"}

    def longer_run_tip(self) -> str | None:
        """After a run over in seconds (circles: about 3 s), what to type to get one long enough to try
        the keys on: the same preset for about a minute, or this run continued with more epochs."""
        seconds = self.elapsed()
        if self.ended_at is None or seconds >= SHORT_RUN_SECONDS or self.epochs <= 0 or self.own_loop:
            return None
        epochs = nice_round(self.epochs * TRY_KEYS_SECONDS / max(seconds, 0.5))
        preset = shlex.quote(str(self.config.get("preset") or self.preset))
        tip = f"tip: to try p, l and s on a longer run: tuitrain --preset {preset} --epochs {epochs}"
        if self.config.get("scheduler", "none") not in FIXED_LENGTH_SCHEDULERS and self.run_dir:
            tip += f", or continue this one: tuitrain --resume {shlex.quote(self.run_dir)} --epochs {epochs}"
        return tip

    # -- seeing the model learn ------------------------------------------------------
    def _on_BoundaryPoints(self, e: ev.BoundaryPoints) -> None:
        first = self.boundary_points is None
        self.boundary_points = e
        self.dirty |= {"boundary-ready", "boundary"} if first else {"boundary"}

    def _on_BoundaryGrid(self, e: ev.BoundaryGrid) -> None:
        if len(e.cells) != e.rows * e.cols:
            return  # a malformed frame would draw garbage; keep the last good one
        self.boundary_grid = e
        self.dirty.add("boundary")

    def _on_LayerStats(self, e: ev.LayerStats) -> None:
        self.layers = e
        norm = e.total_grad_norm
        last = self.total_grad_norm.last_step
        if norm is not None and (last is None or e.step > last):
            self.total_grad_norm.append(e.step, norm)
            self.dirty.add("grad")
        self.dirty.add("layers")

    def _on_ProcessStats(self, e: ev.ProcessStats) -> None:
        if not self.running:
            return  # a last live frame that arrived after the end record
        self.process = e
        self.dirty.add("process")

    def _on_Hint(self, e: ev.Hint) -> None:
        self.hint = e
        self.marks.add(e.step, "hint", e.rule)
        text = f"hint: {clip(e.message)} ({clip(e.evidence)}) → {clip(e.remedy)}"
        self._say(e, "warning", text)
        self.dirty.add("hint")

    def _on_Sample(self, e: ev.Sample) -> None:
        text = clip(e.text.replace("\r", "").replace("\n", " ⏎ "), 240)
        self._say(e, "info", f'sample (epoch {e.epoch}): "{text}"')


#: A finished run shorter than this (seconds) gets a tip for a longer one.
SHORT_RUN_SECONDS = 20.0
#: How long the suggested run should train (seconds): time enough to press a few keys.
TRY_KEYS_SECONDS = 60.0
#: Their plan is fixed to the run's length: --resume cannot change --epochs.
FIXED_LENGTH_SCHEDULERS = ("cosine", "onecycle", "warmup-cosine")


def nice_round(value: float) -> int:
    """1, 2 or 5 times a power of ten, the nearest below or at value (at least 1)."""
    if value < 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return int(max(m * power for m in (1, 2, 5) if m * power <= value))


def clip(text: str, limit: int = 200) -> str:
    """One log entry stays a few lines even when an engine message is long."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt_extra(value: float | None) -> str:
    """A preset's extra number (perplexity, ...): 4 significant digits, '--' when missing."""
    if value is None or not math.isfinite(value):
        return "--"
    return f"{value:.4g}"
