"""Trainer.run(): the production training loop, steerable from another thread.

The loop never waits for a viewer. Commands are polled once per optimizer
step (a cheap queue check) and applied at that step boundary; every answer
is an event that goes to the EventBuffer, to listeners and to metrics.jsonl.
Losses stay on the device and are copied to the host once per flush
(`log_interval` seconds): every .item() on a GPU is a sync that stalls it.

Under torchrun (a process group of 2+ ranks, engine/distributed.py) every rank
builds the same Trainer: the model is wrapped in DistributedDataParallel, each
rank trains on its shard of every epoch, and at *sync steps* chosen by rank 0
(about one log interval apart) every rank receives rank 0's commands and the
group's mean losses, so every command takes effect on every rank at the same
step. Only rank 0 records (metrics.jsonl, checkpoints, summary.json); the
others train and count.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import nn

from . import checkpoint as ckpt
from . import schedules, workers
from .batching import Batches, check_data, make_batches
from .distributed import Decision, StepSync, group_rank, group_size
from .commands import (Command, CommandQueue, Evaluate, Pause, Resume, SaveCheckpoint, SetLR, Stop,
                       TogglePause, check_lr)
from .config import ConfigError, RunConfig, available_cpus
from .devices import device_name, resolve_device
from .boundary import BoundaryProbe, boundary_inputs
from .diagnosis import Diagnostician, Finding
from .events import (BoundaryGrid, BoundaryPoints, CheckpointFailed, CheckpointSaved, CommandRejected, EarlyStop,
                     EvalDone, Event, EventBuffer, Hint, LayerStats, LRChanged, NonFinite, Paused, Resumed,
                     RunEnded, RunFailed, RunStarted, RunSummary, Sample, SchedulePreview, StepStats, Stopped)
from .layer_health import LayerHealth
from .resources import ProcessProbe, silent_ranks
from .rundir import RunDir, Unrecorded, read_history
from .seeding import capture_rng, restore_rng, seed_everything

if TYPE_CHECKING:
    from ..presets.base import Preset

Listener = Callable[[Event], None]

#: Models below this many parameters train faster on one intra-op thread
#: (measured on the circles preset: see tests/perf/bench_engine.py), and
#: that leaves a core for the dashboard.
SMALL_MODEL_PARAMS = 1_000_000
#: Seconds between decision-boundary frames during an epoch (plus one per evaluation).
BOUNDARY_INTERVAL = 0.5


@dataclass
class RunResult:
    status: str
    """'finished', 'stopped', 'early_stopped', 'interrupted' or 'failed'."""
    run_dir: Path
    summary: dict[str, Any]
    signal: int | None = None
    error: str | None = None
    traceback: str | None = None
    record_error: str | None = None
    """Set when the run's record (summary.json, metrics.jsonl) could not be fully written."""


@dataclass
class _EpochTotals:
    """Running sums for the epoch's train loss and metric (kept in checkpoints)."""

    loss_sum: "_ExactSum" = field(default_factory=lambda: _ExactSum())
    steps: int = 0
    samples: int = 0
    targets: int = 0
    """Target elements seen (= samples, or samples x tokens for a language model)."""

    def as_dict(self) -> dict[str, Any]:
        return {"loss_partials": list(self.loss_sum.partials), "steps": self.steps, "samples": self.samples,
                "targets": self.targets}


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(loss) if loss < 700 else math.inf


#: What the preset's own code may raise that is still the preset failing, not a request to exit.
PRESET_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)
#: Characters of an error message kept in events, the summary and on the terminal (error.txt has it all).
ERROR_CHARS = 300
#: Characters of a traceback kept in the `error` event (the end, where the error is).
TRACEBACK_CHARS = 20_000

_ENGINE_DIRS = tuple(str(Path(p).resolve()) + "/" for p in (Path(__file__).parent, Path(torch.__file__).parent,
                                                           Path(traceback.__file__).parent))


def failure_text(exc: BaseException) -> str:
    """One bounded line for a failure in the preset's code: 'Type: message (at file:line in func)'.

    The place is the deepest frame outside tuitrain's engine, torch and the standard
    library: the user's own line. The full traceback belongs in error.txt.
    """
    message = " ".join(str(exc).split())
    if len(message) > ERROR_CHARS:
        message = message[:ERROR_CHARS] + f"\u2026 ({len(message) - ERROR_CHARS:,} more characters in error.txt)"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if _user_file(f.filename)] or frames
    if ours:
        text += f" (at {ours[-1].filename}:{ours[-1].lineno} in {ours[-1].name})"
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _user_file(filename: str) -> bool:
    """Not tuitrain's engine, torch or the standard library (packages installed next to it count as the user's)."""
    path = str(Path(filename).resolve())
    if path.startswith(_ENGINE_DIRS[:2]):
        return False
    stdlib = _ENGINE_DIRS[2]
    return not path.startswith(stdlib) or "-packages/" in path[len(stdlib):]


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"[{len(text) - limit:,} characters cut; all in error.txt]\n" + text[-limit:]


class _Restart(Exception):
    """Raised after a roll-back to re-enter the epoch loop from the restored position."""


class _EndRun(Exception):
    """Raised inside the loop to leave it with a final status."""

    def __init__(self, status: str, reason: str, signal: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.signal = status, reason, signal


@dataclass
class _Pending:
    """Per-step values waiting for the next flush (tensors stay on the device).

    One instance lives for the whole run (the loop holds it in a local), so
    it is emptied in place, never replaced.
    """

    first_step: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)
    norms: list[torch.Tensor] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    preds: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    layers: torch.Tensor | None = None
    """LayerHealth.after_step() of the step collected since the last flush."""
    wait: float = 0.0
    """Seconds spent waiting for batches since the last flush."""

    def clear(self) -> None:
        self.losses, self.norms, self.lrs, self.preds, self.targets = [], [], [], [], []
        self.layers, self.wait = None, 0.0


class _ExactSum:
    """Exactly rounded running sum (Shewchuk partials, as math.fsum keeps them).

    The epoch's train loss is summed flush by flush, and flushes fall at
    different steps in a resumed run; exact partials make the result
    independent of that grouping, so resumed metrics match bit for bit.
    """

    def __init__(self, partials: list[float] | None = None) -> None:
        self.partials = list(partials or [])

    def add_all(self, values: list[float]) -> None:
        partials = self.partials
        for x in values:
            i = 0
            for y in partials:
                if abs(x) < abs(y):
                    x, y = y, x
                hi = x + y
                lo = y - (hi - x)
                if lo:
                    partials[i] = lo
                    i += 1
                x = hi
            partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


def _where(fn: Any) -> str:
    """A function's file and line, to point at a mistake in the user's preset file."""
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else repr(fn)


class Trainer:
    """Builds a run from a config and a preset; `run()` trains it.

    Construction does everything that can fail on bad input (device, data,
    model, checkpoint fit) so the caller can report it before training.
    """

    def __init__(self, cfg: RunConfig, preset: Preset, run_dir: str | Path, *,
                 resume: dict[str, Any] | None = None,
                 events: EventBuffer | None = None,
                 listeners: Iterable[Listener] = (),
                 boundary: bool = False,
                 insights: bool = True) -> None:
        """`boundary` draws the decision boundary (2-D presets; for live viewers);
        `insights` collects layer health and diagnosis hints."""
        self.cfg = cfg
        self.preset = preset
        self.world = group_size()
        self.rank = group_rank() if self.world > 1 else 0
        self.leader = self.rank == 0
        """Rank 0 (or no group): the rank that records the run and serves its socket."""
        if not self.leader:
            boundary = insights = False  # what only a viewer or a hint needs: rank 0's
        self.rundir = RunDir(run_dir) if self.leader else Unrecorded(run_dir)
        self.commands = CommandQueue()
        self.events = events if events is not None else EventBuffer()
        self.listeners = list(listeners)
        self.device = resolve_device(cfg.device)
        self.classification = preset.task == "classification"

        seed_everything(cfg.seed)
        data = preset.make_data(cfg.seed)
        try:
            check_data(data, self.classification)
        except ValueError as exc:
            text = str(exc) if str(exc).startswith("make_data") else f"make_data(seed): {exc}"
            raise ConfigError(f"{_where(preset.make_data)}: {text} (preset {preset.name!r})") from None
        try:
            shard = (self.rank, self.world)
            self.train_batches: Batches = make_batches(
                data.train, cfg.batch_size, self.device, cfg.seed, shuffle=True,
                drop_last=preset.drop_last, num_workers=cfg.num_workers, shard=shard)
            self.val_batches: Batches = make_batches(
                data.val, cfg.eval_batch_size or max(256, cfg.batch_size * 4), self.device, cfg.seed,
                shuffle=False, num_workers=cfg.num_workers, shard=shard)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"preset {preset.name!r}: {exc}") from None
        if self.train_batches.batches_per_epoch == 0:
            raise ConfigError(f"preset {preset.name!r}: the training split has {self.train_batches.size} "
                              f"samples, not one batch of {cfg.batch_size} (the preset drops the last batch)")
        if self.val_batches.size == 0:
            raise ConfigError(f"preset {preset.name!r}: the validation split is empty")
        self.model: nn.Module = preset.make_model().to(self.device)
        self._probe: BoundaryProbe | None = None
        inputs = boundary_inputs(data.val, self.classification)
        if boundary and preset.boundary is not False and inputs is not None:
            try:
                self._probe = BoundaryProbe(*inputs, self.device)
            except ValueError:
                self._probe = None  # nothing drawable (no finite points, too many classes)
        self._boundary_at = -math.inf
        self._health = LayerHealth(self.model) if insights else None
        self._collect_due = False
        self._diag = Diagnostician(patience=cfg.patience, device_type=self.device.type) if insights else None
        self.loss_fn = preset.loss()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self._set_threads()

        self.steps_per_epoch = math.ceil(self.train_batches.batches_per_epoch / cfg.accumulate)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        from .optimizers import build_optimizer
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scheduler = schedules.build_scheduler(self.optimizer, cfg, self.total_steps)
        self.granularity = schedules.GRANULARITY[cfg.scheduler]
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # Progress: `epoch` counts completed epochs; `batch_in_epoch` is the
        # data-order position inside the current one.
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.multiplier = 1.0
        self.best_val_loss = math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.totals = _EpochTotals()
        self.history: list[dict[str, Any]] = []
        self.last_eval: EvalDone | None = None
        self.paused = False
        self.resumed = resume is not None
        self.record_error: str | None = None
        """After run(): why the run's record is incomplete (summary.json or metrics.jsonl unwritten), else None."""
        self._correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._pending = _Pending()
        self._writer = ckpt.CheckpointWriter()
        self._skipped = 0
        self._skipped_first: int | None = None
        self._skip_hinted = False
        self._train_seconds = 0.0
        self._session_steps = 0
        self._session_samples = 0
        self._window = (time.perf_counter(), 0, 0)  # (time, steps, samples) at the last flush
        self._process_probe = ProcessProbe()  # the run's RSS and CUDA memory, for viewers (<= 1/s)
        self._tensorboard: Any = None  # engine/tensorboard_feed.py TensorBoardFeed, with --tensorboard
        self._paused_total = 0.0
        self._paused_at: float | None = None
        self._collective = True
        self._ranks: list[dict[str, Any]] = []
        """Under torchrun: every rank's numbers from the last flush (ProcessStats.ranks)."""
        """False once this rank failed on its own: wrapping up, it makes no more collectives."""
        self.resume_warning: str | None = None
        """A resumed run at another world size: how its data order differs (said once at start)."""
        if resume is not None:
            self.load_state(resume)
            self._load_diagnosis(resume)
            planned = schedules.planned_steps(self.scheduler)
            if planned is not None and self.total_steps > planned:
                raise ConfigError(
                    f"--scheduler {cfg.scheduler} planned this run's LR for {planned:,} steps (the run started "
                    f"with that --max-steps), so it cannot train on to step {self.total_steps:,}: resume with "
                    f"--max-steps {planned} at most, or start a new run for a longer plan")
        self.sync: StepSync | None = StepSync(first_step=self.step + 1) if self.world > 1 else None
        """Under torchrun: the group's agreement at sync steps (engine/distributed.py)."""
        self._forward: nn.Module = self.model
        """What the loop calls: the model, or its DistributedDataParallel wrapper in a group."""
        if self.sync is not None:
            from torch.nn.parallel import DistributedDataParallel

            # Built after a resume restored the weights: DDP starts every rank from rank 0's.
            self._forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- setup helpers ---------------------------------------------------------
    def _set_threads(self) -> None:
        if self.cfg.threads is not None:
            # Never more than the CPUs here (a resumed run may come from a bigger machine).
            torch.set_num_threads(min(self.cfg.threads, available_cpus()))
        elif self.device.type == "cpu" and self.parameters < SMALL_MODEL_PARAMS:
            torch.set_num_threads(1)

    def _amp_dtype(self) -> torch.dtype | None:
        cfg, dev = self.cfg, self.device
        enabled = cfg.amp if cfg.amp is not None else dev.type == "cuda"
        if not enabled:
            return None
        if cfg.amp_dtype == "float16":
            return torch.float16
        if cfg.amp_dtype == "bfloat16":
            return torch.bfloat16
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16  # CPU autocast supports bf16

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- state -------------------------------------------------------------------
    def state_dict(self, group: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint; `group`: every rank's own state under torchrun (_group_state)."""
        return {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler_state_dict": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "lr_multiplier": self.multiplier,
            "best_val_loss": self.best_val_loss,
            "best_epoch": -1 if self.best_epoch is None else self.best_epoch,
            "early_stop_counter": self.bad_epochs,
            "epoch_totals": {**self.totals.as_dict(), "correct": self._correct.cpu()},
            "rng": capture_rng(),
            **({"group": group} if group is not None else {}),
            "config": self.cfg.to_dict(),
            "preset": self.preset.name,
            # Optional: what the hints need to judge a resumed run as one never stopped.
            **({"diagnosis": self._diag.state_dict()} if self._diag is not None else {}),
        }

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG and the epoch's counts of this rank's shard."""
        return {"rng": capture_rng(), "correct": self._correct.cpu(), "targets": self.totals.targets,
                "samples": self.totals.samples}

    def _group_state(self) -> dict[str, Any]:
        """Every rank's _rank_state, gathered at the same step (a collective: every rank calls it)."""
        assert self.sync is not None
        return {"world_size": self.world, "ranks": self.sync.gather(self._rank_state())}

    def _load_diagnosis(self, state: dict[str, Any]) -> None:
        """Resume the hints' windows where the checkpoint left them (only on resume: a NaN
        roll-back keeps the windows it has). A checkpoint without them (an older tuitrain)
        leaves the rules that compare with the run's start silent: that start is unknown."""
        if self._diag is None or "diagnosis" not in state:
            return
        try:
            self._diag.load_state_dict(state["diagnosis"])
        except ValueError as exc:
            raise ckpt.CheckpointError(f"the checkpoint's diagnosis is not readable: {exc}") from None

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint into this run; a mismatch is a CheckpointError.

        checkpoint.load() has checked every field's type and range; what only
        this run knows (the model's and optimizer's shapes, the scheduler's and
        scaler's layout, the epoch's length) is checked here, before anything
        is restored, and any error torch raises on the way is a CheckpointError too.
        """
        ckpt.validate(state)
        self._check_fits(state)
        try:
            self._restore(state)
        except ckpt.CheckpointError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise ckpt.CheckpointError(f"the checkpoint does not fit this run: {type(exc).__name__}: {first}") from None

    def _restore_rank(self, state: dict[str, Any]) -> None:
        """This rank's own RNG and counts when the checkpoint's group had this world size; otherwise
        the run goes on with rank 0's, and the data order differs from the one saved (said at start)."""
        group = state.get("group")
        saved = group["world_size"] if group else 1
        if saved == self.world:
            if group:
                mine = group["ranks"][self.rank]
                restore_rng(mine["rng"])
                self._correct = mine["correct"].to(self.device).clone()
                self.totals.targets, self.totals.samples = int(mine["targets"]), int(mine["samples"])
            return
        self.resume_warning = (f"the checkpoint was saved by {saved} rank{'s' if saved > 1 else ''}, this run has "
                               f"{self.world}: each rank's share of the data, and so the order of the batches, "
                               "differs from the run that saved it (the epoch goes on from the same fraction)")
        per_rank = self.train_batches.batches_per_epoch
        self.batch_in_epoch = min(per_rank, round(self.batch_in_epoch * saved / self.world))

    def _check_fits(self, state: dict[str, Any]) -> None:
        """The structure-dependent checks, against what this run just built."""
        sched_state = state["scheduler_state_dict"]
        if (self.scheduler is None) != (not sched_state):
            raise ckpt.CheckpointError("the checkpoint was saved with a different --scheduler")
        if self.scheduler is not None:
            ckpt.check_like(self.scheduler.state_dict(), sched_state, "scheduler_state_dict")
        if state["scaler_state_dict"] or self.scaler.is_enabled():
            ckpt.check_like(self.scaler.state_dict(), state["scaler_state_dict"], "scaler_state_dict")
        fresh = self.optimizer.state_dict()
        saved = state["optimizer_state_dict"]
        if len(saved["param_groups"]) != len(fresh["param_groups"]):
            raise ckpt.CheckpointError("the checkpoint's optimizer state does not fit: "
                                       f"{len(saved['param_groups'])} parameter groups, this run has "
                                       f"{len(fresh['param_groups'])}")
        shapes: dict[int, torch.Size] = {}
        for i, (mine, theirs) in enumerate(zip(fresh["param_groups"], saved["param_groups"])):
            ckpt.check_like({k: v for k, v in mine.items() if k != "params"},
                            {k: v for k, v in theirs.items() if k != "params"}, f"optimizer param group {i}")
            if len(theirs["params"]) != len(mine["params"]):
                raise ckpt.CheckpointError(f"the checkpoint's optimizer state does not fit: parameter group {i} "
                                           f"has {len(theirs['params'])} tensors, this run {len(mine['params'])}")
            params = self.optimizer.param_groups[i]["params"]
            shapes.update((index, p.shape) for index, p in zip(theirs["params"], params))
        for index, per_param in saved["state"].items():
            if index not in shapes or not isinstance(per_param, dict):
                raise ckpt.CheckpointError(f"the checkpoint's optimizer state does not fit: entry {index!r}")
            for key, value in per_param.items():
                ok = (isinstance(value, torch.Tensor) and (value.dim() == 0 or value.shape == shapes[index])
                      or isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value))
                if not ok:
                    raise ckpt.CheckpointError(f"the checkpoint's optimizer state does not fit: {key!r} of "
                                               f"parameter {index} is not a number or a tensor of shape "
                                               f"{tuple(shapes[index])}")
        saved_world = state["group"]["world_size"] if state.get("group") else 1
        if saved_world == self.world and state["batch_in_epoch"] > self.train_batches.batches_per_epoch:
            raise ckpt.CheckpointError(f"the checkpoint is at batch {state['batch_in_epoch']} of an epoch that has "
                                       f"{self.train_batches.batches_per_epoch} batches here")
        if state["epoch_totals"]["correct"].dtype != torch.int64:
            raise ckpt.CheckpointError("the checkpoint's epoch_totals.correct is not an int64 count")

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model_state_dict"], strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise ckpt.CheckpointError(
                f"the checkpoint does not fit the model of preset {self.preset.name!r}: {first}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ckpt.CheckpointError(f"the checkpoint's optimizer state does not fit: {exc}") from None
        sched_state = state["scheduler_state_dict"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sched_state)
        if state["scaler_state_dict"]:
            self.scaler.load_state_dict(state["scaler_state_dict"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.multiplier = float(state["lr_multiplier"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = None if int(state["best_epoch"]) < 0 else int(state["best_epoch"])
        self.bad_epochs = int(state["early_stop_counter"])
        totals = state["epoch_totals"]
        self.totals = _EpochTotals(_ExactSum([float(v) for v in totals["loss_partials"]]),
                                   int(totals["steps"]), int(totals["samples"]),
                                   int(totals.get("targets", totals["samples"])))
        self._correct = totals["correct"].to(self.device).clone()
        restore_rng(state["rng"])
        self._restore_rank(state)
        # The schedule's current LR lives in the optimizer's param groups,
        # which load_state_dict restored; keep the scheduler's view in step.
        if self.scheduler is not None and hasattr(self.scheduler, "_last_lr"):
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr

    # -- events ----------------------------------------------------------------
    def emit(self, event: Event) -> None:
        if not self.leader:
            return  # rank 0 records the group's run
        self.events.put(event)
        self.rundir.append(event.records())
        for listener in self.listeners:
            listener(event)

    def _metrics_write_failed(self, path: Path, error: str) -> None:
        """metrics.jsonl refused a write: say so once; the records wait in memory, the run goes on."""
        from .events import WriteFailed

        self.emit(WriteFailed(self.step, self._now(), path=str(path), error=error))

    def _now(self) -> float:
        return round(time.time(), 3)

    # -- public entry ------------------------------------------------------------
    def run(self) -> RunResult:
        try:
            return self._run()
        finally:
            self._close_tensorboard()  # also when something unexpected ends the run: the helper never outlives it

    def _run(self) -> RunResult:
        status, reason, signal, error, tb = "finished", "completed all epochs", None, None, None
        self._start()
        started = time.perf_counter()
        try:
            self._train()
        except _EndRun as end:
            status, reason, signal = end.status, str(end), end.signal
        except PRESET_FAILURES as exc:  # the user's model, data or loss raised (sys.exit() in it too)
            self._collective = False  # the other ranks may be anywhere: no collective while wrapping up
            status, reason = "failed", self._group_failure(exc) or failure_text(exc)
            error, tb = reason, traceback.format_exc()
            self._safe(self._flush)
            self.emit(RunFailed(self.step, self._now(), error=error, traceback=_tail(tb, TRACEBACK_CHARS)))
            self._safe(lambda: self.rundir.write_error(tb))
        self._writer.close()  # every checkpoint on disk before the summary says so
        self._collect_saves()
        self._train_seconds += time.perf_counter() - started - self._paused_total
        summary = self._summary(status, reason, signal)
        record_error = None
        try:
            self.rundir.write_json("summary.json", summary)
        except Exception as exc:  # a full disk, a deleted run directory: the record is incomplete
            record_error = f"{self.rundir.path / 'summary.json'}: {type(exc).__name__}: {exc}"
        self.emit(RunEnded(self.step, self._now(), status=status, summary=summary))
        if isinstance(getattr(self, "_metrics_fd", None), int):
            workers.release(self._metrics_fd)
        self.rundir.close()
        self._close_tensorboard()
        if record_error is None and (self.rundir.dropped_lines or self.rundir.metrics_error):
            record_error = (f"{self.rundir.path / 'metrics.jsonl'}: {self.rundir.dropped_lines:,} records could "
                            f"not be written ({self.rundir.metrics_error or 'the disk did not take them'})")
        self.record_error = record_error
        return RunResult(status, self.rundir.path, summary, signal, error, tb, record_error)

    def _close_tensorboard(self) -> None:
        """The record is complete: the TensorBoard writer gets the last lines and ends (bounded wait)."""
        feed, self._tensorboard = self._tensorboard, None
        if feed is not None:
            self.rundir.tee = None
            feed.close()

    def _safe(self, action: Callable[[], Any]) -> None:
        """Disk trouble while wrapping up must not hide the run's real outcome."""
        try:
            action()
        except Exception:
            pass

    def _start(self) -> None:
        self.rundir.create(resume=self.resumed)
        config = self.cfg.to_dict()
        if self.world > 1:  # what the group makes of it: sizes are per rank, a step takes every rank's batch
            config["group"] = {"world_size": self.world, "batch_size_per_rank": self.cfg.batch_size,
                               "accumulate": self.cfg.accumulate,
                               "samples_per_step": self.cfg.batch_size * self.world * self.cfg.accumulate,
                               "steps_per_epoch": self.steps_per_epoch}
        self.rundir.write_json("config.json", config)
        if self.resumed:
            self.history = [row for row in read_history(self.rundir.path) if row["epoch"] <= self.epoch]
        self.rundir.open_metrics(on_error=self._metrics_write_failed)
        self._metrics_fd = getattr(self.rundir, "_metrics", None)
        if isinstance(self._metrics_fd, int):
            workers.parent_only(self._metrics_fd)  # a DataLoader worker never holds the run's record
        if self.cfg.tensorboard and self._tensorboard is None and self.leader:
            # A helper process writes RUN_DIR/tensorboard/ from the lines each flush writes to metrics.jsonl.
            from .tensorboard_feed import TensorBoardFeed
            self._tensorboard = TensorBoardFeed.start(self.rundir.path / "tensorboard")
            if self._tensorboard is not None:
                self.rundir.tee = self._tensorboard.send
        self.emit(RunStarted(
            self.step, self._now(), run_dir=str(self.rundir.path), preset=self.preset.name,
            task=self.preset.task, metric=self.preset.metric_name, device=str(self.device),
            device_name=device_name(self.device), config=self.cfg.to_dict(), epoch=self.epoch,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            train_size=self.train_batches.size, val_size=self.val_batches.size,
            parameters=self.parameters,
            amp="off" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch."),
            resumed=self.resumed, world_size=self.world))
        if self.resume_warning:
            self.emit(Hint(self.step, self._now(), rule="world_size_changed", message=self.resume_warning,
                           evidence="", remedy="resume with the world size that saved the checkpoint for the "
                                             "same batches", severity="warning"))
        self._emit_preview()
        if self._probe is not None:
            probe = self._probe
            self.emit(BoundaryPoints(self.step, self._now(), **probe.geometry(), classes=probe.classes,
                                     points=probe.points))
            self._emit_boundary(epoch_end=False)
        self.rundir.flush()

    def _emit_boundary(self, *, epoch_end: bool, epoch: int | None = None) -> None:
        probe = self._probe
        if probe is None:
            return
        self._boundary_at = time.perf_counter()
        self.emit(BoundaryGrid(self.step, self._now(), **probe.geometry(), cells=probe.predict(
            self.model, self._autocast()), epoch=self.epoch if epoch is None else epoch, epoch_end=epoch_end))

    def _emit_findings(self, findings: Iterable[Finding]) -> None:
        for f in findings:
            self.emit(Hint(self.step if f.step is None else f.step, self._now(), rule=f.rule, message=f.message, evidence=f.evidence,
                           remedy=f.remedy, severity=f.severity))

    def _emit_preview(self) -> None:
        sched_lr = schedules.scheduled_lr(self.optimizer)
        steps, lrs = schedules.preview(
            self.cfg, self.optimizer, state=self.scheduler.state_dict() if self.scheduler is not None else None,
            lr_now=sched_lr, step=self.step, epoch=self.epoch, steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps, multiplier=self.multiplier)
        self.emit(SchedulePreview(self.step, self._now(), steps=steps, lrs=lrs, multiplier=self.multiplier))

    # -- the loop ----------------------------------------------------------------
    def _train(self) -> None:
        cfg = self.cfg
        self.model.train()
        if self.step >= self.total_steps and self.total_steps > 0 and self.epoch < cfg.epochs:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                raise _EndRun("finished", f"reached --max-steps {cfg.max_steps}")
            raise _EndRun("finished", f"already at step {self.step:,}, past the {self.total_steps:,} steps of "
                                      f"{cfg.epochs} epochs")
        while self.epoch < cfg.epochs:
            try:
                self._train_epoch()
                self._end_epoch()
            except _Restart:
                continue
            if cfg.max_steps is not None and self.step >= cfg.max_steps and self.epoch < cfg.epochs:
                raise _EndRun("finished", f"reached --max-steps {cfg.max_steps}")
        raise _EndRun("finished", f"completed {cfg.epochs} epochs")

    def _train_epoch(self) -> None:
        cfg = self.cfg
        model, loss_fn, optimizer, scaler = self._forward, self.loss_fn, self.optimizer, self.scaler
        sync = self.sync
        # DDP averages gradients at every backward; inside an accumulation group only the last must.
        no_sync = getattr(model, "no_sync", None) if sync is not None and cfg.accumulate > 1 else None
        plain = contextlib.nullcontext()  # reusable: no object per batch on the single-process path
        accumulate = cfg.accumulate
        clip = cfg.grad_clip
        per_step_schedule = self.granularity == "step" and self.scheduler is not None
        skip_nonfinite = cfg.on_nan == "skip"
        classification = self.classification
        use_scaler = scaler.is_enabled()
        pending = self._pending
        commands = self.commands
        nbatches = self.train_batches.batches_per_epoch
        params = [p for group in optimizer.param_groups for p in group["params"]]
        interval = cfg.log_interval
        next_flush = time.perf_counter() + interval
        health = self._health
        perf = time.perf_counter

        b = self.batch_in_epoch
        group = 0
        group_loss: torch.Tensor | None = None
        samples = 0
        batches = iter(self.train_batches.epoch(self.epoch, start=b))
        while True:
            # Time spent waiting for the next batch: the input-bound diagnosis.
            fetch_start = perf()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            pending.wait += perf() - fetch_start
            local = no_sync() if no_sync is not None and group + 1 < accumulate and b + 1 < nbatches \
                else plain
            with local:
                with self._autocast():
                    out = model(x)
                    loss = loss_fn(out, y)
                if accumulate > 1:
                    (scaler.scale(loss / accumulate) if use_scaler else loss / accumulate).backward()
                else:
                    (scaler.scale(loss) if use_scaler else loss).backward()
            detached = loss.detach()
            group_loss = detached if group_loss is None else group_loss + detached
            if classification:
                # One small op per batch; compared and summed once per flush.
                pending.preds.append(out.detach().argmax(1))
                pending.targets.append(y)
                self.totals.targets += y.numel()
            samples += len(x)
            group += 1
            b += 1
            if group < accumulate and b < nbatches:
                continue

            # -- one optimizer step -------------------------------------------
            step_loss = group_loss / group if group > 1 else group_loss
            if skip_nonfinite and not self._finite_everywhere(step_loss, params, use_scaler):
                # --on-nan skip needs this host sync each step; stop/pause do not.
                optimizer.zero_grad(set_to_none=True)
                self._skipped += 1
                self._skipped_first = self._skipped_first if self._skipped_first is not None else self.step + 1
                if use_scaler:
                    scaler.update()
                group, group_loss = 0, None
                self.batch_in_epoch = b
                continue
            collect = self._collect_due and health is not None
            if use_scaler and (collect or clip is not None):
                scaler.unscale_(optimizer)  # true gradient norms; once per step
            if collect:
                health.before_step()
            if clip is not None:
                pending.norms.append(torch.nn.utils.clip_grad_norm_(params, clip))
            lr = optimizer.param_groups[0]["lr"]
            if self.multiplier != 1.0:
                # LR = schedule(step) x multiplier: apply the multiplier for this
                # update only, so the scheduler keeps stepping its own curve.
                for g in optimizer.param_groups:
                    g["lr"] = g["lr"] * self.multiplier
                self._optimizer_step(use_scaler)
                for g in optimizer.param_groups:
                    g["lr"] = g["lr"] / self.multiplier
                lr *= self.multiplier
            else:
                self._optimizer_step(use_scaler)
            optimizer.zero_grad(set_to_none=True)
            if collect:
                pending.layers = health.after_step()
                self._collect_due = False

            if not pending.losses:
                pending.first_step = self.step + 1
            pending.losses.append(step_loss)
            pending.lrs.append(lr)
            self.step += 1
            self.batch_in_epoch = b
            self._session_samples += samples
            self.totals.samples += samples
            samples = 0
            group, group_loss = 0, None
            if per_step_schedule and self.step <= self.total_steps:
                self.scheduler.step()

            # -- step boundary: commands, flush, limits ---------------------------
            if sync is not None:
                if sync.due(self.step):
                    self._group_boundary(sync)
            elif commands.pending():
                self._flush()
                self._handle_commands()
                next_flush = time.perf_counter() + interval
            elif time.perf_counter() >= next_flush:
                self._flush()
                next_flush = time.perf_counter() + interval
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                if b < nbatches:
                    self._finish_run("finished", f"reached --max-steps {cfg.max_steps}")
                break  # on an epoch boundary: the epoch's end runs as usual first
        self._flush(frame=False)  # the epoch's end draws its own frame after evaluating

    @staticmethod
    def _finite_update(loss: torch.Tensor, params: list[torch.Tensor], use_scaler: bool) -> bool:
        """--on-nan skip: a finite loss and finite gradients (a finite loss can still bring
        NaN gradients, e.g. an Inf input behind a ReLU that is off). A GradScaler checks
        the gradients itself. One host sync per step."""
        checks = [loss.detach().float().reshape(1)]
        grads = [p.grad.detach() for p in params if p.grad is not None] if not use_scaler else []
        if grads:
            norms = torch._foreach_norm(grads, ord=float("inf")) if hasattr(torch, "_foreach_norm") else \
                [g.abs().max() for g in grads]
            checks.append(torch.stack([n.float() for n in norms]))
        return bool(torch.isfinite(torch.cat(checks)).all())

    def _finite_everywhere(self, loss: torch.Tensor, params: list[torch.Tensor], use_scaler: bool) -> bool:
        """--on-nan skip: this step's update is finite on every rank (a NaN on one skips on all)."""
        finite = self._finite_update(loss, params, use_scaler)
        return finite if self.sync is None else self.sync.all_true(finite, self.device)

    def _optimizer_step(self, use_scaler: bool) -> None:
        if use_scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _end_epoch(self) -> None:
        """Evaluate, record history, step per-epoch schedules, save, maybe stop early."""
        cfg = self.cfg
        epoch_no = self.epoch + 1
        ev = self._evaluate(epoch_end=True)
        lr_used = schedules.scheduled_lr(self.optimizer) * self.multiplier
        if self.scheduler is not None:
            if self.granularity == "epoch":
                self.scheduler.step()
            elif self.granularity == "metric" and math.isfinite(ev.val_loss):
                self.scheduler.step(ev.val_loss)
        self.history.append({
            "epoch": epoch_no, "step": self.step, "train_loss": ev.train_loss,
            f"train_{ev.metric}": ev.train_metric, "val_loss": ev.val_loss,
            f"val_{ev.metric}": ev.val_metric, "lr": lr_used, **ev.extras,
        })
        self._emit_boundary(epoch_end=True, epoch=epoch_no)
        self._emit_sample(epoch_no)
        if self._diag is not None:
            self._emit_findings(self._diag.observe_eval(epoch_no, self.step, ev.train_loss, ev.val_loss,
                                                        self.bad_epochs))
        self.epoch += 1
        self.batch_in_epoch = 0
        self.totals = _EpochTotals()
        self._correct.zero_()
        if not math.isfinite(ev.val_loss):
            self._non_finite(self.step, what="validation loss")
        self._save({"latest.pt": "epoch", **({"best.pt": "best"} if ev.improved else {})})
        # Off the training thread: an fsync can take longer than a whole epoch.
        if self.leader:
            self._writer.submit(self.rundir.json_bytes(self.history), [self.rundir.path / "history.json"],
                                self.step, "history", report=False)
        if self.granularity in ("epoch", "metric"):
            self._emit_preview()
        self.rundir.flush()
        if cfg.patience is not None and self.bad_epochs >= cfg.patience and self.epoch < cfg.epochs:
            self.emit(EarlyStop(self.step, self._now(), epoch=epoch_no, patience=cfg.patience,
                                best_val_loss=self.best_val_loss, best_epoch=self.best_epoch or 0))
            raise _EndRun("early_stopped",
                          f"no better validation loss for {cfg.patience} epochs (best {self.best_val_loss:.4g} "
                          f"at epoch {self.best_epoch})")
        if self.sync is None:
            self._handle_commands()
        # A group answers commands at its next sync step only: an extra one per epoch would cost every
        # rank a round of collectives for nothing in most epochs.

    # -- evaluation ----------------------------------------------------------------
    def _evaluate(self, *, epoch_end: bool) -> EvalDone:
        model = self.model
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        elements = 0  # target elements: the metric's denominator (tokens for a language model)
        try:
            with torch.inference_mode(), self._autocast():
                for x, y in self.val_batches.epoch(0):
                    out = model(x)
                    loss_sum += self.loss_fn(out, y).double() * len(x)
                    if self.classification:
                        metric_sum += (out.argmax(1) == y).sum()
                    else:
                        metric_sum += (out.float() - y.float()).abs().sum().double()
                    elements += y.numel()
                    count += len(x)
            # One host copy for the whole evaluation (and the epoch's train accuracy).
            sums = torch.stack([loss_sum, metric_sum, self._correct.double()])
            if self.sync is not None:  # each rank evaluated its shard: the group's sums and counts
                counts = torch.tensor([count, elements, self.totals.targets], dtype=torch.float64,
                                      device=self.device)
                sums, counts = self.sync.total(torch.cat([sums, counts])).split(3)
                count, elements, targets = (int(v) for v in counts.tolist())
            else:
                targets = self.totals.targets
            val_loss, val_metric_sum, correct = sums.tolist()
        finally:
            if was_training:
                model.train()
        val_loss = val_loss / max(count, 1)
        val_metric = val_metric_sum / max(elements, 1)
        train_loss = self.totals.loss_sum.value / self.totals.steps if self.totals.steps else None
        train_metric = (correct / targets if self.classification and targets else None)
        extras: dict[str, float | None] = {}
        if self.preset.perplexity:
            extras = {"train_ppl": _perplexity(train_loss), "val_ppl": _perplexity(val_loss)}
        improved = False
        if epoch_end:
            if val_loss < self.best_val_loss - self.cfg.min_delta:
                self.best_val_loss, self.best_epoch, self.bad_epochs, improved = val_loss, self.epoch + 1, 0, True
            else:
                self.bad_epochs += 1
        ev = EvalDone(
            self.step, self._now(), epoch=self.epoch + (1 if epoch_end else 0), train_loss=train_loss,
            train_metric=train_metric, val_loss=val_loss, val_metric=val_metric,
            metric=self.preset.metric_name,
            lr=schedules.scheduled_lr(self.optimizer) * self.multiplier,
            best_val_loss=self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            best_epoch=self.best_epoch, improved=improved, patience_used=self.bad_epochs,
            patience=self.cfg.patience, epoch_end=epoch_end, extras=extras)
        self.last_eval = ev
        self.emit(ev)
        return ev

    def _emit_sample(self, epoch: int) -> None:
        """The preset's own look at the model after an evaluation (charlm: a sampled line)."""
        hook = self.preset.on_eval
        if hook is None or not self.leader:
            return
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                text = hook(model, self.device)
        finally:
            if was_training:
                model.train()
        if text:
            self.emit(Sample(self.step, self._now(), epoch=epoch, text=str(text)[:500]))

    # -- flushing ------------------------------------------------------------------
    def _flush(self, *, frame: bool = True) -> None:
        pending = self._pending
        self._collect_saves()
        if pending.preds:
            self._correct += torch.cat(pending.preds).eq(torch.cat(pending.targets)).sum()
        if self._skipped:
            self.emit(NonFinite(self._skipped_first or self.step, self._now(), action="skip",
                                count=self._skipped))
            if self._diag is not None and not self._skip_hinted:
                self._skip_hinted = True  # one hint per run; the events keep counting
                self._emit_findings([self._diag.observe_nonfinite(self._skipped_first or self.step, "skip")])
            self._skipped, self._skipped_first = 0, None
        layer_values: list[float] | None = None
        if pending.losses:
            n, m = len(pending.losses), len(pending.norms)
            # The one host copy per flush: losses, grad norms and layer health together.
            stacked = torch.stack([v.float() for v in pending.losses + pending.norms])
            if self.sync is not None and self._collective:
                # The group's loss at each step: the mean over ranks (gradients are averaged, so the
                # clipped norms are every rank's already).
                stacked = torch.cat([self.sync.mean(stacked[:n]), stacked[n:]])
            if pending.layers is not None:
                stacked = torch.cat([stacked, pending.layers])
            values = stacked.tolist()
            losses, norms = values[:n], (values[n:n + m] if pending.norms else None)
            layer_values = values[n + m:] if pending.layers is not None else None
            steps = list(range(pending.first_step, pending.first_step + n))
            now = time.perf_counter()
            t0, steps0, samples0 = self._window
            elapsed = max(now - t0, 1e-9)
            self._session_steps += n
            rate = (self._session_steps - steps0) / elapsed
            sample_rate = (self._session_samples - samples0) * self.world / elapsed  # the group's
            data_wait = min(pending.wait / elapsed, 1.0)
            self._window = (now, self._session_steps, self._session_samples)
            if self.sync is not None and self._collective:
                self._gather_ranks(steps_per_sec=rate)
            lrs = pending.lrs
            pending.clear()
            bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
            finite = losses if bad is None else [v for v in losses if math.isfinite(v)]
            self.totals.loss_sum.add_all(finite)
            self.totals.steps += len(finite)
            self.emit(StepStats(
                steps[-1], self._now(), epoch=self.epoch + 1, steps=steps, loss=losses, lr=lrs,
                grad_norm=norms, epoch_step=math.ceil(self.batch_in_epoch / self.cfg.accumulate),
                steps_per_epoch=self.steps_per_epoch, steps_per_sec=rate, samples_per_sec=sample_rate,
                data_wait=data_wait))
            if layer_values is not None and self._health is not None:
                self.emit(LayerStats(self.step, self._now(), **self._health.summarize(layer_values)))
            if self._diag is not None:
                self._emit_findings(self._diag.observe_steps(steps, losses, data_wait))
            if bad is not None:
                self._non_finite(steps[bad], what="training loss")
        pending.clear()
        self._collect_due = self._health is not None
        if frame and self._probe is not None and time.perf_counter() - self._boundary_at >= BOUNDARY_INTERVAL:
            self._emit_boundary(epoch_end=False)
        self._emit_process_stats()
        self.rundir.flush()

    def _emit_process_stats(self) -> None:
        """At a flush, at most once a second: what only this process knows (RSS, CUDA memory), live-only;
        in a group, with every rank's numbers from the last flush."""
        if self.leader and self._process_probe.due():
            self.emit(self._process_probe.sample(self.step, self._now(), self._ranks))

    def _gather_ranks(self, steps_per_sec: float) -> None:
        """Every rank's speed, RSS and CUDA memory, in one all_gather of a few numbers (at each flush)."""
        from .resources import RANK_FIELDS, rank_numbers

        assert self.sync is not None
        mine = torch.tensor(rank_numbers(steps_per_sec, self.device), dtype=torch.float64, device=self.device)
        rows = self.sync.gather_tensor(mine).tolist()
        self._ranks = [{"rank": r, **{name: (None if v < 0 else (int(v) if name != "steps_per_sec" else v))
                                      for name, v in zip(RANK_FIELDS, row)}} for r, row in enumerate(rows)]

    def _non_finite(self, step: int, *, what: str) -> None:
        action = self.cfg.on_nan
        if action == "skip" and what == "validation loss":
            action = "stop"  # nothing to skip: the weights themselves are bad
        if action == "pause":
            rolled = self._roll_back()
            self.emit(NonFinite(step, self._now(), action="pause", rolled_back_to=rolled))
            if self._diag is not None:
                self._diag.reset_steps()
                self._emit_findings([self._diag.observe_nonfinite(step, "pause", what, rolled)])
            self._pause("nan")
            self._pause_loop()
            if rolled is not None:
                raise _Restart()
            return
        self.emit(NonFinite(step, self._now(), action="stop"))
        if self._diag is not None:
            self._emit_findings([self._diag.observe_nonfinite(step, "stop", what)])
        latest = self.rundir.checkpoints / "latest.pt"
        keep = f"; the last good checkpoint is {latest}" if latest.exists() else ""
        from .batching import nonfinite_data  # once, at the end: a NaN that came with the data, named as such
        data = nonfinite_data(self.train_batches)
        keep = (f"; {data}" if data else "") + keep
        raise _EndRun("failed", f"{what} became non-finite at step {step} (--on-nan {self.cfg.on_nan}){keep}")

    def _roll_back(self) -> int | None:
        """Reload latest.pt after a NaN so that resuming continues from good weights (in a group, every
        rank the same file: they read it once rank 0's writer has put its last save in place)."""
        self._writer.wait()
        if self.sync is not None:
            self.sync.barrier()
        self._collect_saves()
        latest = self.rundir.checkpoints / "latest.pt"
        if not latest.exists():
            return None
        try:
            state = ckpt.load(latest)
            self.load_state(state)
        except ckpt.CheckpointError:
            return None
        self._pending.clear()
        self.history = [row for row in self.history if row["epoch"] <= self.epoch]
        return self.step

    # -- commands ------------------------------------------------------------------
    def _handle_commands(self) -> None:
        """Apply what waits, at most one queue's worth: commands that keep arriving wait for the next step."""
        self._answer_dropped()
        commands = self.commands.take_all()
        for command in commands:
            self._apply(command)
        if self.paused:
            self._pause_loop()
        elif commands:
            self.rundir.flush()  # the answer on the record now, not at the next flush: viewers show it at once

    def _group_boundary(self, sync: StepSync) -> None:
        """A sync step (every rank at once): rank 0's commands and the next sync step reach every
        rank, the group's mean losses are flushed, and every rank applies the same commands."""
        decision = sync.decide(Decision(self._take_commands(), sync.plan(self.step, self.cfg.log_interval))
                               if sync.leader else None)
        self._flush()
        for command in decision.commands:
            self._apply(command)
        if self.paused:
            self._pause_loop()
        elif decision.commands:
            self.rundir.flush()

    def _take_commands(self) -> list[Command]:
        """Rank 0: what waits in its queue, answering what the queue dropped."""
        self._answer_dropped()
        return self.commands.take_all() if self.commands.pending() else []

    def _group_failure(self, exc: BaseException) -> str | None:
        """A collective that failed because another rank died or hung: said as such, else None."""
        if self.sync is None:
            return None
        text = " ".join(str(exc).split())
        words = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout",
                 "ProcessGroup", "gloo", "nccl", "Connection refused")
        if not isinstance(exc, RuntimeError) or not any(w.lower() in text.lower() for w in words):
            return None
        if not self.leader:
            self.sync.saw_failure()  # so rank 0 knows this rank ended because of another
        silent = silent_ranks(self._ranks, self.rank)
        ended_after = self.sync.saw_failure_of(silent) if silent else set()
        named = [r for r in silent if r not in ended_after] or ([1 - self.rank] if self.world == 2 else [])
        other = f" (rank {', '.join(map(str, named))})" if named else ""
        # gloo: "[.../pair.cc:537] Read error [127.0.0.1]:17603: Connection reset by peer. This is typically..."
        text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h)(?::\d+)?\]\s*", "", text).split(". This is typically")[0]
        return (f"another rank{other} stopped answering the group at step {self.step}, so the run cannot go on "
                f"({text[:200]})")

    def _answer_dropped(self) -> None:
        """One `rejected` event per kind of command the bounded queue dropped since the last boundary."""
        for name, reason, count in self.commands.take_dropped():
            self.emit(CommandRejected(self.step, self._now(), command=name,
                                      reason=reason if count == 1 else f"{reason} ({count:,} times)"))

    def _apply(self, command: Command) -> None:
        now = self._now()
        if isinstance(command, TogglePause):
            command = Resume() if self.paused else Pause()
        if isinstance(command, Pause):
            if self.paused:
                self.emit(CommandRejected(self.step, now, command="pause", reason="already paused"))
            else:
                self._pause("user")
        elif isinstance(command, Resume):
            if not self.paused:
                self.emit(CommandRejected(self.step, now, command="resume", reason="not paused"))
            else:
                self._resume()
        elif isinstance(command, SetLR):
            self._set_lr(command.lr)
        elif isinstance(command, SaveCheckpoint):
            self._save({f"step-{self.step}.pt": "manual"})
        elif isinstance(command, Evaluate):
            self._evaluate(epoch_end=False)
            self._emit_boundary(epoch_end=False)
        elif isinstance(command, Stop):
            if command.signal is not None:
                self._finish_run("interrupted", command.reason, signal=command.signal)
            self._finish_run("stopped", command.reason)
        else:
            self.emit(CommandRejected(self.step, now, command=getattr(command, "name", type(command).__name__),
                                      reason="unknown command"))

    def _set_lr(self, lr: Any) -> None:
        now = self._now()
        try:
            lr = check_lr(lr)  # the dialog's rule too (engine/commands.py)
        except ValueError as exc:
            self.emit(CommandRejected(self.step, now, command="set_lr", reason=str(exc)))
            return
        sched_lr = schedules.scheduled_lr(self.optimizer)
        if sched_lr <= 0:
            self.emit(CommandRejected(self.step, now, command="set_lr",
                                      reason="the schedule is at zero here, so it cannot be scaled"))
            return
        multiplier = float(lr) / sched_lr
        if not math.isfinite(multiplier) or multiplier <= 0:
            self.emit(CommandRejected(self.step, now, command="set_lr",
                                      reason=f"{lr:g} is out of range for the schedule's current "
                                             f"{sched_lr:g}"))
            return
        old = sched_lr * self.multiplier
        self.multiplier = multiplier
        self.emit(LRChanged(self.step, now, old_lr=old, new_lr=float(lr), multiplier=self.multiplier))
        self._emit_preview()

    def _pause(self, reason: str) -> None:
        self.paused = True
        self._paused_at = time.perf_counter()
        self.emit(Paused(self.step, self._now(), reason=reason))

    def _resume(self) -> None:
        self.paused = False
        paused = self._end_pause_clock()
        self.emit(Resumed(self.step, self._now(), paused_seconds=round(paused, 3)))

    def _end_pause_clock(self) -> float:
        """Take the paused time out of the run's clock and the steps/s window."""
        if self._paused_at is None:
            return 0.0
        paused = time.perf_counter() - self._paused_at
        self._paused_at = None
        self._paused_total += paused
        self._window = (self._window[0] + paused, *self._window[1:])
        return paused

    def _pause_loop(self) -> None:
        """Wait for commands while paused (saves, LR changes and stop still work).

        In a group, every rank waits here: rank 0 sends what came (or nothing) once per log
        interval, so the others wait in short collectives that never meet the group's timeout."""
        self.rundir.flush()
        sync = self.sync
        try:
            while self.paused:
                if sync is None:
                    command = self.commands.get(timeout=self.cfg.log_interval)
                    self._answer_dropped()
                    commands = [command] if command is not None else []
                else:
                    waiting: list[Command] = []
                    if sync.leader:
                        first = self.commands.get(timeout=self.cfg.log_interval)
                        waiting = ([first] if first is not None else []) + self._take_commands()
                    commands = sync.decide(Decision(waiting, 0) if sync.leader else None).commands
                for command in commands:
                    self._apply(command)
                self._collect_saves()
                self._emit_process_stats()  # the panel keeps showing the run's memory while paused
                self.rundir.flush()
        finally:
            self._end_pause_clock()  # also when a stop ends the run while paused

    # -- ending --------------------------------------------------------------------
    def _finish_run(self, status: str, reason: str, signal: int | None = None) -> None:
        """Stop at this step boundary: evaluate (unless a signal is waiting), save, leave the loop."""
        self._flush()
        if signal is None:
            self._evaluate(epoch_end=False)
        self.emit(Stopped(self.step, self._now(), reason=reason))
        self._save({"latest.pt": "interrupt" if signal is not None else ("end" if status == "finished" else "stop")})
        raise _EndRun(status, reason, signal)

    def _save(self, files: dict[str, str]) -> None:
        """Checkpoint this step into checkpoints/<name> for each {name: reason}.

        Serialized here (so it is this step's state), written by the background
        writer; a failure (full disk, read-only folder) becomes a
        CheckpointFailed event and the run goes on. In a group every rank calls it at the
        same step; rank 0 writes, with every rank's RNG state.
        """
        group = self._group_state() if self.sync is not None else None
        if not self.leader:
            return
        if not self._weights_finite():
            for name, reason in files.items():
                path = self.rundir.checkpoints / name
                self.emit(CheckpointFailed(self.step, self._now(), path=str(path),
                                           error="the weights are not finite; not saved", reason=reason,
                                           previous=path.is_file()))
            return
        try:
            data = ckpt.serialize(self.state_dict(group))
        except (OSError, RuntimeError) as exc:
            for name, reason in files.items():
                path = self.rundir.checkpoints / name
                self.emit(CheckpointFailed(self.step, self._now(), path=str(path),
                                           error=f"{type(exc).__name__}: {exc}", reason=reason,
                                           previous=path.is_file()))
            return
        for name, reason in files.items():
            self._writer.submit(data, [self.rundir.checkpoints / name], self.step, reason)

    def _weights_finite(self) -> bool:
        # One host sync per checkpoint (rare), never per step.
        tensors = [p.detach() for p in self.model.parameters() if p.is_floating_point()]
        if not tensors:
            return True
        norms = torch._foreach_norm(tensors, ord=float("inf")) if hasattr(torch, "_foreach_norm") else \
            [t.abs().max() for t in tensors]
        return bool(torch.isfinite(torch.stack(list(norms))).all())

    def _collect_saves(self) -> None:
        for r in self._writer.completed():
            if r.error is None:
                self.emit(CheckpointSaved(r.step, self._now(), path=str(r.path), bytes=r.size, reason=r.reason))
            else:
                self.emit(CheckpointFailed(r.step, self._now(), path=str(r.path), error=r.error, reason=r.reason,
                                           previous=r.path.is_file()))

    def _summary(self, status: str, reason: str, signal: int | None) -> dict[str, Any]:
        seconds = max(self._train_seconds, 1e-9)
        last = self.last_eval
        final = None
        if last is not None:
            final = {"epoch": last.epoch, "step": last.step, "train_loss": last.train_loss,
                     f"train_{last.metric}": last.train_metric, "val_loss": last.val_loss,
                     f"val_{last.metric}": last.val_metric}
        return RunSummary(
            status=status, reason=reason, preset=self.preset.name, device=str(self.device), epochs=self.epoch,
            steps=self.step, best_val_loss=self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            best_epoch=self.best_epoch, final=final, train_seconds=round(self._train_seconds, 3),
            steps_per_sec=round(self._session_steps / seconds, 2),
            samples_per_sec=round(self._session_samples * self.world / seconds, 2), signal=signal,
            run_dir=str(self.rundir.path), world_size=self.world).to_dict()
