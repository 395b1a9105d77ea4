"""tuitrain.attach(): a user's own training loop as a run that every dashboard can watch and steer.

The same run directory, metrics.jsonl and control.sock as tuitrain's own
Trainer, so `tuitrain watch`, `tuitrain runs` and `tuitrain run` treat both
alike. The user's loop keeps its shape; it calls `run.step(loss=loss)` after
each optimizer step and `run.evaluate(...)` after each validation.

What it costs the loop: `step()` keeps the loss tensor (detached, on its
device), reads the LR the optimizer used (a Python float), and checks one
attribute of the command queue and the clock. Everything else happens at the
flush, once per `log_interval` seconds: one host copy of the losses (and of
layer health, taken around that one optimizer step), the record written, the
hints updated.

Steering acts on the user's own objects:
- pause blocks inside `step()` (the model stays where it is) until resume;
- set LR follows the engine's rule, LR = schedule x multiplier: an optimizer
  step pre-hook multiplies every param group's LR for that step only and the
  post-hook puts the scheduler's value back, so the user's scheduler keeps its
  own curve and the multiplier scales it from the change on;
- save writes checkpoints/step-N.pt (weights_only-loadable state dicts of
  the model, optimizer and scheduler), or calls the user's `save(path)`;
- stop sets `should_stop`; the loop ends at its own pace and the summary
  says "stopped".

It never breaks the user's run: a run directory that cannot be written, a
lost dashboard, a bad command or a full disk are one warning line on stderr;
`step()` then goes on doing as little as it can.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from .commands import (Command, CommandQueue, Evaluate, Pause, Resume, SaveCheckpoint, SetLR, Stop,
                       TogglePause, check_lr)
from .config import RunConfig
from .diagnosis import Diagnostician, Finding
from .events import (OWN_LOOP, CheckpointFailed, CheckpointSaved, CommandRejected, EvalDone, Event, Hint, LayerStats,
                     LRChanged, Paused, Resumed, RunEnded, RunFailed, RunStarted, RunSummary, StepStats, Stopped)
from .layer_health import LayerHealth
from .loss_window import LossWindow
from .lifeline import LIFELINE_ENV, RUN_DIR_ENV, RunEnd, open_run_end
from .resources import ProcessProbe
from .rundir import RunDir, RunDirError, RunLock, new_run_path
from .seeding import capture_rng
from .distributed import Decision, StepSync, group_size
from .signals import StopSignals

#: The checkpoint a user's loop gets from `s`: plain state dicts, loadable with torch.load(weights_only=True).
FORMAT = ckpt.ATTACH_FORMAT
VERSION = 1
STATE_KEYS = frozenset({"format", "version", "step", "epoch", "lr_multiplier", "model_state_dict",
                        "optimizer_state_dict", "scheduler_state_dict", "rng"})
#: Seconds between flushes, as for tuitrain's own runs.
LOG_INTERVAL = RunConfig.__dataclass_fields__["log_interval"].default
HANGUP = int(getattr(signal, "SIGHUP", 1))

SaveFn = Callable[[Path], Any]


def warn(text: str) -> None:
    """One line on stderr; never raises (the user's run must not end because we could not say something)."""
    try:
        print(f"tuitrain: warning: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def default_name() -> str:
    """The script's name ("train" for train.py), for the run directory and the dashboard's title."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    name = Path(path).stem if path and not path.startswith("-") else ""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "python"


def _is_rank_zero() -> bool:
    """Under torch.distributed only rank 0 records and serves (until the group is steered as one run)."""
    dist = getattr(torch, "distributed", None)
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except (RuntimeError, ValueError):
        return True
    rank = os.environ.get("RANK")
    return rank is None or rank.strip() in ("", "0")


def _number(value: Any) -> float:
    """A metric the user passed (a tensor, a numpy scalar, a number) as a float; evaluation time only."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().mean().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class _SignalStop(StopSignals):
    """attach(handle_signals=True): SIGINT/SIGTERM/SIGHUP stop the loop at its next step, after a save.

    A second SIGINT or SIGTERM is the signal's own default (Ctrl-C twice ends the process at once)."""

    def __init__(self, commands: CommandQueue) -> None:
        super().__init__()
        self.commands = commands

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signum and signum != HANGUP:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        self.commands.put_from_signal(Stop(reason=f"received {signal.Signals(signum).name}", signal=signum))


class Run:
    """A user's loop, recorded and steerable. Made by attach(); also a context manager.

    Not thread-safe: step(), evaluate() and close() belong to the loop's thread.
    """

    def __init__(self, *, run_dir: str | os.PathLike[str] | None = None, model: torch.nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                 total_steps: int | None = None, steps_per_epoch: int | None = None, save: SaveFn | None = None,
                 name: str | None = None, config: dict[str, Any] | None = None,
                 log_interval: float = LOG_INTERVAL, handle_signals: bool = False, insights: bool = True,
                 start_step: int = 0, _sync: Callable[[], None] | None = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.total_steps = max(0, int(total_steps or 0))
        self.steps_per_epoch = max(0, int(steps_per_epoch or 0))
        self.name = name or default_name()
        self.log_interval = float(log_interval) if log_interval and log_interval > 0 else LOG_INTERVAL
        self.step_count = int(start_step)
        """Optimizer steps recorded so far (run.step() calls)."""
        self.epoch = 0
        """Evaluations recorded so far (run.evaluate() calls): the dashboard's epochs."""
        self.paused = False
        self.multiplier = 1.0
        self.status: str | None = None
        """How the run ended, once closed."""
        self.commands = CommandQueue()
        self.config: dict[str, Any] = {}
        """What config.json says: the client's own facts and the user's `config`."""
        self._save_fn = save
        self._stop: Stop | None = None
        self._active = _is_rank_zero()
        self._closed = False
        self._rundir: RunDir | None = None
        self._lock: RunLock | None = None
        self._server: Any = None
        self._lifeline: RunEnd | None = None
        self._signals: _SignalStop | None = None
        self._hooks: list[Any] = []
        self._after_hook: Any = None
        """The step post-hook, registered only while it has work: an LR multiplier to take back out, or
        layer health to collect (one step per log interval). Each hook called costs every step."""
        self._writer = ckpt.CheckpointWriter()
        self._probe = ProcessProbe()
        self._health = LayerHealth(model) if insights and model is not None and optimizer is not None else None
        self._collect_due = self._health is not None
        self._layers: torch.Tensor | None = None
        self._diag: Diagnostician | None = None
        self._losses = LossWindow()
        self._lrs: list[float] = []
        self._first_step = self.step_count + 1
        self._lr_used = math.nan
        self._next_flush = 0.0
        self._window = (time.perf_counter(), self.step_count)
        self._started = time.perf_counter()
        self._paused_total = 0.0
        self._paused_at: float | None = None
        self._epoch_sum = 0.0
        self._epoch_steps = 0
        self._best_val = math.inf
        self._best_epoch: int | None = None
        self._last_eval: EvalDone | None = None
        self._warned: set[str] = set()
        self._uncaught: BaseException | None = None
        self._sync: StepSync | None = None
        """Under torchrun (a process group of 2+ ranks): the group's agreement at sync steps."""
        if group_size() > 1:
            self._sync = StepSync(first_step=self.step_count + 1)
        if not self._active:
            if self._sync is not None:  # another rank: applies the group's commands, records nothing
                self._health = None
                self._hook_optimizer()
            return
        try:
            self._open(run_dir, config or {}, handle_signals, insights)
        except Exception as exc:  # noqa: BLE001 - never the user's run's end
            self._fail_open(exc)

    # -- opening -------------------------------------------------------------------------
    def _open(self, run_dir: str | os.PathLike[str] | None, config: dict[str, Any], handle_signals: bool,
              insights: bool) -> None:
        lifeline_fd = os.environ.pop(LIFELINE_ENV, None)  # for this process's first run only
        env_dir = os.environ.pop(RUN_DIR_ENV, None)
        if lifeline_fd is not None:
            try:
                self._lifeline = open_run_end(int(lifeline_fd))
                self._lifeline.say(phase="attaching")
            except ValueError as exc:
                warn(f"{LIFELINE_ENV}={lifeline_fd}: {exc}")
        path = Path(run_dir if run_dir is not None else env_dir or new_run_path("runs", self.name)).absolute()
        self._rundir = RunDir(path)
        self._lock = self._rundir.claim(resume=False)
        device = self._device()
        self.config = {"epochs": 0, "total_steps": self.total_steps, "log_interval": self.log_interval,
                       "device": str(device),
                       "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
                       "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
                       "lr": self._scheduled_lr(), **_plain(config),
                       "preset": self.name, "client": "attach"}
        self._rundir.write_json("config.json", self.config)
        self._rundir.open_metrics(on_error=self._metrics_write_failed)
        if insights:
            self._diag = Diagnostician(device_type=device.type)
        self._hook_optimizer()
        parameters = sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0
        from .devices import device_name

        self._emit(RunStarted(
            self.step_count, _now(), run_dir=str(path), preset=self.name, task=OWN_LOOP, metric="metric",
            device=str(device), device_name=device_name(device), config=self.config, epoch=0,
            steps_per_epoch=self.steps_per_epoch or self.total_steps, total_steps=self.total_steps,
            train_size=0, val_size=0, parameters=parameters, amp="off", resumed=self.step_count > 0, world_size=group_size()))
        self._rundir.flush()
        self._serve()
        if handle_signals:
            if threading.current_thread() is threading.main_thread():
                self._signals = _SignalStop(self.commands)
                self._signals.install()
            else:
                warn("handle_signals=True needs attach() in the main thread; signals keep their own handling")
        if self._lifeline is not None:
            self._lifeline.watch(on_lost=lambda: self.commands.put(
                Stop(reason="the dashboard that started this run went away", signal=HANGUP)))
            self._lifeline.report_ready(path)
        self._next_flush = time.perf_counter() + self.log_interval
        self._started = time.perf_counter()
        self._window = (self._started, self.step_count)

    def _hook_optimizer(self) -> None:
        if self.optimizer is not None:
            self._hooks = [self.optimizer.register_step_pre_hook(self._before_optimizer_step)]
            self._arm_after_hook()

    def _arm_after_hook(self) -> None:
        if self.optimizer is not None and self._after_hook is None and self._hooks and \
                (self.multiplier != 1.0 or self._collect_due):
            self._after_hook = self.optimizer.register_step_post_hook(self._after_optimizer_step)

    def _remove_hooks(self) -> None:
        for hook in self._hooks + ([self._after_hook] if self._after_hook is not None else []):
            hook.remove()
        self._hooks = []
        self._after_hook = None

    def _serve(self) -> None:
        from .control import ControlError, ControlServer

        assert self._rundir is not None
        server = ControlServer(self._rundir.path, self.commands)
        try:
            server.start()
        except (ControlError, OSError) as exc:
            warn(f"no control socket, so no dashboard can steer this run: {exc}")
            return
        self._server = server

    def _fail_open(self, exc: Exception) -> None:
        """The run directory could not be set up: the loop trains on, unrecorded and unsteered."""
        where = self._rundir.path if self._rundir is not None else "the run directory"
        text = str(exc) if isinstance(exc, RunDirError) else f"{type(exc).__name__}: {exc}"
        warn(f"not recording this run ({where}): {text}; training goes on without tuitrain")
        if self._lifeline is not None:  # the dashboard that started this script says so and closes
            self._lifeline.say(failed=f"not recording this run ({where}): {text}")
        self._teardown()
        self._active = False

    def _device(self) -> torch.device:
        if self.model is not None:
            for p in self.model.parameters():
                return p.device
        return torch.device("cpu")

    # -- the loop's calls ------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """A stop was asked for (the dashboard's x or q, `tuitrain watch`, a handled signal): end the loop."""
        return self._stop is not None

    @property
    def run_dir(self) -> Path | None:
        return self._rundir.path if self._rundir is not None else None

    def step(self, loss: Any = None) -> None:
        """After each optimizer step: record the loss (a tensor stays on its device), apply commands."""
        self.step_count += 1
        sync = self._sync
        if not self._active and sync is None:
            return
        self._losses.add(loss)
        lr = self._lr_used
        if lr != lr and self.optimizer is not None:  # no optimizer step ran (a GradScaler skipped it)
            lr = float(self.optimizer.param_groups[0]["lr"]) * self.multiplier
        self._lrs.append(lr)
        self._lr_used = math.nan
        if sync is not None:
            if sync.due(self.step_count) and not self._closed:
                self._group_boundary(sync)  # not guarded: a collective that fails must not desync the group
        elif self.commands.pending():
            self._guard(self._flush)
            self._guard(self._handle_commands)
        elif time.perf_counter() >= self._next_flush:
            self._guard(self._flush)

    def evaluate(self, **metrics: Any) -> None:
        """After a validation: val_loss and any metric (val_acc=..., val_f1=...); train_loss defaults to the
        mean of the steps' losses since the last evaluation. One dashboard epoch per call."""
        if not self._active:
            self.epoch += 1
            return
        self._guard(lambda: self._evaluate(metrics))

    def close(self, status: str | None = None, reason: str | None = None) -> None:
        """End the run: summary.json, the `ended` event, the socket closed. Idempotent; also at exit."""
        if self._closed:
            return
        self._closed = True
        if self in _open_runs:
            _open_runs.remove(self)
        if not self._active:
            self.status = status or "finished"
            self._remove_hooks()
            return
        if status is None:
            status = "stopped" if self._stop is not None and self._stop.signal is None else \
                "interrupted" if self._stop is not None else "finished"
        if reason is None:
            reason = self._stop.reason if self._stop is not None else "the loop ended"
        signum = self._stop.signal if self._stop is not None and status == "interrupted" else None
        self._guard(lambda: self._end(status, reason, signum))
        self.status = status
        self._active = False  # a step() after the end only counts

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or self._closed:
            self.close()
        elif isinstance(exc, KeyboardInterrupt):
            self._guard(lambda: self._save("latest.pt", "interrupt"))
            self._stop = Stop(reason="KeyboardInterrupt", signal=int(signal.SIGINT))
            self.close("interrupted", "KeyboardInterrupt (Ctrl-C)")
        else:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """The user's loop raised: the run ends failed, with its line and traceback on the record."""
        if self._closed or not self._active:
            self.close("failed")
            return
        from .trainer import failure_text

        text = failure_text(exc)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

        def record() -> None:
            self._flush()
            self._emit(RunFailed(self.step_count, _now(), error=text, traceback=tb[-20_000:]))
            assert self._rundir is not None
            self._rundir.write_error(tb)

        self._guard(record)
        self.close("failed", text)

    # -- the optimizer's hooks: the LR rule and layer health ----------------------------------
    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._collect_due and self._health is not None:
            self._health.before_step()
        elif self._after_hook is not None and self.multiplier == 1.0:
            self._after_hook.remove()  # here, not in the post-hook itself: torch is iterating those
            self._after_hook = None
        groups = optimizer.param_groups
        if self.multiplier != 1.0:
            self._scheduled = [g["lr"] for g in groups]
            for g in groups:
                g["lr"] = g["lr"] * self.multiplier
        self._lr_used = float(groups[0]["lr"]) if groups else math.nan

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        scheduled = getattr(self, "_scheduled", None)
        if scheduled is not None:
            for g, lr in zip(optimizer.param_groups, scheduled):
                g["lr"] = lr  # exactly the scheduler's value, so its own curve goes on unchanged
            self._scheduled = None
        if self._collect_due and self._health is not None:
            self._layers = self._health.after_step()
            self._collect_due = False

    def gradients_ready(self) -> None:
        """For an optimizer that computes its gradients inside step() (a closure: Lightning's automatic
        optimization, LBFGS): call after backward, before the step; layer health then reads this
        step's gradients rather than the last one's. Cheap: it acts only at the log interval."""
        if self._active and self._collect_due and self._health is not None:
            self._guard(self._health.before_step)

    def _scheduled_lr(self) -> float | None:
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        return float(self.optimizer.param_groups[0]["lr"])

    # -- flushing ------------------------------------------------------------------------
    def _flush(self, losses: list[float] | None = None) -> None:
        """Record the steps since the last flush; `losses`: the group's means of them, under torchrun."""
        self._collect_saves()
        if self._losses:
            losses = losses if losses is not None and len(losses) == len(self._losses) else self._losses.host()
            steps = list(range(self._first_step, self._first_step + len(losses)))
            lrs = self._lrs
            self._losses.clear()
            self._lrs = []
            self._first_step = self.step_count + 1
            now = time.perf_counter()
            t0, steps0 = self._window
            rate = (steps[-1] - steps0) / max(now - t0, 1e-9)
            self._window = (now, steps[-1])
            finite = losses if math.isfinite(sum(losses)) else [v for v in losses if math.isfinite(v)]
            self._epoch_sum += math.fsum(finite)
            self._epoch_steps += len(finite)
            spe = self.steps_per_epoch or self.total_steps
            self._emit(StepStats(
                steps[-1], _now(), epoch=self.epoch + 1, steps=steps, loss=losses, lr=lrs, grad_norm=None,
                epoch_step=(steps[-1] % spe) if spe else steps[-1], steps_per_epoch=spe, steps_per_sec=rate,
                samples_per_sec=0.0, data_wait=None))
            if self._diag is not None:
                self._findings(self._diag.observe_steps(steps, losses))
        if self._layers is not None and self._health is not None:
            values = self._layers.tolist()  # the layer-health numbers of one step: one host copy
            self._layers = None
            self._emit(LayerStats(self.step_count, _now(), **self._health.summarize(values)))
        self._collect_due = self._health is not None
        self._arm_after_hook()
        if self._probe.due():
            self._emit(self._probe.sample(self.step_count, _now()))
        assert self._rundir is not None
        self._rundir.flush()
        self._next_flush = time.perf_counter() + self.log_interval

    # -- the group (torchrun) ------------------------------------------------------------------
    def _group_boundary(self, sync: StepSync) -> None:
        """A sync step: every rank receives rank 0's decision and the group's mean losses, then applies
        the same commands before its next optimizer step."""
        decision = sync.decide(Decision(self._take_commands(), self._next_sync()) if sync.leader else None)
        losses = self._group_losses(sync)
        if self._active:
            self._guard(lambda: self._flush(losses))
        else:
            self._losses.clear()
            self._lrs = []
        self._apply_all(decision.commands)
        while self.paused and self._stop is None:
            # Held together: rank 0 sends what came (or nothing) once per interval; short collectives,
            # so a pause of any length never meets the process group's timeout.
            waiting: list[Command] = []
            if sync.leader:
                first = self.commands.get(timeout=self.log_interval)
                waiting = ([first] if first is not None else []) + self._take_commands()
                self._guard(self._paused_housekeeping)
            self._apply_all(sync.decide(Decision(waiting, 0) if sync.leader else None).commands)
        self._guard(self._end_pause_clock)
        if self._active and self._rundir is not None:
            self._guard(self._rundir.flush)

    def _take_commands(self) -> list[Command]:
        """Rank 0: what waits in its queue (the socket's commands), answering what the queue dropped."""
        if not self.commands.pending():
            return []
        self._guard(self._answer_dropped)
        return self.commands.take_all()

    def _next_sync(self) -> int:
        """Rank 0: the step of the next sync, about one log interval ahead at the speed since the last."""
        assert self._sync is not None
        return self._sync.plan(self.step_count, self.log_interval)

    def _group_losses(self, sync: StepSync) -> list[float] | None:
        """The mean over ranks of each step's loss since the last sync (one all_reduce, one host copy)."""
        stacked = self._losses.stacked(self._device())
        return None if stacked is None else sync.mean(stacked).tolist()

    def _apply_all(self, commands: list[Command]) -> None:
        for command in commands:
            self._guard(lambda: self._apply(command))

    def _paused_housekeeping(self) -> None:
        if not self._active or self._rundir is None:
            return
        self._collect_saves()
        if self._probe.due():
            self._emit(self._probe.sample(self.step_count, _now()))
        self._rundir.flush()

    def _findings(self, findings: list[Finding]) -> None:
        for f in findings:
            self._emit(Hint(self.step_count if f.step is None else f.step, _now(), rule=f.rule, message=f.message,
                            evidence=f.evidence, remedy=f.remedy, severity=f.severity))

    def _evaluate(self, metrics: dict[str, Any]) -> None:
        self._flush()
        values = {str(k): _number(v) for k, v in metrics.items()}
        val_loss = values.pop("val_loss", math.nan)
        train_loss = values.pop("train_loss", None)
        if train_loss is None and self._epoch_steps:
            train_loss = self._epoch_sum / self._epoch_steps
        metric = next((k[4:] for k in values if k.startswith("val_")), None)
        val_metric = values.pop(f"val_{metric}") if metric else math.nan
        train_metric = values.pop(f"train_{metric}", None) if metric else None
        self.epoch += 1
        improved = math.isfinite(val_loss) and val_loss < self._best_val
        if improved:
            self._best_val, self._best_epoch = val_loss, self.epoch
        lr = self._scheduled_lr()
        ev = EvalDone(self.step_count, _now(), epoch=self.epoch, train_loss=train_loss, train_metric=train_metric,
                      val_loss=val_loss, val_metric=val_metric, metric=metric or "metric",
                      lr=(lr or 0.0) * self.multiplier,
                      best_val_loss=self._best_val if math.isfinite(self._best_val) else None,
                      best_epoch=self._best_epoch, improved=improved,
                      patience_used=0, patience=None, epoch_end=True, extras=values)
        self._last_eval = ev
        self._emit(ev)
        if self._diag is not None and math.isfinite(val_loss):
            self._findings(self._diag.observe_eval(self.epoch, self.step_count, train_loss, val_loss))
        self._epoch_sum, self._epoch_steps = 0.0, 0
        assert self._rundir is not None
        self._rundir.flush()

    # -- commands ------------------------------------------------------------------------
    def _handle_commands(self) -> None:
        self._answer_dropped()
        commands = self.commands.take_all()
        for command in commands:
            self._apply(command)
        if self.paused:
            self._pause_loop()
        elif commands:
            assert self._rundir is not None
            self._rundir.flush()  # the answer on the record now: viewers show it at once

    def _answer_dropped(self) -> None:
        for name, reason, count in self.commands.take_dropped():
            self._emit(CommandRejected(self.step_count, _now(), command=name,
                                       reason=reason if count == 1 else f"{reason} ({count:,} times)"))

    def _reject(self, command: str, reason: str) -> None:
        self._emit(CommandRejected(self.step_count, _now(), command=command, reason=reason))

    def _apply(self, command: Command) -> None:
        if isinstance(command, TogglePause):
            command = Resume() if self.paused else Pause()
        if isinstance(command, Pause):
            if self.paused:
                self._reject("pause", "already paused")
            else:
                self.paused, self._paused_at = True, time.perf_counter()
                self._emit(Paused(self.step_count, _now(), reason="user"))
        elif isinstance(command, Resume):
            if not self.paused:
                self._reject("resume", "not paused")
            else:
                self.paused = False
                self._emit(Resumed(self.step_count, _now(), paused_seconds=round(self._end_pause_clock(), 3)))
        elif isinstance(command, SetLR):
            self._set_lr(command.lr)
        elif isinstance(command, SaveCheckpoint):
            self._save(f"step-{self.step_count}.pt", "manual")
        elif isinstance(command, Evaluate):
            self._reject("evaluate", "this run evaluates in its own loop (run.evaluate())")
        elif isinstance(command, Stop):
            if self._stop is not None:
                self._reject("stop", "the run is already stopping")
                return
            self._stop = command
            self.paused = False
            self._end_pause_clock()
            self._emit(Stopped(self.step_count, _now(), reason=command.reason))
            self._save("latest.pt", "interrupt" if command.signal is not None else "stop")
        else:
            self._reject(getattr(command, "name", type(command).__name__), "unknown command")

    def _set_lr(self, lr: Any) -> None:
        if self.optimizer is None:
            self._reject("set_lr", "no optimizer was given to tuitrain.attach(), so the LR cannot be set")
            return
        try:
            lr = check_lr(lr)
        except ValueError as exc:
            self._reject("set_lr", str(exc))
            return
        scheduled = self._scheduled_lr() or 0.0
        if scheduled <= 0:
            self._reject("set_lr", "the schedule is at zero here, so it cannot be scaled")
            return
        multiplier = float(lr) / scheduled
        if not math.isfinite(multiplier) or multiplier <= 0:
            self._reject("set_lr", f"{lr:g} is out of range for the schedule's current {scheduled:g}")
            return
        old = scheduled * self.multiplier
        self.multiplier = multiplier
        self._arm_after_hook()
        self._emit(LRChanged(self.step_count, _now(), old_lr=old, new_lr=float(lr), multiplier=multiplier))

    def _end_pause_clock(self) -> float:
        if self._paused_at is None:
            return 0.0
        paused = time.perf_counter() - self._paused_at
        self._paused_at = None
        self._paused_total += paused
        self._window = (self._window[0] + paused, self._window[1])
        return paused

    def _pause_loop(self) -> None:
        """Paused: wait here, inside step(), for resume (saves, LR changes and stop still work)."""
        assert self._rundir is not None
        self._rundir.flush()
        try:
            while self.paused:
                command = self.commands.get(timeout=self.log_interval)
                self._answer_dropped()
                if command is not None:
                    self._apply(command)
                self._collect_saves()
                if self._probe.due():
                    self._emit(self._probe.sample(self.step_count, _now()))
                self._rundir.flush()
        finally:
            self._end_pause_clock()
        self._next_flush = time.perf_counter() + self.log_interval

    # -- checkpoints ---------------------------------------------------------------------
    def _save(self, name: str, reason: str) -> None:
        if self._rundir is None or not self._active:
            return  # rank 0 writes the group's checkpoint
        path = self._rundir.checkpoints / name
        if self._save_fn is not None:
            self._save_with_user_function(path, reason)
            return
        if self.model is None:
            if reason == "manual":
                self._emit(CheckpointFailed(self.step_count, _now(), path=str(path), reason=reason,
                                            error="no model and no save function were given to tuitrain.attach()",
                                            previous=path.is_file()))
            return
        try:
            data = ckpt.serialize(self.state_dict(), required=STATE_KEYS)
        except (OSError, RuntimeError, TypeError, ValueError) as exc:
            self._emit(CheckpointFailed(self.step_count, _now(), path=str(path), error=f"{type(exc).__name__}: {exc}",
                                        reason=reason, previous=path.is_file()))
            return
        self._writer.submit(data, [path], self.step_count, reason)

    def state_dict(self) -> dict[str, Any]:
        """What `s` saves: plain state dicts and numbers (torch.load(path, weights_only=True) reads it)."""
        return {
            "format": FORMAT, "version": VERSION, "step": self.step_count, "epoch": self.epoch,
            "lr_multiplier": self.multiplier,
            "model_state_dict": self.model.state_dict() if self.model is not None else {},
            "optimizer_state_dict": self.optimizer.state_dict() if self.optimizer is not None else {},
            "scheduler_state_dict": self.scheduler.state_dict() if hasattr(self.scheduler, "state_dict") else {},
            "rng": capture_rng(),
        }

    def _save_with_user_function(self, path: Path, reason: str) -> None:
        """The user's save(path), written to a temporary name and renamed into place when it returns, so
        a crash or a full disk mid-save never leaves half a checkpoint under the real name."""
        assert self._save_fn is not None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            self._save_fn(tmp)
            if not os.path.lexists(tmp):
                raise FileNotFoundError(f"the save function wrote nothing at the path it was given ({tmp})")
            size = tmp.stat().st_size if tmp.is_file() else sum(p.stat().st_size for p in tmp.rglob("*")
                                                                if p.is_file())
            if path.is_dir() and not path.is_symlink() and tmp.is_dir():
                import shutil
                shutil.rmtree(path)
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 - the user's function: its failure is an event, not a crash
            self._discard(tmp)
            self._emit(CheckpointFailed(self.step_count, _now(), path=str(path), reason=reason,
                                        error=f"{type(exc).__name__}: {exc}", previous=os.path.lexists(path)))
            return
        self._emit(CheckpointSaved(self.step_count, _now(), path=str(path), bytes=size, reason=reason))

    @staticmethod
    def _discard(tmp: Path) -> None:
        import shutil

        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            elif os.path.lexists(tmp):
                tmp.unlink()
        except OSError:
            pass

    def _collect_saves(self) -> None:
        for r in self._writer.completed():
            if r.error is None:
                self._emit(CheckpointSaved(r.step, _now(), path=str(r.path), bytes=r.size, reason=r.reason))
            else:
                self._emit(CheckpointFailed(r.step, _now(), path=str(r.path), error=r.error, reason=r.reason,
                                            previous=r.path.is_file()))

    # -- the end -------------------------------------------------------------------------
    def _end(self, status: str, reason: str, signum: int | None) -> None:
        self._flush()
        self._writer.close()  # every checkpoint on disk before the summary says so
        self._collect_saves()
        seconds = max(time.perf_counter() - self._started - self._paused_total, 1e-9)
        last = self._last_eval
        final = None
        if last is not None:
            final = {"epoch": last.epoch, "step": last.step, "train_loss": last.train_loss,
                     f"train_{last.metric}": last.train_metric, "val_loss": last.val_loss,
                     f"val_{last.metric}": last.val_metric}
        summary = RunSummary(
            status=status, reason=reason, preset=self.name, device=str(self._device()), epochs=self.epoch,
            steps=self.step_count, best_val_loss=self._best_val if math.isfinite(self._best_val) else None,
            best_epoch=self._best_epoch, final=final, train_seconds=round(seconds, 3),
            steps_per_sec=round(self.step_count / seconds, 2), signal=signum,
            run_dir=str(self.run_dir), world_size=group_size()).to_dict()
        assert self._rundir is not None
        try:
            self._rundir.write_json("summary.json", summary)
        except OSError as exc:
            warn(f"{self._rundir.path / 'summary.json'} could not be written: {exc}")
        self._emit(RunEnded(self.step_count, _now(), status=status, summary=summary))
        self._teardown()

    def _teardown(self) -> None:
        """Hooks off, signals back, socket closed, record closed, lock released (each on its own)."""
        self._remove_hooks()
        if self._signals is not None:
            self._signals.restore()
            self._signals = None
        for close in (lambda: self._server and self._server.close(), lambda: self._rundir and self._rundir.close(),
                      lambda: self._lock and self._lock.release()):
            try:
                close()
            except Exception as exc:  # noqa: BLE001
                warn(f"while closing the run: {type(exc).__name__}: {exc}")
        self._server = None

    # -- never the user's problem ----------------------------------------------------------
    def _emit(self, event: Event) -> None:
        if self._rundir is None or not self._active:
            return  # another rank of the group, or a run that could not be recorded: nothing to write
        self._rundir.append(event.records())
        if self._server is not None:
            self._server.listener(event)

    def _metrics_write_failed(self, path: Path, error: str) -> None:
        from .events import WriteFailed

        warn(f"{path} cannot be written ({error}); the records wait in memory and training goes on")
        self._emit(WriteFailed(self.step_count, _now(), path=str(path), error=error))

    def _guard(self, action: Callable[[], Any]) -> None:
        """Our own failure is a warning (once per kind), never an exception in the user's loop."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001
            key = type(exc).__name__
            if key not in self._warned:
                self._warned.add(key)
                warn(f"recording this run failed: {key}: {exc}; training goes on")


def _now() -> float:
    return round(time.time(), 3)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """The user's own config for config.json: JSON values kept, anything else as its text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        out[str(key)] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


_open_runs: list[Run] = []


def _close_at_exit() -> None:
    """A script that never called close(): its runs end with how the script ended."""
    uncaught = _last_uncaught[0]
    for run in list(_open_runs):
        if isinstance(uncaught, KeyboardInterrupt):
            run.close("interrupted", "KeyboardInterrupt (Ctrl-C)")
        elif uncaught is not None:
            run.failed(uncaught)
        else:
            run.close()


_last_uncaught: list[BaseException | None] = [None]
_previous_hook = sys.excepthook


def _excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    _last_uncaught[0] = exc
    _previous_hook(kind, exc, tb)


def attach(*, run_dir: str | os.PathLike[str] | None = None, model: torch.nn.Module | None = None,
           optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, total_steps: int | None = None,
           save: SaveFn | None = None, **options: Any) -> Run:
    """Record and serve this training loop as a tuitrain run; returns the Run (also a context manager).

    Every argument is optional; what is not given is not steered (no optimizer: set LR is rejected
    with that reason). run_dir defaults to the one `tuitrain run` passes (TUITRAIN_RUN_DIR), else
    runs/<script name>-<YYYYmmdd-HHMMSS>/. Options: steps_per_epoch, name, config (a dict for
    config.json), log_interval (seconds between flushes), handle_signals (SIGINT/SIGTERM/SIGHUP
    save and stop the loop instead of their own handling), insights (layer health and hints).
    """
    import atexit

    run = Run(run_dir=run_dir, model=model, optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
              save=save, **options)
    if not _open_runs:
        atexit.register(_close_at_exit)
        if sys.excepthook is _previous_hook:
            sys.excepthook = _excepthook
    if not run._closed:
        _open_runs.append(run)
    return run
