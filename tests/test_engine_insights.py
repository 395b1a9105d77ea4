"""What the engine tells a viewer about the model: boundary, layer health, samples, extras."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tuitrain.engine import events as ev
from tuitrain.engine.boundary import GRID_COLS, GRID_ROWS, BoundaryProbe
from tuitrain.engine.layer_health import GROWTH_FLAG, LayerHealth
from tuitrain.engine.trainer import Trainer
from tuitrain.presets.base import Data, Preset

from conftest import Run, assert_same_weights, classifier_preset, line_preset, make_cfg, weights


def run_with(cfg: Any, preset: Preset, run_dir: Path, **kwargs: Any) -> Run:
    events: list[ev.Event] = []
    trainer = Trainer(cfg, preset, run_dir, listeners=[events.append], **kwargs)
    return Run(trainer, trainer.run(), events)


# -- decision boundary ------------------------------------------------------------------

def test_boundary_frames_cover_the_grid_with_valid_classes_and_epoch_ends_reach_the_record(run_dir: Path) -> None:
    r = run_with(make_cfg(epochs=3), classifier_preset(), run_dir, boundary=True)
    points = r.of(ev.BoundaryPoints)
    assert len(points) == 1
    p = points[0]
    assert (p.cols, p.rows, p.classes) == (GRID_COLS, GRID_ROWS, 2)
    assert p.x_range[0] < p.x_range[1] and p.y_range[0] < p.y_range[1]
    assert 0 < len(p.points) <= 400 and {int(pt[2]) for pt in p.points} == {0, 1}
    grids = r.of(ev.BoundaryGrid)
    assert all(len(g.cells) == GRID_COLS * GRID_ROWS and set(g.cells) <= {"0", "1"} for g in grids)
    assert [g.epoch for g in grids if g.epoch_end] == [1, 2, 3]
    on_disk = [rec for rec in r.metrics() if rec.get("event") == "boundary"]
    assert [rec["epoch"] for rec in on_disk] == [1, 2, 3]  # live frames stay off the disk


def test_boundary_agrees_with_the_model_at_a_grid_cell(run_dir: Path) -> None:
    r = run_with(make_cfg(epochs=2), classifier_preset(), run_dir, boundary=True)
    p, g = r.of(ev.BoundaryPoints)[0], r.of(ev.BoundaryGrid)[-1]
    model = r.trainer.model.eval()
    for row, col in [(0, 0), (GRID_ROWS - 1, GRID_COLS - 1), (GRID_ROWS // 2, GRID_COLS // 3)]:
        x = p.x_range[0] + (col + 0.5) * (p.x_range[1] - p.x_range[0]) / p.cols
        y = p.y_range[1] - (row + 0.5) * (p.y_range[1] - p.y_range[0]) / p.rows
        with torch.no_grad():
            expected = int(model(torch.tensor([[x, y]])).argmax(1))
        assert g.cells[row * p.cols + col] == str(expected)


def test_drawing_the_boundary_leaves_training_bit_identical(tmp_path: Path) -> None:
    cfg = make_cfg(epochs=3, log_interval=1e-6)  # a flush, and so a frame, after every step
    plain = run_with(cfg, classifier_preset(dropout=0.3), tmp_path / "a")
    drawn = run_with(cfg, classifier_preset(dropout=0.3), tmp_path / "b", boundary=True)
    assert len(drawn.of(ev.BoundaryGrid)) > 3
    assert_same_weights(weights(plain.trainer.model), weights(drawn.trainer.model))
    assert [e.loss for e in plain.of(ev.StepStats)] == [e.loss for e in drawn.of(ev.StepStats)]


@pytest.mark.parametrize("make", [line_preset, lambda: classifier_preset(name="off")])
def test_no_boundary_for_regression_or_when_not_asked(run_dir: Path, make: Any) -> None:
    r = run_with(make_cfg(epochs=1), make(), run_dir, boundary=make is line_preset)
    assert not r.of(ev.BoundaryPoints) and not r.of(ev.BoundaryGrid)


def test_probe_skips_non_finite_points_and_leaves_the_global_rng_alone() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [float("nan"), 1.0]])
    y = torch.tensor([0, 1, 1])
    before = torch.get_rng_state()
    probe = BoundaryProbe(x, y, torch.device("cpu"))
    assert torch.equal(before, torch.get_rng_state())
    assert len(probe.points) == 2
    assert probe.x_range[0] < 0.0 < 1.0 < probe.x_range[1]


# -- layer health -----------------------------------------------------------------------

def test_layer_stats_name_every_tensor_and_report_pre_clip_gradient_norms(run_dir: Path) -> None:
    r = run_with(make_cfg(epochs=3, grad_clip=1e-4), classifier_preset(), run_dir)
    stats = r.of(ev.LayerStats)
    assert stats, "no layer stats were collected"
    names = [n for n, _ in r.trainer.model.named_parameters()]
    for s in stats:
        assert s.names == names
        assert s.shapes == [list(p.shape) for p in r.trainer.model.parameters()]
        assert all(g is not None and g > 0 for g in s.grad_norm)
        assert s.total_grad_norm == pytest.approx(math.sqrt(sum(g * g for g in s.grad_norm)))
        assert s.total_grad_norm > 1e-4  # measured before clipping to 1e-4
    records = [rec for rec in r.metrics() if rec.get("event") == "layers"]
    assert len(records) == len(stats)


def test_update_ratio_is_lr_times_gradient_over_weight_for_plain_sgd(run_dir: Path) -> None:
    lr = 0.05
    r = run_with(make_cfg(epochs=3, lr=lr), classifier_preset(), run_dir)
    s = r.of(ev.LayerStats)[-1]
    for g, w, ratio in zip(s.grad_norm, s.weight_norm, s.update_ratio):
        assert ratio == pytest.approx(lr * g / w, rel=1e-4)


def test_no_layer_stats_or_hints_without_insights(run_dir: Path) -> None:
    r = run_with(make_cfg(epochs=3), classifier_preset(), run_dir, insights=False)
    assert not r.of(ev.LayerStats) and not r.of(ev.Hint)


def test_the_layer_whose_gradient_grew_is_flagged() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    health = LayerHealth(model)
    out = None
    for scale in [1.0, 1.0, 1.0, 10.0]:
        for i, p in enumerate(model.parameters()):
            p.grad = torch.ones_like(p) * (scale if i == 2 else 1.0)  # "1.weight" grows
        health.before_step()
        out = health.summarize(health.after_step().tolist())
    assert out is not None and out["flagged"] == "1.weight" and out["growth"] == pytest.approx(10.0)
    assert GROWTH_FLAG < 10.0


def test_nothing_is_flagged_when_gradients_shrink() -> None:
    model = nn.Linear(2, 1)
    health = LayerHealth(model)
    for scale in [4.0, 2.0, 1.0]:
        for p in model.parameters():
            p.grad = torch.ones_like(p) * scale
        health.before_step()
        out = health.summarize(health.after_step().tolist())
    assert out["flagged"] is None and out["growth"] is None


# -- token-level metrics, perplexity and samples -------------------------------------

class _Tokens(nn.Module):
    """A bigram model: logits (B, V, T), as a language-model preset returns them."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x).transpose(1, 2)


def _token_data(seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 5, (40, 6), generator=g)
    y = (x + 1) % 5
    return Data(train=(x[:32], y[:32]), val=(x[32:], y[32:]))


def test_token_accuracy_perplexity_and_a_sample_per_epoch(run_dir: Path) -> None:
    seen_modes: list[tuple[bool, bool]] = []

    def sample(model: nn.Module, device: torch.device) -> str:
        seen_modes.append((model.training, torch.is_inference_mode_enabled()))
        return "abc"

    preset = Preset("tokens", "bigram", "classification", _token_data, _Tokens, perplexity=True,
                    on_eval=sample)
    r = run_with(make_cfg(epochs=3, lr=1.0, optimizer="adam"), preset, run_dir)
    evals = [e for e in r.of(ev.EvalDone) if e.epoch_end]
    assert all(0.0 <= e.val_metric <= 1.0 and 0.0 <= e.train_metric <= 1.0 for e in evals)
    assert evals[-1].val_metric == 1.0  # (x + 1) % 5 is learnable exactly
    assert all(e.extras["val_ppl"] == pytest.approx(math.exp(e.val_loss)) for e in evals)
    records = [rec for rec in r.metrics() if rec.get("kind") == "eval"]
    assert all("val_ppl" in rec and "train_ppl" in rec for rec in records)
    history = json.loads((r.dir / "history.json").read_text())
    assert all("val_ppl" in row for row in history)
    assert [s.epoch for s in r.of(ev.Sample)] == [1, 2, 3] and r.of(ev.Sample)[0].text == "abc"
    assert seen_modes == [(False, True)] * 3
    assert r.trainer.model.training  # back in train mode afterwards


# -- input wait ---------------------------------------------------------------------------

class _SlowSet(Dataset):
    """Each sample takes a moment to produce, as a disk-bound dataset would."""

    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 2)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.randn(200_000).sum()  # real work, so the loader is the bottleneck
        return self.x[i], self.y[i]


def test_data_wait_is_high_when_the_dataset_is_slow_and_low_for_tensors(tmp_path: Path) -> None:
    slow = Preset("slow", "slow loader", "classification",
                  lambda seed: Data(_SlowSet(64), _SlowSet(16)), lambda: nn.Linear(2, 2))
    r = run_with(make_cfg(epochs=1, log_interval=0.05), slow, tmp_path / "slow")
    waits = [e.data_wait for e in r.of(ev.StepStats) if e.data_wait is not None]
    assert waits and max(waits) > 0.5
    fast = run_with(make_cfg(epochs=1, log_interval=0.05), classifier_preset(), tmp_path / "fast")
    assert all(0.0 <= e.data_wait < 0.5 for e in fast.of(ev.StepStats))


def test_an_epoch_end_draws_one_frame_not_two(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuitrain.engine import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "BOUNDARY_INTERVAL", 0.0)  # any flush may draw
    r = run_with(make_cfg(epochs=3), classifier_preset(), run_dir, boundary=True)  # flushes only at epoch ends
    kinds = [g.epoch_end for g in r.of(ev.BoundaryGrid)]
    assert kinds == [False, True, True, True]  # the start, then each epoch's evaluated frame


# -- hints after a resume ----------------------------------------------------------------

def _preset_cfg(name: str, **overrides: Any) -> tuple[Preset, Any]:
    from tuitrain.engine.config import RunConfig
    from tuitrain.presets import load_preset

    preset = load_preset(name)
    return preset, RunConfig(preset=name, **{**preset.defaults, "device": "cpu", "seed": 0,
                                             "log_interval": 1000.0, **overrides})


def _hints(run_dir: Path) -> list[tuple[str, int]]:
    """(rule, step) of every hint in metrics.jsonl, in order."""
    from tuitrain.engine.rundir import read_metrics

    return [(r["rule"], r["step"]) for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "hint"]


def _stopped_and_resumed(name: str, stops: list[int], run_dir: Path, *, keep_diagnosis: bool = True,
                         **overrides: Any) -> list[Run]:
    """The same run stopped at each of `stops` (--max-steps) and resumed in place each time."""
    from tuitrain.engine import checkpoint as ckpt

    preset, state, runs = None, None, []
    for limit in [*stops, None]:
        preset, cfg = _preset_cfg(name, max_steps=limit, **overrides)
        runs.append(run_with(cfg, preset, run_dir, resume=state))
        state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
        if not keep_diagnosis:
            state.pop("diagnosis")  # what a tuitrain before the key wrote
    return runs


@pytest.mark.parametrize("name, stops, overrides", [
    # The bug: every resumed circles run got false "LR too high" hints; the run never stopped gets none.
    ("circles", [300, 700, 1100], {"epochs": 12}),
    # The epoch rules too: overfitting is found at the same epoch, through two stops before it.
    ("overfit", [25, 125], {}),
])
def test_a_resumed_run_gets_exactly_the_hints_of_the_run_never_stopped(
        name: str, stops: list[int], overrides: dict[str, Any], tmp_path: Path) -> None:
    preset, cfg = _preset_cfg(name, **overrides)
    full = run_with(cfg, preset, tmp_path / "full")
    parts = _stopped_and_resumed(name, stops, tmp_path / "part", **overrides)
    assert [p.result.summary["steps"] for p in parts[:-1]] == stops
    assert parts[-1].result.summary["steps"] == full.result.summary["steps"]
    expected = [(h.rule, h.step) for h in full.of(ev.Hint)]
    assert expected == (_hints(tmp_path / "full"))
    assert [(h.rule, h.step) for p in parts for h in p.of(ev.Hint)] == expected
    assert _hints(tmp_path / "part") == expected
    if name == "overfit":
        assert expected == [("overfitting", 140)]  # the control: there is a hint to get right


def test_a_checkpoint_without_diagnosis_state_resumes_without_false_lr_hints(tmp_path: Path) -> None:
    """An older tuitrain's checkpoint: it loads, and the rules that need the run's start stay silent."""
    parts = _stopped_and_resumed("circles", [300, 700], tmp_path / "part", keep_diagnosis=False, epochs=8)
    assert parts[-1].result.status == "finished"
    assert [h.rule for p in parts for h in p.of(ev.Hint) if h.rule.startswith("lr_")] == []


def test_the_diagnosis_state_in_a_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    preset, cfg = _preset_cfg("circles", max_steps=60)
    run_with(cfg, preset, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    diag = state["diagnosis"]
    assert diag["version"] == 1 and diag["last_step"] == 60 and len(diag["head"]) == 3


def test_a_malformed_diagnosis_state_is_refused_in_one_line(tmp_path: Path) -> None:
    from tuitrain.engine import checkpoint as ckpt

    preset, cfg = _preset_cfg("circles", max_steps=60)
    run_with(cfg, preset, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = ckpt.load(path)
    state["diagnosis"]["head"] = [["x"]]
    with pytest.raises(ckpt.CheckpointError, match="diagnosis") as info:
        Trainer(cfg.replace(max_steps=120), preset, tmp_path / "run", resume=state)
    assert "\n" not in str(info.value)
    state["diagnosis"] = 3
    ckpt.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="bad diagnosis: it must be a dict"):
        ckpt.load(path)
