"""What comes out of the engine: frozen dataclasses, each one JSON line.

The same events feed the dashboard (through the bounded EventBuffer) and
metrics.jsonl, so a run directory alone can rebuild what a viewer saw.
Per-step numbers travel in batches (StepStats, one per flush), never one
event per step.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


def _finite_or_none(value: float | None) -> float | None:
    """Strict JSON has no NaN/Infinity; a non-finite number is written as null."""
    if value is None or math.isfinite(value):
        return value
    return None


def clean_json(value: Any) -> Any:
    """The value with every non-finite float replaced by None (for strict JSON)."""
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    """Base: every event knows the optimizer step and wall-clock time it happened at."""

    step: int
    t: float
    """Unix time in seconds."""

    name: ClassVar[str] = "event"
    record_kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        body = clean_json(asdict(self))
        if self.record_kind == "event":
            return {"kind": "event", "event": self.name, **body}
        return {"kind": self.record_kind, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    def records(self) -> list[str]:
        """The metrics.jsonl lines for this event (most events: exactly one)."""
        return [self.to_json()]


#: RunStarted.task of a run recorded from a user's own loop (tuitrain.attach, the framework callbacks):
#: no preset, so no data sizes, no planned LR schedule, no decision boundary.
OWN_LOOP = "own-loop"


@dataclass(frozen=True)
class RunStarted(Event):
    name: ClassVar[str] = "started"
    run_dir: str
    preset: str
    task: str
    metric: str
    device: str
    device_name: str
    config: dict[str, Any]
    epoch: int
    steps_per_epoch: int
    total_steps: int
    train_size: int
    val_size: int
    parameters: int
    amp: str
    """'off', 'float16' or 'bfloat16'."""
    resumed: bool = False
    world_size: int = 1
    """Ranks training together under torchrun (1: one process); sizes and steps are per rank."""


@dataclass(frozen=True)
class SchedulePreview(Event):
    """The planned LR from this step to the end (thinned), times the user multiplier."""

    name: ClassVar[str] = "schedule"
    steps: list[int]
    lrs: list[float]
    multiplier: float

    def records(self) -> list[str]:
        return []  # recomputable from config.json; not worth the disk


@dataclass(frozen=True)
class StepStats(Event):
    """Every optimizer step since the last flush, copied to the host in one go."""

    record_kind: ClassVar[str] = "step"
    epoch: int
    steps: list[int]
    loss: list[float]
    lr: list[float]
    grad_norm: list[float] | None
    epoch_step: int
    """Optimizer steps done in the current epoch."""
    steps_per_epoch: int
    steps_per_sec: float
    samples_per_sec: float
    data_wait: float | None = None
    """Fraction of this window's step time spent waiting for the next batch."""

    def records(self) -> list[str]:
        # Formatted by hand: this runs for every step and json.dumps is slower. A column whose sum is
        # finite has only finite values (a NaN or an inf anywhere makes the sum non-finite), so the
        # common case writes repr() of each value with no per-value check.
        head = '{"kind":"step","step":'
        mid = f',"epoch":{self.epoch},"t":{self.t:.3f},"loss":'
        loss, lr, norms = _texts(self.loss), _texts(self.lr), self.grad_norm
        if norms is None:
            return [f'{head}{step}{mid}{v},"lr":{r}}}' for step, v, r in zip(self.steps, loss, lr)]
        return [f'{head}{step}{mid}{v},"lr":{r},"grad_norm":{g}}}'
                for step, v, r, g in zip(self.steps, loss, lr, _texts(norms))]


def _texts(values: list[float]) -> list[str]:
    """Each value as JSON: repr() of a finite float, null otherwise."""
    if math.isfinite(sum(values)):
        return list(map(repr, values))
    return list(map(_num, values))


def _num(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


@dataclass(frozen=True)
class EvalDone(Event):
    record_kind: ClassVar[str] = "eval"
    epoch: int
    train_loss: float | None
    train_metric: float | None
    val_loss: float
    val_metric: float
    metric: str
    lr: float
    best_val_loss: float | None
    best_epoch: int | None
    improved: bool
    patience_used: int
    patience: int | None
    epoch_end: bool
    """True at the end of an epoch (a history.json row); False for 'evaluate now'."""
    extras: dict[str, float | None] = field(default_factory=dict)
    """Preset-specific numbers derived from the losses (charlm: train_ppl, val_ppl)."""

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body.update(body.pop("extras"))
        # The contract names accuracy val_acc; other metrics keep their own name.
        body[f"val_{self.metric}"] = body["val_metric"]
        body[f"train_{self.metric}"] = body["train_metric"]
        return body


@dataclass(frozen=True)
class Paused(Event):
    name: ClassVar[str] = "paused"
    reason: str = "user"


@dataclass(frozen=True)
class Resumed(Event):
    name: ClassVar[str] = "resumed"
    paused_seconds: float = 0.0


@dataclass(frozen=True)
class LRChanged(Event):
    name: ClassVar[str] = "lr_changed"
    old_lr: float
    new_lr: float
    multiplier: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    name: ClassVar[str] = "checkpoint"
    path: str
    bytes: int
    reason: str
    """'epoch', 'best', 'manual', 'stop', 'interrupt', 'end'."""


@dataclass(frozen=True)
class CheckpointFailed(Event):
    name: ClassVar[str] = "checkpoint_failed"
    path: str
    error: str
    reason: str
    previous: bool = True
    """Whether an earlier checkpoint is still at `path` (none yet, or its folder is gone: False)."""

    @property
    def outcome(self) -> str:
        """What the failure leaves, in words, for the viewers."""
        return "the previous checkpoint is intact" if self.previous else "no earlier checkpoint exists there"


@dataclass(frozen=True)
class CommandRejected(Event):
    name: ClassVar[str] = "rejected"
    command: str
    reason: str


@dataclass(frozen=True)
class NonFinite(Event):
    """A NaN/Inf loss was seen; `step` is the first bad optimizer step."""

    name: ClassVar[str] = "nan"
    action: str
    """'stop', 'pause' or 'skip' (the --on-nan policy applied)."""
    count: int = 1
    rolled_back_to: int | None = None
    """Step of the checkpoint the weights were restored from, if any."""


@dataclass(frozen=True)
class EarlyStop(Event):
    name: ClassVar[str] = "early_stop"
    epoch: int
    patience: int
    best_val_loss: float
    best_epoch: int


@dataclass(frozen=True)
class Stopped(Event):
    name: ClassVar[str] = "stopped"
    reason: str


END_STATUSES: tuple[str, ...] = ("finished", "stopped", "early_stopped", "interrupted", "failed")
"""How a run ends: RunEnded.status and summary.json's "status" (the one list; viewers use it too)."""
RUN_STATUSES: tuple[str, ...] = ("live", *END_STATUSES, "died", "unknown")
"""What engine/rundir.py run_state() says of a run directory: live, how it ended, 'died' (its
process is gone without a summary) or 'unknown' (nothing tells)."""


@dataclass(frozen=True)
class RunEnded(Event):
    """The last event of a run; `status` matches summary.json."""

    name: ClassVar[str] = "ended"
    status: str
    """One of END_STATUSES; a viewer's own end for a run that died: 'died'."""
    summary: dict[str, Any]


@dataclass(frozen=True)
class RunSummary:
    """How a run ended: summary.json, RunEnded.summary and what every reader makes of them, one type.

    Written by the Trainer (and, for a run whose preset failed to build, by the run process); read
    back with from_dict(), which takes any dict (a summary written by an older tuitrain, a viewer's
    own "died") and fills what is missing, so no reader indexes a key that may not be there.
    """

    status: str
    reason: str = ""
    preset: str | None = None
    device: str | None = None
    epochs: int = 0
    steps: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None
    final: dict[str, Any] | None = None
    train_seconds: float = 0.0
    steps_per_sec: float = 0.0
    samples_per_sec: float = 0.0
    signal: int | None = None
    run_dir: str = ""
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "RunSummary":
        data = data if isinstance(data, dict) else {}
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("status", "unknown")
        return cls(**values)


@dataclass(frozen=True)
class RunFailed(Event):
    name: ClassVar[str] = "error"
    error: str
    traceback: str


@dataclass(frozen=True)
class WriteFailed(Event):
    """metrics.jsonl could not be written (full disk, read-only folder); the run goes on.

    Sent once per failing streak. The records wait in memory and are written,
    in order, as soon as the disk takes them (this event too, then).
    """

    name: ClassVar[str] = "write_failed"
    path: str
    error: str



@dataclass(frozen=True)
class BoundaryPoints(Event):
    """Once per run for 2-D classification presets: the grid's extent and the points to draw.

    The grid covers the validation data with a margin; `points` is a fixed,
    bounded sample of the validation set as [x, y, label].
    """

    name: ClassVar[str] = "boundary_points"
    x_range: list[float]
    y_range: list[float]
    cols: int
    rows: int
    classes: int
    points: list[list[float]]


@dataclass(frozen=True)
class BoundaryGrid(Event):
    """The model's predicted class at each cell of the fixed grid (eval mode, no grad).

    `cells` holds rows*cols characters, row 0 at the top (largest y); the
    class index c is written as chr(48 + c). Only end-of-epoch grids go to
    metrics.jsonl; the ones taken during an epoch are for live viewers.
    """

    name: ClassVar[str] = "boundary"
    x_range: list[float]
    y_range: list[float]
    cols: int
    rows: int
    cells: str
    epoch: int
    epoch_end: bool

    def records(self) -> list[str]:
        return [self.to_json()] if self.epoch_end else []


@dataclass(frozen=True)
class ProcessStats(Event):
    """The run's own process, sampled at most once a second (engine/resources.py); live-only.

    What a watcher elsewhere cannot read for itself: the run's resident memory
    and what torch's caching allocator holds on each CUDA device the run uses.
    Not on disk (a viewer shows the newest; history of it is no record).
    """

    name: ClassVar[str] = "process"
    pid: int
    rss_bytes: int | None
    """Resident set size in bytes; None if it could not be read."""
    cuda: list[dict[str, int | None]] = field(default_factory=list)
    """Per CUDA device used: {"device", "allocated_bytes", "reserved_bytes", "peak_bytes", "pci"} (a
    value that could not be read is None; pci: resources.pci_key of the GPU); empty without CUDA (or
    before the run initialized it)."""
    ranks: list[dict[str, Any]] = field(default_factory=list)
    """Under torchrun, every rank as gathered at the last flush: {"rank", "pid", "steps_per_sec",
    "rss_bytes", "cuda_device", "cuda_allocated_bytes", "cuda_reserved_bytes", "cuda_peak_bytes",
    "cuda_pci"} (None where a rank has no such number; cuda_pci: resources.pci_key of its GPU, how a
    viewer finds that GPU among NVML's); empty for one process."""

    def records(self) -> list[str]:
        return []  # live-only: the control socket carries it; metrics.jsonl never holds it


@dataclass(frozen=True)
class LayerStats(Event):
    """Health of each parameter tensor at one step, taken at the log interval.

    Lists run in the model's parameter order. `grad_norm` is before clipping
    (and unscaled under AMP); `update_ratio` is ||delta w|| / ||w|| for this
    step's update. `flagged` names the tensor whose gradient norm grew most
    over the recent window (None when none grew), `growth` by what factor.
    """

    name: ClassVar[str] = "layers"
    names: list[str]
    shapes: list[list[int]]
    weight_norm: list[float]
    grad_norm: list[float | None]
    update_ratio: list[float | None]
    total_grad_norm: float | None
    flagged: str | None = None
    growth: float | None = None


@dataclass(frozen=True)
class Hint(Event):
    """A diagnosis in words: what pattern, the evidence, and the usual remedy."""

    name: ClassVar[str] = "hint"
    rule: str
    """'nan', 'lr_too_high', 'lr_too_low', 'overfitting', 'underfitting' or 'input_bound'."""
    message: str
    evidence: str
    remedy: str
    severity: str = "warning"
    """'warning' or 'info'."""


@dataclass(frozen=True)
class Sample(Event):
    """Text a preset produced after an evaluation (charlm: a sampled line)."""

    name: ClassVar[str] = "sample"
    epoch: int
    text: str


class EventBuffer:
    """Bounded, lock-free hand-off from the engine thread to a reader.

    Appending never blocks the loop: when a reader falls behind, the oldest
    events are dropped (and counted). Nothing is lost on disk, because the
    engine writes metrics.jsonl itself.
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self.dropped = 0

    def put(self, event: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)

    def drain(self) -> list[Event]:
        """Everything pending, oldest first (safe from any thread)."""
        out: list[Event] = []
        pop = self._events.popleft
        try:
            while True:
                out.append(pop())
        except IndexError:
            return out

    def __len__(self) -> int:
        return len(self._events)
