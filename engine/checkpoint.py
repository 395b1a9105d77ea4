"""One checkpoint = one plain dict, written atomically, loaded strictly.

Atomic: torch.save goes to a temp file in the same folder, which is fsynced
and then renamed over the target, and the folder is fsynced. A crash or a
full disk at any point leaves either the old file or the new one, never a
half-written file under the real name, and no temp file behind.

Strict: loads use weights_only=True (a pickled object in a .pt file is
refused, never executed), and leftover or missing keys are an error.
"""

from __future__ import annotations

import io
import math
import os
import random
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import atomic_write_bytes, atomic_write_text, remove_leftovers  # noqa: F401 (re-exported)

FORMAT = "tuitrain-checkpoint"
VERSION = 1
#: What `s` saves from a user's own loop (engine/attach.py): their state dicts, not a run to resume.
ATTACH_FORMAT = "tuitrain-attach-checkpoint"

KEYS = frozenset({
    "format", "version", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
    "scaler_state_dict", "epoch", "step", "batch_in_epoch", "lr_multiplier", "best_val_loss",
    "best_epoch", "early_stop_counter", "epoch_totals", "rng", "config", "preset",
})
"""The keys every checkpoint has (the checks for each are in FIELDS, below)."""


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit; one line for the user."""


def save(state: dict[str, Any], path: Path) -> int:
    """Write a checkpoint dict atomically (synchronously); returns its size in bytes."""
    data = serialize(state)
    return atomic_write_bytes(Path(path), lambda f: f.write(data))


def serialize(state: dict[str, Any], required: frozenset[str] = KEYS) -> bytes:
    """The checkpoint's bytes: taken on the training thread, so they are this step's weights.

    `required`: the keys its format must have (a user's loop saves its own, smaller format)."""
    missing = required - set(state)
    if missing:
        raise ValueError(f"checkpoint state lacks {sorted(missing)}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class SaveResult:
    path: Path
    step: int
    reason: str
    size: int = 0
    error: str | None = None


class CheckpointWriter:
    """Writes serialized checkpoints on a background thread.

    The file write and fsync cost milliseconds a checkpoint, which is a large
    share of an epoch for a small model; the loop only pays for serializing.
    Writes happen in submission order; results are collected by the loop,
    which turns them into events on its own thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[bytes, list[Path], int, str, bool] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[SaveResult] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def submit(self, data: bytes, paths: list[Path], step: int, reason: str, *, report: bool = True) -> None:
        """Queue `data` to be written atomically to each path; `report=False` keeps the result quiet
        unless it fails."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tuitrain-checkpoints", daemon=True)
            self._thread.start()
        with self._lock:
            self._pending += 1
        self._jobs.put((data, paths, step, reason, report))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            data, paths, step, reason, report = job
            for path in paths:
                try:
                    size = atomic_write_bytes(path, lambda f: f.write(data))
                    if report:
                        self._done.put(SaveResult(path, step, reason, size=size))
                except Exception as exc:  # full disk, read-only folder, ...
                    self._done.put(SaveResult(path, step, reason, error=f"{type(exc).__name__}: {exc}"))
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def completed(self) -> list[SaveResult]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted write is on disk (or failed)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self.wait()
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        remove_leftovers()


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint; every problem is a CheckpointError with one line."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"not a checkpoint file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise CheckpointError(
                f"refusing to load {p}: it contains pickled Python objects "
                "(only plain tensors and containers are allowed)") from None
        text = text if len(text) <= 160 else text[:157] + "..."
        raise CheckpointError(f"cannot read checkpoint {p}: not a valid torch file ({text})") from None
    if isinstance(state, dict) and state.get("format") == ATTACH_FORMAT:
        raise CheckpointError(f"{p} was saved from your own training loop (tuitrain.attach), which tuitrain "
                              "cannot re-run; load it in your script: torch.load(path, weights_only=True)")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a tuitrain checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{p} has checkpoint version {state.get('version')!r}; this tuitrain reads {VERSION}")
    keys = set(state)
    known = KEYS | set(OPTIONAL)
    if not KEYS <= keys <= known:
        extra, missing = sorted(map(str, keys - known)), sorted(KEYS - keys)
        detail = "; ".join(s for s in (extra and f"unexpected keys {extra}", missing and f"missing keys {missing}") if s)
        raise CheckpointError(f"{p} does not match the checkpoint format: {detail}")
    validate(state, p)
    return state


# -- what each field may hold ------------------------------------------------------------------
#
# A checkpoint that loads is still only data: every field is checked here, before any of it
# is used, so a bad value is one line (exit 2) instead of a traceback in the middle of building
# the run. What only the run can know (the model's shapes, the optimizer's and scheduler's
# structure) is checked against the freshly built objects in Trainer.load_state.

_MAX_COUNT = 2**63 - 1
#: Enough for any config string (a preset path, a device); a longer one is not ours.
_MAX_TEXT = 4096


class _Bad(Exception):
    """A field's value does not fit: `text` says how, `field` where (added on the way out)."""

    def __init__(self, text: str, field: str = "") -> None:
        super().__init__(text)
        self.text, self.field = text, field


def _int(value: Any, low: int = 0, high: int = _MAX_COUNT) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"must be an integer, not {_kind(value)}")
    if not low <= value <= high:
        raise _Bad(f"must be between {low} and {high}, not {value}")


def _real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise _Bad("is too large") from None
    if math.isnan(number):
        raise _Bad("must not be NaN")
    return number


def _positive_finite(value: Any) -> None:
    number = _real(value)
    if not (math.isfinite(number) and number > 0):
        raise _Bad(f"must be a finite positive number, not {value!r}")


def _loss_or_inf(value: Any) -> None:
    """A best validation loss: finite, or +inf before the first evaluation."""
    if _real(value) == -math.inf:
        raise _Bad("must be finite or +inf, not -inf")


def _text(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"must be a non-empty string, not {_kind(value)}")
    if len(value) > _MAX_TEXT:
        raise _Bad(f"is {len(value)} characters long (at most {_MAX_TEXT})")


def _tensor(value: Any, *, dtype: torch.dtype | None = None, ndim: int | None = None,
            numel: int | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise _Bad(f"must be a tensor, not {_kind(value)}")
    if dtype is not None and value.dtype != dtype:
        raise _Bad(f"must be a {dtype} tensor, not {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise _Bad(f"must be a {ndim}-D tensor, not {value.dim()}-D")
    if numel is not None and value.numel() != numel:
        raise _Bad(f"must hold {numel} numbers, not {value.numel()}")


def _dict(value: Any, *, str_keys: bool = True) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"must be a dict, not {_kind(value)}")
    if str_keys and not all(isinstance(k, str) for k in value):
        raise _Bad("must have string keys")
    return value


def _model_state(value: Any) -> None:
    for name, tensor in _dict(value).items():
        if not isinstance(tensor, torch.Tensor):
            raise _Bad(f"must be a tensor, not {_kind(tensor)}", str(name))


def _optimizer_state(value: Any) -> None:
    state = _dict(value)
    if set(state) != {"state", "param_groups"}:
        raise _Bad("must hold exactly 'state' and 'param_groups'")
    _dict(state["state"], str_keys=False)
    groups = state["param_groups"]
    if not isinstance(groups, list) or not groups:
        raise _Bad("must be a non-empty list", "param_groups")
    for group in groups:
        params = _dict(group).get("params")
        if not isinstance(params, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in params):
            raise _Bad("must each have a list of parameter indices", "param_groups")


def _epoch_totals(value: Any) -> None:
    totals = _dict(value)
    missing = {"loss_partials", "steps", "samples", "correct"} - set(totals)
    extra = set(totals) - {"loss_partials", "steps", "samples", "targets", "correct"}
    if missing or extra:
        raise _Bad(f"must hold loss_partials, steps, samples, targets, correct (missing {sorted(missing)}, "
                   f"unexpected {sorted(map(str, extra))})")
    partials = totals["loss_partials"]
    if not isinstance(partials, list) or len(partials) > 1024:
        raise _Bad("must be a short list of numbers", "loss_partials")
    for number in partials:
        _field("loss_partials", _real, number)
    for name in ("steps", "samples", "targets"):
        if name in totals:
            _field(name, _int, totals[name])
    _field("correct", lambda t: _tensor(t, dtype=torch.int64, ndim=0), totals["correct"])


def _rng(value: Any) -> None:
    """Each generator's state, tried on a throwaway generator of the same kind (which checks it fully)."""
    rng = _dict(value)
    missing = {"torch", "cuda", "python", "python_version", "python_gauss"} - set(rng)
    if missing:
        raise _Bad(f"lacks {sorted(missing)}")
    _field("torch", lambda t: _tensor(t, dtype=torch.uint8, ndim=1), rng["torch"])
    try:
        torch.Generator().set_state(rng["torch"])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _Bad(f"is not a CPU generator state ({_first_line(exc)})", "torch") from None
    cuda = rng["cuda"]
    if not isinstance(cuda, list):
        raise _Bad(f"must be a list, not {_kind(cuda)}", "cuda")
    for state in cuda:
        _field("cuda", lambda t: _tensor(t, dtype=torch.uint8, ndim=1), state)
    _field("python", lambda t: _tensor(t, dtype=torch.int64, ndim=1), rng["python"])
    if rng["python_gauss"] is not None:
        _field("python_gauss", _real, rng["python_gauss"])
    try:
        random.Random().setstate((rng["python_version"], tuple(int(v) for v in rng["python"].tolist()),
                                  rng["python_gauss"]))
    except (TypeError, ValueError, OverflowError) as exc:
        raise _Bad(f"is not a random module state ({_first_line(exc)})", "python") from None
    if "numpy" in rng:
        numpy = _dict(rng["numpy"])
        if set(numpy) != {"keys", "pos", "has_gauss", "cached"}:
            raise _Bad("must hold keys, pos, has_gauss, cached", "numpy")
        _field("numpy.keys", lambda t: _tensor(t, dtype=torch.int64, ndim=1, numel=624), numpy["keys"])
        _field("numpy.pos", lambda v: _int(v, 0, 624), numpy["pos"])
        _field("numpy.has_gauss", lambda v: _int(v, 0, 1), numpy["has_gauss"])
        _field("numpy.cached", _real, numpy["cached"])
        if ((numpy["keys"] < 0) | (numpy["keys"] >= 2**32)).any():
            raise _Bad("must be 32-bit unsigned numbers", "numpy.keys")


#: field -> its check. Every key in KEYS has one; OPTIONAL keys may be absent (an older
#: checkpoint) and are checked when present. Add a key by adding a line here.
FIELDS: dict[str, Callable[[Any], Any]] = {
    "format": _text,
    "version": _int,
    "model_state_dict": _model_state,
    "optimizer_state_dict": _optimizer_state,
    "scheduler_state_dict": _dict,
    "scaler_state_dict": _dict,
    "epoch": _int,
    "step": _int,
    "batch_in_epoch": _int,
    "lr_multiplier": _positive_finite,
    "best_val_loss": _loss_or_inf,
    "best_epoch": lambda v: _int(v, -1),
    "early_stop_counter": _int,
    "epoch_totals": _epoch_totals,
    "rng": _rng,
    "config": _dict,
    "preset": _text,
}
def _group(value: Any) -> None:
    """A torchrun group's checkpoint: the world size and each rank's RNG and epoch counts."""
    group = _dict(value)
    if set(group) != {"world_size", "ranks"}:
        raise _Bad("must hold world_size and ranks")
    _field("world_size", lambda v: _int(v, 1, 1 << 20), group["world_size"])
    ranks = group["ranks"]
    if not isinstance(ranks, list) or len(ranks) != group["world_size"]:
        raise _Bad(f"must be a list of {group['world_size']} (one per rank)", "ranks")
    for i, entry in enumerate(ranks):
        def check(entry: Any) -> None:
            entry = _dict(entry)
            if set(entry) != {"rng", "correct", "targets", "samples"}:
                raise _Bad("must hold rng, correct, targets, samples")
            _field("rng", _rng, entry["rng"])
            _field("correct", lambda t: _tensor(t, dtype=torch.int64, ndim=0), entry["correct"])
            _field("targets", _int, entry["targets"])
            _field("samples", _int, entry["samples"])
        _field(f"ranks.{i}", check, entry)


OPTIONAL: dict[str, Callable[[Any], Any]] = {
    # The hint rules' windows (engine/diagnosis.py); their contents are checked when restored.
    "diagnosis": _dict,
    # Written under torchrun (engine/trainer.py _group_state).
    "group": _group,
}
OPTIONAL_KEYS = frozenset(OPTIONAL)
"""Keys a checkpoint may lack (an older tuitrain did not write them)."""


def validate(state: dict[str, Any], path: str | os.PathLike[str] = "the checkpoint") -> None:
    """Check every field's type, shape and range; the first that does not fit is a CheckpointError."""
    missing = KEYS - set(state)
    if missing:
        raise CheckpointError(f"{path} does not match the checkpoint format: missing keys {sorted(missing)}")
    for name in sorted(set(state) & (set(FIELDS) | set(OPTIONAL))):
        check = FIELDS.get(name) or OPTIONAL[name]
        try:
            _field(name, check, state[name])
        except _Bad as exc:
            raise CheckpointError(f"{path}: bad {exc.field}: it {exc.text}; this checkpoint cannot be "
                                  "resumed") from None
    if state["best_epoch"] > state["epoch"]:
        raise CheckpointError(f"{path}: bad best_epoch: {state['best_epoch']} is after the checkpoint's "
                              f"epoch {state['epoch']}; this checkpoint cannot be resumed")


def _field(name: str, check: Callable[[Any], Any], value: Any) -> None:
    """Run one check; a failure names the field (nested fields join with dots)."""
    try:
        check(value)
    except _Bad as exc:
        raise _Bad(exc.text, f"{name}.{exc.field}" if exc.field else name) from None
    except (TypeError, ValueError, RuntimeError, OverflowError, AttributeError, IndexError) as exc:
        raise _Bad(f"does not fit ({type(exc).__name__}: {_first_line(exc)})", name) from None


def check_like(fresh: Any, saved: Any, where: str) -> None:
    """`saved` has the structure of `fresh` (a state dict the run just built); CheckpointError if not.

    For the optimizer's, scheduler's and scaler's state, whose layout only the
    built objects know: the same keys (the saved side may lack one that a newer
    torch added), numbers where numbers are (none NaN), flags, strings, lists
    of the same length, tensors of the same shape.
    """
    try:
        _like(fresh, saved)
    except _Bad as exc:
        at = f"{where}.{exc.field}" if exc.field else where
        raise CheckpointError(f"the checkpoint's {at} does not fit this run: it {exc.text}") from None


def _like(fresh: Any, saved: Any) -> None:
    if isinstance(fresh, dict):
        _dict(saved, str_keys=False)
        extra = [k for k in saved if k not in fresh]
        if extra:
            raise _Bad(f"has unexpected keys {sorted(map(str, extra))[:5]}")
        for key in saved:
            _field(str(key), lambda v, k=key: _like(fresh[k], v), saved[key])
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            raise _Bad(f"must be a list of {len(fresh)}, not {_kind(saved)}")
        for i, (a, b) in enumerate(zip(fresh, saved)):
            _field(str(i), lambda v, a=a: _like(a, v), b)
    elif isinstance(fresh, torch.Tensor):
        _tensor(saved)
        if saved.shape != fresh.shape:
            raise _Bad(f"must have shape {tuple(fresh.shape)}, not {tuple(saved.shape)}")
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()) and bool(torch.isfinite(fresh).all()):
            raise _Bad("must hold finite numbers")
    elif fresh is None or isinstance(fresh, bool):
        if saved is not None and not isinstance(saved, bool):
            raise _Bad(f"must be true, false or None, not {_kind(saved)}")
    elif isinstance(fresh, (int, float)):
        if isinstance(saved, torch.Tensor) and saved.dim() == 0:
            saved = saved.item()
        _real(saved)
        if isinstance(fresh, int) and not isinstance(saved, int):
            raise _Bad(f"must be an integer, not {_kind(saved)}")
    elif isinstance(fresh, str):
        if not isinstance(saved, str) or len(saved) > _MAX_TEXT:
            raise _Bad(f"must be a string, not {_kind(saved)}")
    elif type(saved) is not type(fresh):
        raise _Bad(f"must be a {type(fresh).__name__}, not {_kind(saved)}")


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] + "..." if len(text) > 160 else text
