"""RunConfig: every knob of a run in one typed, validated dataclass.

The resolved config is written to the run directory and into every
checkpoint, so a run can always be explained and resumed from its files.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau", "warmup-cosine")
ON_NAN = ("stop", "pause", "skip")
AMP_DTYPES = ("auto", "float16", "bfloat16")


class ConfigError(ValueError):
    """A bad value for a knob; its message is one line meant for the user."""



def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class RunConfig:
    preset: str = "circles"
    """Built-in preset name, a path to a .py file, or package.module:attr."""
    epochs: int = 20
    lr: float = 1e-3
    """Peak / base learning rate handed to the optimizer and scheduler."""
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9
    """SGD and RMSprop momentum."""
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "none"
    step_size: int = 10
    """StepLR: epochs between decays."""
    gamma: float = 0.1
    """StepLR decay factor."""
    warmup: float = 0.05
    """warmup-cosine: warm-up length as a fraction of all steps (or a step count when >= 1)."""
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; None or 0 turns clipping off."""
    accumulate: int = 1
    """Optimizer step every K batches (loss divided by K)."""
    amp: bool | None = None
    """Mixed precision; None picks on for CUDA, off elsewhere."""
    amp_dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    patience: int | None = None
    """Early stopping: epochs without a better validation loss; None or 0 turns it off."""
    min_delta: float = 0.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (counted over the whole run); None or 0: no limit."""
    on_nan: str = "stop"
    threads: int | None = None
    """Intra-op CPU threads; None picks by model size (tiny models run faster on one)."""
    num_workers: int = 0
    """DataLoader workers for datasets that are not in-memory tensors."""
    eval_batch_size: int | None = None
    log_interval: float = 0.25
    """Seconds between metric flushes (one host copy of the buffered losses each)."""
    run_dir: str | None = None
    tensorboard: bool = False
    """Also write TensorBoard event files, live, into RUN_DIR/tensorboard/ (a helper process writes them)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _positive_int(self, "epochs")
        _positive_int(self, "batch_size")
        _positive_int(self, "accumulate")
        _positive_int(self, "step_size")
        _positive_int(self, "plateau_patience")
        _non_negative_int(self, "num_workers")
        _int(self, "seed")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be between 0 and 2**63-1, got {self.seed}")
        _positive_float(self, "lr")
        _non_negative_float(self, "weight_decay")
        _non_negative_float(self, "momentum")
        _positive_float(self, "gamma")
        _positive_float(self, "log_interval")
        _non_negative_float(self, "min_delta")
        _float(self, "plateau_factor")
        _float(self, "warmup")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"--plateau-factor must be between 0 and 1, got {self.plateau_factor:g}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be zero or positive, got {self.warmup:g}")
        for name in ("grad_clip",):
            if getattr(self, name) is not None:
                _non_negative_float(self, name)
                if getattr(self, name) == 0:
                    setattr(self, name, None)
        for name in ("patience", "max_steps"):  # 0 means off / no limit
            if getattr(self, name) is not None:
                _non_negative_int(self, name)
                if getattr(self, name) == 0:
                    setattr(self, name, None)
        for name in ("threads", "eval_batch_size"):
            if getattr(self, name) is not None:
                _positive_int(self, name)
        if self.threads is not None and self.threads > 4096:
            raise ConfigError(f"--threads must be at most 4096, got {self.threads}")
        if self.num_workers > 1024:  # each one is a process
            raise ConfigError(f"--num-workers must be at most 1024, got {self.num_workers}")
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "scheduler", SCHEDULERS)
        _choice(self, "on_nan", ON_NAN)
        _choice(self, "amp_dtype", AMP_DTYPES)
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"--tensorboard must be true or false, got {self.tensorboard!r}")
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"--nesterov must be true or false, got {self.nesterov!r}")
        if self.amp is not None and not isinstance(self.amp, bool):
            raise ConfigError(f"--amp must be true, false or unset, got {self.amp!r}")
        if self.nesterov and self.optimizer != "sgd":
            raise ConfigError("--nesterov only applies to --optimizer sgd")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError("--device must be auto, cpu, cuda, cuda:N or mps")
        if not isinstance(self.preset, str) or not self.preset.strip():
            raise ConfigError("--preset must name a preset")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Rebuild from a dict (config.json or a checkpoint); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _int(cfg: RunConfig, name: str) -> int:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"--{_flag(name)} must be an integer, got {value!r}")
    return value


def _count(cfg: RunConfig, name: str) -> int:
    value = _int(cfg, name)
    if value >= 2**63:  # torch counts in int64: a bigger number would fail mid-run, not here
        raise ConfigError(f"--{_flag(name)} is too large: {value}")
    return value


def _positive_int(cfg: RunConfig, name: str) -> None:
    if _count(cfg, name) <= 0:
        raise ConfigError(f"--{_flag(name)} must be a positive integer, got {getattr(cfg, name)}")


def _non_negative_int(cfg: RunConfig, name: str) -> None:
    if _count(cfg, name) < 0:
        raise ConfigError(f"--{_flag(name)} must be zero or a positive integer, got {getattr(cfg, name)}")


def _float(cfg: RunConfig, name: str) -> float:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"--{_flag(name)} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(f"--{_flag(name)} is too large: {value}") from None
    if not math.isfinite(number):
        raise ConfigError(f"--{_flag(name)} must be a finite number, got {value}")
    setattr(cfg, name, number)
    return number


def _positive_float(cfg: RunConfig, name: str) -> None:
    if _float(cfg, name) <= 0:
        raise ConfigError(f"--{_flag(name)} must be a positive number, got {getattr(cfg, name):g}")


def _non_negative_float(cfg: RunConfig, name: str) -> None:
    if _float(cfg, name) < 0:
        raise ConfigError(f"--{_flag(name)} must be zero or positive, got {getattr(cfg, name):g}")


def _choice(cfg: RunConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(f"--{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")


def _flag(name: str) -> str:
    return name.replace("_", "-")
