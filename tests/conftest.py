"""Shared helpers for the engine tests: tiny presets, a probe model, a run helper.

Every engine test runs on the CPU with a few dozen samples. Runs are steered
deterministically from inside the engine thread: the Probe model calls a hook
on its n-th training forward (so a command put there is applied at the step
boundary right after optimizer step n when `accumulate` is 1), and listeners
see every event synchronously.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import torch
from torch import nn

from tuitrain.engine import events as ev
from tuitrain.engine.config import RunConfig
from tuitrain.engine.rundir import read_metrics
from tuitrain.engine.trainer import RunResult, Trainer
from tuitrain.presets.base import Data, Preset

#: TUITRAIN_SLOW=1 runs the long sweeps, fuzz loops and stress runs at their full size; the default
#: suite (what a developer runs before a commit) keeps a short case of each. One switch for all tests.
SLOW = os.environ.get("TUITRAIN_SLOW") == "1"

# pytest started with SIGINT ignored (`pytest &` from a script) would pass that on to every tuitrain
# it starts, and the tests of what SIGINT does would fail for the way they were started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Marks a parametrization case that only TUITRAIN_SLOW=1 runs (more of a sweep the default run samples).
only_slow = pytest.mark.skipif(not SLOW, reason="the full sweep runs with TUITRAIN_SLOW=1")

#: log_interval for most tests: no timed flush inside an epoch, so the step
#: records do not depend on how fast the machine is (flushes then happen only
#: at epoch ends and when a command arrives).
QUIET = 1000.0


def make_cfg(**overrides: Any) -> RunConfig:
    """A small, deterministic CPU config (plain SGD, no momentum)."""
    base: dict[str, Any] = dict(epochs=2, batch_size=8, lr=0.05, optimizer="sgd", momentum=0.0,
                                device="cpu", seed=0, log_interval=QUIET)
    base.update(overrides)
    return RunConfig(**base)


class Probe(nn.Module):
    """Wraps a model and reports what the training loop does to it.

    - `calls`: training forwards so far; `hook(n)` runs on the n-th one
    - `modes`: (self.training, torch.is_grad_enabled()) for every forward
    - `seen`: the inputs of every training forward (when `keep_inputs`)
    - `nan_from`/`nan_until`: training outputs are multiplied by NaN on those calls
    - `raise_at`: the training forward with this number raises RuntimeError
    Only the wrapped module's parameters are state; the probe fields are not.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.hook: Callable[[int], None] | None = None
        self.modes: list[tuple[bool, bool]] = []
        self.keep_inputs = False
        self.seen: list[torch.Tensor] = []
        self.weights_seen: list[torch.Tensor] = []
        self.nan_from: int | None = None
        self.nan_until: int | None = None
        self.raise_at: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append((self.training, torch.is_grad_enabled()))
        if self.training:
            self.calls += 1
            if self.raise_at is not None and self.calls == self.raise_at:
                raise RuntimeError(f"boom at training call {self.calls}")
            if self.keep_inputs:
                self.seen.append(x.detach().clone())
                self.weights_seen.append(
                    torch.cat([p.detach().flatten() for p in self.inner.parameters()]).clone())
            if self.hook is not None:
                self.hook(self.calls)
        out = self.inner(x)
        if (self.training and self.nan_from is not None and self.calls >= self.nan_from
                and (self.nan_until is None or self.calls <= self.nan_until)):
            out = out * float("nan")
        return out


# -- data and presets -------------------------------------------------------------

def blobs(seed: int, n_train: int = 64, n_val: int = 32) -> Data:
    """Two noisy 2-D classes; the same tensors for the same seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 2, generator=g)
    y = ((x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(n_train + n_val, generator=g)) > 0).long()
    return Data(train=(x[:n_train], y[:n_train]), val=(x[n_train:], y[n_train:]))


def classifier_preset(*, hidden: int = 8, dropout: float = 0.0, n_train: int = 64, n_val: int = 32,
                      drop_last: bool = False, name: str = "tiny") -> Preset:
    def make_model() -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(2, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, 2))
        return Probe(nn.Sequential(*layers))

    return Preset(name, "tiny test classifier", "classification",
                  lambda seed: blobs(seed, n_train, n_val), make_model, drop_last=drop_last)


def scalar_model(init: float = 0.0) -> Probe:
    """y_hat = w * x with one weight and no bias."""
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(init)
    return Probe(lin)


def line_preset(*, train_slope: float = 2.0, val_slope: float = 1.0, n: int = 4, name: str = "line") -> Preset:
    """Regression on x = +-1 with targets slope * x; the train and val slopes differ.

    With full-batch SGD (lr 0.1, no momentum) on MSE, w goes 0 -> 0.8 w + 0.4 per
    step towards train_slope=2, so the validation loss (w - 1)^2 improves for
    three epochs (w = 0.4, 0.72, 0.976) and then gets worse (1.181, 1.345, ...).
    """
    x = torch.tensor([[1.0], [-1.0]] * (n // 2))

    def make_data(seed: int) -> Data:
        return Data(train=(x.clone(), train_slope * x), val=(x.clone(), val_slope * x))

    return Preset(name, "scalar regression", "regression", make_data, scalar_model)


def line_weights(epochs: int, lr: float = 0.1, w0: float = 0.0, target: float = 2.0) -> list[float]:
    """w after each full-batch SGD step on mean((w x - target x)^2) with x = +-1."""
    out, w = [], w0
    for _ in range(epochs):
        w = w - lr * 2 * (w - target)
        out.append(w)
    return out


# -- running ----------------------------------------------------------------------

@dataclass
class Run:
    trainer: Trainer
    result: RunResult
    events: list[ev.Event] = field(default_factory=list)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    def names(self) -> list[str]:
        """Event names, without the per-step and eval records."""
        return [e.name for e in self.events if not isinstance(e, (ev.StepStats, ev.EvalDone))]

    @property
    def dir(self) -> Path:
        return self.result.run_dir

    def metrics(self) -> list[dict[str, Any]]:
        return list(read_metrics(self.dir / "metrics.jsonl"))

    def step_records(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics() if r.get("kind") == "step"]

    def lr_by_step(self) -> dict[int, float]:
        return {r["step"]: r["lr"] for r in self.step_records()}

    def stats_lr_by_step(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for e in self.of(ev.StepStats):
            out.update(zip(e.steps, e.lr))
        return out


def start(cfg: RunConfig, preset: Preset, run_dir: Path, *, resume: dict[str, Any] | None = None,
          at: dict[int, Iterable[Any]] | None = None,
          listeners: Iterable[Callable[[ev.Event], None]] = ()) -> tuple[Trainer, list[ev.Event]]:
    """Build a Trainer that records its events; `at` = {training call: [commands]}."""
    events: list[ev.Event] = []
    trainer = Trainer(cfg, preset, run_dir, resume=resume, listeners=[events.append, *listeners])
    if at:
        plan = {n: list(cmds) for n, cmds in at.items()}

        def hook(n: int) -> None:
            for command in plan.pop(n, []):
                trainer.commands.put(command)

        trainer.model.hook = hook
    return trainer, events


def run(cfg: RunConfig, preset: Preset, run_dir: Path, **kwargs: Any) -> Run:
    trainer, events = start(cfg, preset, run_dir, **kwargs)
    result = trainer.run()
    return Run(trainer, result, events)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
               poll: float = 0.002) -> Any:
    """Poll a condition until it holds (never a fixed sleep) and return its value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)  # wait-ok: poll interval inside a condition wait with a deadline
    return value


def weights(state_or_model: Any) -> dict[str, torch.Tensor]:
    sd = state_or_model.state_dict() if isinstance(state_or_model, nn.Module) else state_or_model
    return {k: v.detach().clone() for k, v in sd.items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for in-process calls of the command line."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="session")
def circles_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch circles run, built once per session for the checkpoint cases.

    Read-only: a test that changes a run copies it first (the tests assert snapshot() unchanged).
    Trained in this process (the run directory is the same; no interpreter start and torch import).
    """
    from cli_helpers import train_in_process

    base = tmp_path_factory.mktemp("circles")
    R = base / "R"
    train_in_process("--preset", "circles", "--headless", "--epochs", "1", "--run-dir", R, cwd=base)
    return R


@pytest.fixture
def served(tmp_path: Path):
    """A started control server on tmp_path/run; yields (server, commands, run_dir); closed afterwards."""
    from tuitrain.engine.commands import CommandQueue
    from tuitrain.engine.control import ControlServer

    run_dir = tmp_path / "run"
    commands = CommandQueue()
    server = ControlServer(run_dir, commands)
    server.start()
    yield server, commands, run_dir
    server.close()
