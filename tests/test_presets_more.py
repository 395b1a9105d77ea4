"""The teaching presets: shapes (CNN), shapes-aug, charlm (transformer), explode (NaN) and overfit.

Each one is there to show the user something (train/eval mode, augmentation,
a language model, the NaN guard, early stopping), so besides shapes and
determinism these tests run the real Trainer and assert on what the user
would see: the status, the metrics on disk, the checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_same_weights, run, weights
from tuitrain.engine import events as ev
from tuitrain.engine.checkpoint import load as load_checkpoint
from tuitrain.engine.commands import Stop
from tuitrain.engine.config import RunConfig
from tuitrain.engine.rundir import step_losses
from tuitrain.engine.trainer import Trainer
from tuitrain.presets import BUILTIN, builtin_names, load_preset
from tuitrain.presets import charlm, shapes
from tuitrain.presets.base import Preset
from tuitrain.presets.models import RandomFlipShift

NEW = ["shapes", "shapes-aug", "shapes64", "charlm", "explode", "overfit"]


def cfg_for(preset: Preset, seed: int = 0, **overrides: object) -> RunConfig:
    """The preset's own defaults, as `tuitrain --preset NAME` would resolve them, on the CPU."""
    return RunConfig(**{**preset.defaults, "preset": preset.name, "device": "cpu", "seed": seed,
                        "log_interval": 1000.0, **overrides})


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


# -- registry ----------------------------------------------------------------------


def test_registered_after_the_originals_in_order() -> None:
    assert builtin_names()[-len(NEW):] == NEW
    for name in NEW:
        preset = load_preset(name)
        assert preset is BUILTIN[name] and preset.name == name
        assert preset.description and "\n" not in preset.description
        RunConfig(**preset.defaults)  # every default is a real, valid RunConfig field


# -- shapes ------------------------------------------------------------------------


def test_shapes_data_shapes_and_classes() -> None:
    data = shapes.make_data(0)
    for (x, y), n in ((data.train, shapes.N_TRAIN), (data.val, shapes.N_VAL)):
        assert x.shape == (n, 1, shapes.SIZE, shapes.SIZE) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert set(y.tolist()) == {0, 1, 2}
        assert torch.isfinite(x).all()


def test_shapes_are_drawn_not_noise() -> None:
    """Without noise, a shape is a bright blob inside the frame whose area is similar across classes."""
    gen = torch.Generator().manual_seed(5)
    old = shapes.NOISE
    try:
        shapes.NOISE = 0.0
        x, y = shapes.sample(300, gen)
    finally:
        shapes.NOISE = old
    lit = (x[:, 0] > 0).float()
    assert (lit.sum((1, 2)) >= 9).all(), "every image holds a shape of some pixels"
    assert (lit[:, 0, :].sum() + lit[:, -1, :].sum() + lit[:, :, 0].sum() + lit[:, :, -1].sum()) < 0.02 * lit.sum()
    areas = [lit[y == k].sum((1, 2)).mean().item() for k in range(3)]
    assert max(areas) / min(areas) < 1.6, f"mean areas per class too different: {areas}"


@pytest.mark.parametrize("name", ["shapes", "charlm", "overfit", "explode"])
def test_data_deterministic_per_seed_and_leaves_global_rng(name: str) -> None:
    preset = BUILTIN[name]
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a, b, c = preset.make_data(3), preset.make_data(3), preset.make_data(4)
    assert torch.equal(torch.get_rng_state(), before)
    for split in ("train", "val"):
        (xa, ya), (xb, yb) = getattr(a, split), getattr(b, split)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.train[0], c.train[0])
    n = min(len(a.train[0]), len(a.val[0]))
    assert not torch.equal(a.train[0][:n], a.val[0][:n])


def test_shapes_cnn_train_and_eval_differ_and_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    model = shapes.make_model()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x = shapes.make_data(0).val[0][:32]
    model.train()
    t1, t2 = model(x), model(x)
    assert t1.shape == (32, 3)
    assert not torch.allclose(t1, t2), "dropout draws a new mask each training forward"
    model.eval()
    rng = torch.get_rng_state()
    with torch.inference_mode():
        e1, e2 = model(x), model(x)
    assert torch.equal(e1, e2)
    assert torch.equal(torch.get_rng_state(), rng), "eval draws no random numbers"
    assert not torch.allclose(e1, t1)


def test_augmentation_only_in_training_and_from_the_global_rng() -> None:
    aug = RandomFlipShift(max_shift=2)
    x = torch.randn(64, 1, 20, 20)
    aug.eval()
    rng = torch.get_rng_state()
    assert aug(x) is x
    assert torch.equal(torch.get_rng_state(), rng)
    aug.train()
    torch.manual_seed(1)
    fresh = torch.get_rng_state()
    a = aug(x)
    assert not torch.equal(torch.get_rng_state(), fresh), "draws from the global RNG"
    torch.manual_seed(1)
    b = aug(x)
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, b), "the same global RNG state gives the same augmentation (exact resume)"


def test_shapes_aug_model_starts_with_augmentation() -> None:
    model = BUILTIN["shapes-aug"].make_model()
    assert isinstance(model[0], RandomFlipShift)
    model.eval()
    x = shapes.make_data(0).val[0][:8]
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


def test_shapes_aug_stopped_and_resumed_equals_never_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The augmentation draws from the global RNG, which checkpoints carry: resume stays exact."""
    monkeypatch.setattr(shapes, "N_TRAIN", 320)
    monkeypatch.setattr(shapes, "N_VAL", 64)
    preset = BUILTIN["shapes-aug"]
    cfg = cfg_for(preset, epochs=2, batch_size=32)  # 10 steps an epoch
    full = run(cfg, preset, tmp_path / "full")

    run_dir = tmp_path / "part"
    trainers: list[Trainer] = []

    def stop_after_first_epoch(event: ev.Event) -> None:
        if isinstance(event, ev.EvalDone) and event.epoch == 1:
            trainers[0].commands.put(Stop())

    trainers.append(Trainer(cfg, preset, run_dir, listeners=[stop_after_first_epoch]))
    part = trainers[0].run()
    assert part.status == "stopped" and 0 < part.summary["steps"] < 20
    resumed = run(cfg, preset, run_dir, resume=load_checkpoint(run_dir / "checkpoints" / "latest.pt"))
    assert resumed.result.status == "finished" and resumed.result.summary["steps"] == 20
    assert_same_weights(weights(resumed.trainer.model), weights(full.trainer.model))
    assert step_losses(run_dir / "metrics.jsonl") == step_losses(full.dir / "metrics.jsonl")


def test_shapes_learns_well_above_chance(tmp_path: Path) -> None:
    preset = BUILTIN["shapes"]
    result = run(cfg_for(preset, epochs=3), preset, tmp_path / "run")
    assert result.result.status == "finished"
    rows = history(result.dir)
    assert len(rows) == 3
    assert rows[-1]["val_acc"] >= 0.6, rows  # chance is 1/3
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] < math.log(3) + 0.05


# -- charlm ------------------------------------------------------------------------


def test_charlm_vocab_is_fixed_and_round_trips() -> None:
    assert charlm.V == 96 and charlm.VOCAB[0] == "\n" and charlm.VOCAB[1] == " " and charlm.VOCAB[-1] == "~"
    text = "def f(x):\n\treturn {'a': x}  # ok"
    assert charlm.decode(charlm.encode(text)) == text.replace("\t", " ")
    assert charlm.decode(charlm.encode("caf\u00e9 \u2192 ok")) == "caf  ok"  # outside the vocabulary: dropped


def test_charlm_data_is_next_character_windows() -> None:
    data = charlm.make_data(0)
    train_text, val_text = charlm.corpus()
    assert len(train_text) > 100_000 and len(val_text) > 10_000
    for (x, y), n in ((data.train, charlm.N_TRAIN), (data.val, charlm.N_VAL)):
        assert x.shape == y.shape == (n, charlm.CONTEXT)
        assert x.dtype == y.dtype == torch.int64
        assert 0 <= int(x.min()) and int(x.max()) < charlm.V
        assert torch.equal(x[:, 1:], y[:, :-1]), "targets are the inputs shifted by one"
    assert charlm.decode(data.train[0][0]) in train_text


def test_charlm_logits_are_batch_vocab_time_and_causal() -> None:
    torch.manual_seed(0)
    model = charlm.make_model().eval()
    x, y = charlm.make_data(0).train
    x, y = x[:4], y[:4]
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (4, charlm.V, charlm.CONTEXT)
        loss = nn.CrossEntropyLoss()(out, y)
        assert abs(loss.item() - math.log(charlm.V)) < 1.0, "an untrained model is near uniform"
        assert (out.argmax(1) == y).shape == y.shape
        changed = x.clone()
        changed[:, 40:] = (changed[:, 40:] + 1) % charlm.V
        out2 = model(changed)
    assert torch.allclose(out[:, :, :40], out2[:, :, :40], atol=1e-5), "no position sees the future"
    assert not torch.allclose(out[:, :, 40:], out2[:, :, 40:])


def test_charlm_sample_is_one_printable_line_and_leaves_rng_and_mode_alone() -> None:
    preset = BUILTIN["charlm"]
    assert preset.perplexity and preset.on_eval is not None
    torch.manual_seed(0)
    model = preset.make_model().eval()
    torch.manual_seed(42)
    rng = torch.get_rng_state()
    text = preset.on_eval(model, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng), "sampling must not touch the global RNG (exact resume)"
    assert not model.training
    assert isinstance(text, str) and 0 < len(text) <= 80
    assert text.isprintable() and "\n" not in text
    assert text.startswith(charlm.PROMPT)
    assert preset.on_eval(model, torch.device("cpu")) == text, "a fixed seed: the same weights give the same line"


def test_charlm_val_loss_falls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(charlm, "N_TRAIN", 256)  # 16 steps an epoch: short, and the curve shows the fall
    preset = BUILTIN["charlm"]
    result = run(cfg_for(preset, epochs=8, batch_size=16), preset, tmp_path / "run")
    assert result.result.status == "finished"
    val = [r["val_loss"] for r in history(result.dir)]
    assert len(val) == 8
    assert val[0] < math.log(charlm.V) - 1.0, val  # the untrained model is near uniform: log(96) = 4.56
    assert val[-1] < val[0] - 0.3, val
    assert all(r.get("grad_norm") is not None for r in metrics(result.dir) if r["kind"] == "step")


# -- explode -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_explode_fails_on_a_non_finite_loss(tmp_path: Path, seed: int) -> None:
    preset = BUILTIN["explode"]
    assert preset.defaults.get("on_nan", "stop") == "stop"
    result = run(cfg_for(preset, seed), preset, tmp_path / "run")
    assert result.result.status == "failed"
    assert "non-finite" in (result.result.error or "") + json.dumps(result.result.summary)
    nan = [r for r in metrics(result.dir) if r["kind"] == "event" and r["event"] == "nan"]
    assert len(nan) == 1 and nan[0]["action"] == "stop"
    steps_per_epoch = math.ceil(len(preset.make_data(seed).train[0]) / preset.defaults["batch_size"])
    assert nan[0]["step"] <= steps_per_epoch, "it blows up within the first epoch"
    losses = {r["step"]: r["loss"] for r in metrics(result.dir) if r["kind"] == "step"}
    first_bad = min(step for step, loss in losses.items() if loss is None)  # non-finite is written as null
    assert nan[0]["step"] == first_bad
    before = [losses[s] for s in range(1, first_bad)]
    assert before[0] < 1.0 and max(before) > 100.0, f"it exploded rather than starting broken: {before}"


# -- overfit -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_overfit_stops_early_and_keeps_the_best_epoch(tmp_path: Path, seed: int) -> None:
    preset = BUILTIN["overfit"]
    assert preset.defaults["patience"] == 10 and preset.defaults.get("weight_decay", 0.0) == 0.0
    result = run(cfg_for(preset, seed), preset, tmp_path / "run")
    assert result.result.status == "early_stopped"
    rows = history(result.dir)
    val = [r["val_loss"] for r in rows]
    best = min(range(len(val)), key=val.__getitem__)
    last = len(rows) - 1
    assert last == best + preset.defaults["patience"], "stopped exactly `patience` epochs after the best"
    assert len(rows) < preset.defaults["epochs"] // 2
    assert val[last] > val[best] * 1.05 and max(val[best:]) > val[best] * 1.1, "the validation loss turned up"
    assert rows[last]["train_loss"] < rows[best]["train_loss"], "while the training loss kept falling"
    assert any(r["kind"] == "event" and r["event"] == "early_stop" for r in metrics(result.dir))
    state = load_checkpoint(result.dir / "checkpoints" / "best.pt")
    assert state["epoch"] == best + 1
    assert state["best_val_loss"] == pytest.approx(val[best])
