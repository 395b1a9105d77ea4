"""LR schedules at their granularity, the schedule preview, and the user LR multiplier."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import classifier_preset, line_preset, line_weights, make_cfg, run
from tuitrain.engine import checkpoint as ckpt
from tuitrain.engine import events as ev
from tuitrain.engine.commands import SaveCheckpoint, SetLR

SPE = 8  # classifier_preset: 64 samples / batch 8


def by_epoch(lrs: dict[int, float], spe: int = SPE) -> list[list[float]]:
    epochs = math.ceil(max(lrs) / spe)
    return [[lrs[s] for s in range(e * spe + 1, (e + 1) * spe + 1)] for e in range(epochs)]


def torch_onecycle_lrs(lr: float, total: int) -> list[float]:
    """The LR torch's OneCycleLR gives for optimizer steps 1..total."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# -- granularity -------------------------------------------------------------------------------

def test_onecycle_changes_the_lr_every_step(run_dir):
    r = run(make_cfg(epochs=2, scheduler="onecycle"), classifier_preset(), run_dir)
    lrs = r.lr_by_step()
    assert sorted(lrs) == list(range(1, 17))
    assert [lrs[s] for s in range(1, 17)] == pytest.approx(torch_onecycle_lrs(0.05, 16), rel=1e-12)
    for epoch in by_epoch(lrs):
        assert all(a != b for a, b in zip(epoch, epoch[1:])), "LR must move inside an epoch"
    assert max(lrs.values()) == pytest.approx(0.05, rel=0.05)
    assert lrs == r.stats_lr_by_step()  # StepStats and metrics.jsonl agree


def test_warmup_cosine_warms_up_linearly_then_decays_every_step(run_dir):
    r = run(make_cfg(epochs=2, scheduler="warmup-cosine", warmup=4), classifier_preset(), run_dir)
    lrs = [r.lr_by_step()[s] for s in range(1, 17)]
    # LinearLR from 1% to 100% over 4 steps, then cosine over the remaining 12.
    assert lrs[:5] == pytest.approx([0.05 * f for f in (0.01, 0.2575, 0.505, 0.7525, 1.0)], rel=1e-9)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])), lrs
    assert lrs[4 + 6] == pytest.approx(0.05 * (1 + math.cos(math.pi * 6 / 12)) / 2, rel=1e-9)
    for epoch in by_epoch(r.lr_by_step()):
        assert len(set(epoch)) == len(epoch)


def test_step_schedule_is_constant_inside_an_epoch_and_decays_between_epochs(run_dir):
    r = run(make_cfg(epochs=3, scheduler="step", step_size=1, gamma=0.5), classifier_preset(), run_dir)
    epochs = by_epoch(r.lr_by_step())
    assert epochs == [[0.05] * 8, [0.025] * 8, [0.0125] * 8]
    import json
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["lr"] for row in history] == [0.05, 0.025, 0.0125]


def test_cosine_schedule_is_constant_inside_an_epoch_and_follows_the_cosine_per_epoch(run_dir):
    r = run(make_cfg(epochs=3, scheduler="cosine"), classifier_preset(), run_dir)
    epochs = by_epoch(r.lr_by_step())
    expected = [0.05 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    for level, epoch in zip(expected, epochs):
        assert len(set(epoch)) == 1
        assert epoch[0] == pytest.approx(level, rel=1e-9)
    assert expected[0] > expected[1] > expected[2]


def test_plateau_lowers_the_lr_only_after_the_validation_loss_stops_improving(run_dir):
    # One step per epoch; val loss improves for epochs 1-3 and worsens from epoch 4.
    # plateau_patience 1: the 2nd bad epoch (5) triggers the cut, used from epoch 6 on.
    cfg = make_cfg(epochs=7, batch_size=4, lr=0.1, scheduler="plateau", plateau_patience=1, plateau_factor=0.5)
    r = run(cfg, line_preset(), run_dir)
    lrs = r.lr_by_step()
    assert [lrs[s] for s in range(1, 8)] == pytest.approx([0.1] * 5 + [0.05] * 2, rel=1e-12)
    vals = [e.val_loss for e in r.of(ev.EvalDone)]
    assert vals[0] > vals[1] > vals[2] < vals[3] < vals[4]
    # And the cut really reached the optimizer: epoch 6 moved w by lr 0.05.
    w5 = line_weights(5)[-1]
    w6 = w5 - 0.05 * 2 * (w5 - 2)
    w = float(ckpt.load(run_dir / "checkpoints" / "latest.pt")["model_state_dict"]["inner.weight"])
    w7 = w6 - 0.05 * 2 * (w6 - 2)
    assert w == pytest.approx(w7, rel=1e-6)


# -- the preview ---------------------------------------------------------------------------------

def test_schedule_preview_holds_the_lrs_the_run_then_uses(run_dir):
    r = run(make_cfg(epochs=2, scheduler="onecycle"), classifier_preset(), run_dir)
    preview = r.of(ev.SchedulePreview)[0]
    assert preview.step == 0 and preview.multiplier == 1.0
    # A point (s, lr) is the LR optimizer step s (1-based, as in metrics.jsonl) will use.
    assert preview.steps[0] == 1 and preview.steps[-1] == 16
    used = [r.lr_by_step()[s] for s in range(1, 17)]
    # Whatever step each point is drawn at, the used LRs appear in the preview, in order.
    lrs = preview.lrs
    starts = [i for i in range(len(lrs) - 15) if lrs[i:i + 16] == pytest.approx(used, rel=1e-12)]
    assert starts, f"preview {lrs} does not contain the used LRs {used}"


def test_schedule_preview_lr_at_each_step_equals_the_lr_recorded_for_that_step(run_dir):
    r = run(make_cfg(epochs=2, scheduler="onecycle"), classifier_preset(), run_dir)
    preview = r.of(ev.SchedulePreview)[0]
    planned = dict(zip(preview.steps, preview.lrs))
    used = r.lr_by_step()
    for s in range(1, 17):
        assert planned[s] == pytest.approx(used[s], rel=1e-12), f"step {s}"


def test_epoch_schedule_preview_steps_down_at_epoch_boundaries(run_dir):
    r = run(make_cfg(epochs=3, scheduler="step", step_size=1, gamma=0.5), classifier_preset(), run_dir)
    preview = r.of(ev.SchedulePreview)[0]
    assert preview.steps[0] == 1 and preview.steps[-1] == 24
    # Levels in order: 0.05 for steps 1-8, 0.025 for 9-16, 0.0125 for 17-24.
    levels = [lr for i, lr in enumerate(preview.lrs) if i == 0 or lr != preview.lrs[i - 1]]
    assert levels == pytest.approx([0.05, 0.025, 0.0125])
    points = list(zip(preview.steps, preview.lrs))
    assert (8, pytest.approx(0.05)) in points and (9, pytest.approx(0.025)) in points
    assert (16, pytest.approx(0.025)) in points and (17, pytest.approx(0.0125)) in points


# -- the LR multiplier -----------------------------------------------------------------------------

def test_set_lr_on_a_constant_schedule_sets_the_lr_used_from_the_next_step(run_dir):
    r = run(make_cfg(epochs=2), classifier_preset(), run_dir, at={5: [SetLR(0.02), SaveCheckpoint()]})
    (changed,) = r.of(ev.LRChanged)
    assert changed.step == 5
    assert changed.old_lr == pytest.approx(0.05) and changed.new_lr == 0.02
    assert changed.multiplier == pytest.approx(0.4, rel=1e-12)
    lrs = r.lr_by_step()
    assert all(lrs[s] == pytest.approx(0.05) for s in range(1, 6))
    later = [s for s in lrs if s > 5]
    assert set(range(9, 17)) <= set(later)
    assert all(lrs[s] == pytest.approx(0.02, rel=1e-12) for s in later)
    import json
    assert [row["lr"] for row in json.loads((run_dir / "history.json").read_text())] == \
        pytest.approx([0.02, 0.02], rel=1e-12)
    # The next preview starts from the new LR.
    after = [p for p in r.of(ev.SchedulePreview) if p.step == 5]
    assert after and after[0].lrs[0] == pytest.approx(0.02) and after[0].multiplier == pytest.approx(0.4)
    # The multiplier is saved in checkpoints.
    assert ckpt.load(run_dir / "checkpoints" / "step-5.pt")["lr_multiplier"] == pytest.approx(0.4)
    assert ckpt.load(run_dir / "checkpoints" / "latest.pt")["lr_multiplier"] == pytest.approx(0.4)


def test_set_lr_reaches_the_optimizer(run_dir):
    # One full-batch step per epoch; after step 1 the LR is 0.02 instead of 0.1.
    r = run(make_cfg(epochs=3, batch_size=4, lr=0.1), line_preset(), run_dir, at={1: [SetLR(0.02)]})
    w = line_weights(1)[0]
    for _ in range(2):
        w = w - 0.02 * 2 * (w - 2)
    final = float(ckpt.load(run_dir / "checkpoints" / "latest.pt")["model_state_dict"]["inner.weight"])
    assert final == pytest.approx(w, rel=1e-6)
    assert r.lr_by_step()[3] == pytest.approx(0.02)


def test_set_lr_on_cosine_keeps_the_shape_of_the_schedule(run_dir):
    r = run(make_cfg(epochs=4, scheduler="cosine"), classifier_preset(), run_dir, at={5: [SetLR(0.01)]})
    (changed,) = r.of(ev.LRChanged)
    m = 0.01 / 0.05
    assert changed.multiplier == pytest.approx(m, rel=1e-12)
    lrs = r.lr_by_step()
    for e in range(1, 4):  # epochs 2..4
        level = 0.05 * (1 + math.cos(math.pi * e / 4)) / 2 * m
        assert [lrs[s] for s in range(e * SPE + 1, (e + 1) * SPE + 1)] == pytest.approx([level] * SPE, rel=1e-9)


def test_set_lr_on_onecycle_scales_the_rest_of_the_cycle(tmp_path):
    preset = classifier_preset()
    cfg = make_cfg(epochs=3, scheduler="onecycle")
    base = run(cfg, preset, tmp_path / "base")
    changed_run = run(cfg, preset, tmp_path / "set", at={5: [SetLR(0.03)]})

    base_lrs = base.lr_by_step()
    m = 0.03 / base_lrs[6]  # the schedule's LR at the change is the one step 6 would use
    (changed,) = changed_run.of(ev.LRChanged)
    assert changed.step == 5
    assert changed.old_lr == pytest.approx(base_lrs[6], rel=1e-12)
    assert changed.multiplier == pytest.approx(m, rel=1e-9)
    lrs = changed_run.lr_by_step()
    assert set(range(9, 25)) <= set(lrs)
    for s in lrs:
        expected = base_lrs[s] if s <= 5 else base_lrs[s] * m
        assert lrs[s] == pytest.approx(expected, rel=1e-9), f"step {s}"
    if 6 in lrs:
        assert lrs[6] == pytest.approx(0.03, rel=1e-9)

    # The preview after the change starts at 0.03 and is the old plan times m.
    planned = dict(zip(base.of(ev.SchedulePreview)[0].steps, base.of(ev.SchedulePreview)[0].lrs))
    after = [p for p in changed_run.of(ev.SchedulePreview) if p.step == 5][0]
    assert after.steps[0] == 6 and after.lrs[0] == pytest.approx(0.03, rel=1e-9)
    for s, lr in zip(after.steps, after.lrs):
        assert lr == pytest.approx(planned[s] * m, rel=1e-9), f"preview step {s}"
    assert ckpt.load(tmp_path / "set" / "checkpoints" / "latest.pt")["lr_multiplier"] == pytest.approx(m, rel=1e-9)


# -- every optimizer with every scheduler ------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle", "plateau", "warmup-cosine"])
def test_every_optimizer_runs_with_every_scheduler(run_dir, optimizer, scheduler, request):
    r = run(make_cfg(epochs=2, optimizer=optimizer, scheduler=scheduler, momentum=0.9 if optimizer == "sgd" else 0.0,
                     lr=0.01), classifier_preset(), run_dir)
    assert r.result.status == "finished" and r.result.summary["steps"] == 16
    assert r.of(ev.SchedulePreview)[0].lrs[0] > 0
    losses = [rec["loss"] for rec in r.step_records()]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
