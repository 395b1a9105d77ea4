"""engine/diagnosis.py: each rule fires on the pattern it names and stays quiet on its look-alikes.

Step histories are synthetic and seeded; the epoch histories marked 'recorded' are
copied from real headless runs of the presets (tests/perf/calibrate_diagnosis.py),
so the thresholds are held to the noise real runs have.
"""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
import time

import pytest

from tuitrain.engine import diagnosis as dg
from tuitrain.engine.diagnosis import (
    Diagnostician, EpochPoint, Finding, Window, input_bound, lr_too_high, lr_too_low, nan_rule,
    overfitting, underfitting,
)
from tuitrain.engine.events import Hint

NAN = float("nan")


# -- helpers ---------------------------------------------------------------------------
def windows_of(losses: list[float], size: int = dg.WINDOW_STEPS, first_step: int = 1) -> list[Window]:
    """Windows as the Diagnostician cuts them: the first step alone, then `size` steps each."""
    out = []
    cuts = [0, 1] + list(range(1 + size, len(losses), size)) + [len(losses)]
    for a, b in zip(cuts, cuts[1:]):
        chunk = losses[a:b]
        if chunk:
            out.append(Window(first_step + a, first_step + b - 1, sum(chunk) / len(chunk), min(chunk),
                              max(chunk), len(chunk)))
    return out


def decaying(n: int, start: float = 0.7, end: float = 0.05, tau: float = 60.0, noise: float = 0.3,
             seed: int = 0) -> list[float]:
    """A healthy loss: exponential decay toward `end`, multiplicative log-normal noise."""
    rng = random.Random(seed)
    return [(end + (start - end) * math.exp(-i / tau)) * math.exp(rng.gauss(0, noise)) for i in range(n)]


def noisy_flat(n: int, level: float, noise: float = 0.05, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [level * math.exp(rng.gauss(0, noise)) for _ in range(n)]


def feed(diag: Diagnostician, losses: list[float], chunk: int = 125, first_step: int = 1,
         **kw: float) -> list[tuple[int, Finding]]:
    """Flush `losses` to the Diagnostician `chunk` steps at a time; (last step, finding) for each new one."""
    found = []
    for a in range(0, len(losses), chunk):
        steps = list(range(first_step + a, first_step + min(a + chunk, len(losses))))
        for f in diag.observe_steps(steps, losses[a:a + chunk], **kw):
            found.append((steps[-1], f))
    return found


def rules(found: list[tuple[int, Finding]]) -> list[str]:
    return [f.rule for _, f in found]


def epochs_of(vals: list[float], trains: list[float | None], first_epoch: int = 1) -> list[EpochPoint]:
    return [EpochPoint(first_epoch + i, 125 * (first_epoch + i), t, v) for i, (v, t) in enumerate(zip(vals, trains))]


# Recorded runs (val loss, train loss per epoch).
CIRCLES_DEFAULT_VAL = [0.0432, 0.0731, 0.0285, 0.0453, 0.0390, 0.0301, 0.0325, 0.0370, 0.0309, 0.0248, 0.0208,
                       0.0336, 0.0330, 0.0373, 0.0194, 0.0481, 0.0214, 0.0319, 0.0183, 0.0609, 0.0416, 0.0320,
                       0.0234, 0.0441, 0.0287, 0.0311, 0.0166, 0.0181, 0.0567, 0.0360]
CIRCLES_DEFAULT_TRAIN = [0.2149, 0.0671, 0.0495, 0.0371, 0.0448, 0.0612, 0.0387, 0.0514, 0.0374, 0.0410, 0.0393,
                         0.0320, 0.0287, 0.0346, 0.0374, 0.0399, 0.0395, 0.0362, 0.0344, 0.0397, 0.0387, 0.0304,
                         0.0319, 0.0356, 0.0310, 0.0287, 0.0356, 0.0337, 0.0287, 0.0307]
# SGD lr 0.1 on circles: validation rises three epochs running, then recovers.
CIRCLES_SGD_VAL = [0.1229, 0.0372, 0.0416, 0.0519, 0.0692, 0.0360, 0.0287, 0.0454, 0.0387, 0.0370]
CIRCLES_SGD_TRAIN = [0.2856, 0.1604, 0.0583, 0.0474, 0.0503, 0.0487, 0.0612, 0.0518, 0.0388, 0.0500]
MOONS_VAL = [0.086, 0.033, 0.029, 0.038, 0.033, 0.037, 0.038, 0.035, 0.039, 0.068, 0.042, 0.034, 0.028, 0.030,
             0.030, 0.058, 0.035, 0.036, 0.050, 0.040]
MOONS_TRAIN = [0.241, 0.059, 0.056, 0.045, 0.050, 0.042, 0.042, 0.039, 0.038, 0.052, 0.044, 0.038, 0.041, 0.037,
               0.043, 0.039, 0.037, 0.043, 0.039, 0.044]
# 100 noisy points, a 256-wide MLP: the best epoch is 11, then the validation loss drifts up.
OVERFIT_VAL = [0.839, 0.714, 0.621, 0.636, 0.633, 0.638, 0.626, 0.662, 0.688, 0.658, 0.620, 0.640, 0.642, 0.635,
               0.647, 0.714, 0.707, 0.675, 0.673, 0.670, 0.707, 0.737, 0.692, 0.660, 0.641, 0.669, 0.720, 0.678,
               0.680, 0.708, 0.767, 0.771, 0.753, 0.771, 0.809]
OVERFIT_TRAIN = [0.761, 0.651, 0.658, 0.646, 0.616, 0.598, 0.619, 0.590, 0.599, 0.603, 0.585, 0.562, 0.609, 0.568,
                 0.540, 0.549, 0.523, 0.595, 0.549, 0.533, 0.513, 0.547, 0.549, 0.612, 0.547, 0.573, 0.557, 0.583,
                 0.557, 0.492, 0.513, 0.510, 0.536, 0.511, 0.539]
# A run of an early version of the overfit preset (50 noisy points, 3x256 MLP, patience 10),
# a subtle case: early stopping ends it at epoch 22. Its loss before training: 0.613.
OVERFIT_PRESET_VAL = [0.678, 0.638, 0.614, 0.636, 0.628, 0.607, 0.605, 0.593, 0.648, 0.643, 0.632, 0.586, 0.589,
                      0.597, 0.668, 0.633, 0.620, 0.631, 0.658, 0.635, 0.660, 0.659]
OVERFIT_PRESET_TRAIN = [0.721, 0.644, 0.598, 0.567, 0.524, 0.484, 0.457, 0.419, 0.418, 0.473, 0.434, 0.433, 0.431,
                        0.412, 0.372, 0.373, 0.357, 0.378, 0.365, 0.407, 0.342, 0.340]
# A linear model on circles: flat at the loss of a coin toss.
LINEAR_VAL = [0.691, 0.691, 0.694, 0.693, 0.695, 0.692, 0.694, 0.692]
LINEAR_TRAIN = [0.702, 0.691, 0.692, 0.692, 0.692, 0.692, 0.692, 0.691]
# lr 1e-4 on circles: slow but steady.
SLOW_VAL = [0.684, 0.672, 0.660, 0.647, 0.630, 0.609, 0.585, 0.558, 0.523, 0.489]
SLOW_TRAIN = [0.689, 0.677, 0.665, 0.652, 0.637, 0.617, 0.595, 0.570, 0.539, 0.505]


# -- the module's shape --------------------------------------------------------------------
def test_module_imports_neither_torch_nor_textual() -> None:
    code = ("import sys, tuitrain.engine.diagnosis; "
            "print(sorted(m for m in ('torch', 'textual', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_finding_becomes_a_hint_event_field_for_field() -> None:
    f = nan_rule(42, "stop")
    hint = Hint(t=1.0, **dataclasses.asdict(f))  # the step the finding was judged at is the hint's step
    line = hint.to_dict()
    assert line["event"] == "hint" and line["rule"] == "nan" and line["evidence"] == f.evidence
    assert line["step"] == 42


# -- nan ---------------------------------------------------------------------------------
def test_nan_rule_says_the_step_and_that_the_run_stopped() -> None:
    f = nan_rule(120, "stop")
    assert f.rule == "nan" and f.severity == "warning"
    assert "step 120" in f.message and "stopped" in f.evidence
    assert "learning rate" in f.remedy


def test_nan_rule_says_where_a_pause_rolled_back_to() -> None:
    assert "rolled back to the checkpoint at step 100" in nan_rule(130, "pause", rolled_back_to=100).evidence
    assert "no checkpoint" in nan_rule(130, "pause").evidence


def test_nan_rule_counts_skipped_steps_and_names_what_went_bad() -> None:
    f = nan_rule(77, "skip", count=3)
    assert "3 steps skipped from step 77" in f.evidence
    assert nan_rule(5, "stop", what="validation loss").message == "Validation loss became NaN/Inf at step 5"


# -- lr too high -------------------------------------------------------------------------
def test_lr_too_high_fires_when_the_loss_explodes_and_never_gets_below_its_start() -> None:
    # Adam at lr 10 on circles: 0.71 at step 1, 1e5 at step 2, then bouncing around 1.0.
    losses = [0.706, 112682.0, 2483.0, 8883.0, 832.0, 84.0, 679.0] + noisy_flat(300, 1.0, noise=0.4)
    f = lr_too_high(windows_of(losses))
    assert f is not None and f.rule == "lr_too_high" and "exploded" in f.message
    assert "step 1" in f.evidence and "1.13e+05 (steps 2-26)" in f.evidence
    assert "lower the learning rate" in f.remedy


def test_lr_too_high_fires_when_the_loss_sits_above_where_it_started() -> None:
    losses = noisy_flat(26, 0.63, noise=0.2, seed=1) + noisy_flat(200, 0.8, noise=0.2, seed=2)
    f = lr_too_high(windows_of(losses))
    assert f is not None and "above where it started" in f.message
    assert "steps 1-26" in f.evidence and "steps 152-226" in f.evidence


def test_lr_too_high_fires_when_the_loss_diverges_after_learning() -> None:
    down = [2.3 * (0.31 / 2.3) ** (i / 300) for i in range(300)]
    up = [0.31 * (4.7 / 0.31) ** (i / 150) for i in range(150)]
    f = lr_too_high(windows_of(down + up))
    assert f is not None and "diverging" in f.message
    assert "rose from 0.336 (steps 277-301)" in f.evidence and "(steps 377-450)" in f.evidence


def test_lr_too_high_silent_on_a_healthy_decreasing_loss() -> None:
    losses = decaying(2000)
    for n in range(100, 2001, 25):
        assert lr_too_high(windows_of(losses[:n])) is None, n


def test_lr_too_high_silent_on_batch_size_1_noise_around_a_falling_loss() -> None:
    # Per-sample losses: log-normal, two orders of magnitude between the 1st and 99th percentile.
    for seed in range(5):
        losses = decaying(4000, tau=400, noise=1.0, seed=seed)
        losses[1000 + seed] = 0.0  # float32 cross-entropy underflows to exactly 0
        for n in range(200, 4001, 100):
            assert lr_too_high(windows_of(losses[:n])) is None, (seed, n)


def test_lr_too_high_silent_when_a_single_spike_recovers() -> None:
    losses = decaying(1000)
    losses[500] = 1000.0
    for n in range(450, 1001, 25):
        assert lr_too_high(windows_of(losses[:n])) is None, n


def test_lr_too_high_silent_on_a_slow_or_flat_loss() -> None:
    slow = [0.694 - 0.00008 * i + 0.01 * math.sin(i) for i in range(1000)]
    assert lr_too_high(windows_of(slow)) is None
    assert lr_too_high(windows_of(noisy_flat(1000, 0.69))) is None


def test_lr_too_high_waits_for_three_windows_after_the_first() -> None:
    losses = [0.7] * 26 + noisy_flat(50, 2.0)  # windows: step 1, 2-26, then two elevated ones
    assert lr_too_high(windows_of(losses)) is None
    assert lr_too_high(windows_of(losses + noisy_flat(25, 2.0))) is not None


def test_lr_too_high_reads_one_window_when_the_loss_then_went_nan() -> None:
    # SGD at lr 10 on sine: the loss multiplies every step and is NaN at step 9.
    losses = [0.22 * 40.0 ** i for i in range(8)]
    wins = windows_of(losses)
    assert lr_too_high(wins) is None  # two windows: not enough without the NaN
    f = lr_too_high(wins, nonfinite_step=9)
    assert f is not None and "NaN/Inf at step 9" in f.evidence


# -- lr too low --------------------------------------------------------------------------
def slow_descent(n: int, seed: int = 0) -> list[float]:
    """circles at lr 1e-4: 0.694, 0.0001 lower every step, noise +-2%."""
    rng = random.Random(seed)
    return [(0.694 - 0.0001 * i) * (1 + rng.uniform(-0.02, 0.02)) for i in range(n)]


def test_lr_too_low_fires_on_a_slow_steady_descent_after_300_steps() -> None:
    losses = slow_descent(400)
    f = lr_too_low(windows_of(losses))
    assert f is not None and f.rule == "lr_too_low" and "falling, but slowly" in f.message
    assert "steps 1-26" in f.evidence and "steps 302-400" in f.evidence and "after 400 steps" in f.evidence
    assert "raise the learning rate" in f.remedy


def test_lr_too_low_calls_a_flat_loss_not_moving() -> None:
    f = lr_too_low(windows_of(noisy_flat(400, 0.69, noise=0.02)))
    assert f is not None and "not moving" in f.message


def test_lr_too_low_waits_for_300_steps() -> None:
    assert lr_too_low(windows_of(slow_descent(290))) is None


def test_lr_too_low_silent_on_a_healthy_run_and_on_a_converged_low_plateau() -> None:
    assert lr_too_low(windows_of(decaying(400))) is None
    # Converged long ago: flat now, but far below where it started.
    assert lr_too_low(windows_of(decaying(3000, tau=30))) is None


def test_lr_too_low_never_when_the_loss_is_above_its_start_or_exploded() -> None:
    above = noisy_flat(26, 0.63, seed=1) + noisy_flat(400, 0.7, seed=2)
    assert lr_too_low(windows_of(above)) is None
    exploded = [0.7, 150.0] + noisy_flat(400, 0.68, seed=3)
    assert lr_too_low(windows_of(exploded)) is None


def test_lr_too_low_not_judged_when_the_windows_do_not_start_at_step_1() -> None:
    # A resumed, converged run is flat too: no 'start' to compare with.
    assert lr_too_low(windows_of(noisy_flat(400, 0.05), first_step=5001)) is None


# -- overfitting -------------------------------------------------------------------------
def test_overfitting_fires_when_val_rises_for_epochs_while_train_falls() -> None:
    found = None
    for n in range(1, len(OVERFIT_VAL) + 1):
        found = overfitting(epochs_of(OVERFIT_VAL[:n], OVERFIT_TRAIN[:n]))
        if found is not None:
            break
    assert found is not None and found.rule == "overfitting"
    assert n == 17  # the best epoch is 11; the noisy drift stands out from the noise 6 epochs later
    assert "from 0.62 (epoch 11)" in found.evidence and "median of epochs 15-17" in found.evidence
    assert "train loss fell from 0.585" in found.evidence


def test_overfitting_fires_on_a_clean_rise_after_four_epochs() -> None:
    vals = [1.0, 0.6, 0.5, 0.45, 0.5, 0.56, 0.62, 0.7]
    trains = [1.0, 0.6, 0.5, 0.42, 0.38, 0.34, 0.3, 0.27]
    assert overfitting(epochs_of(vals[:7], trains[:7])) is None  # three epochs past the best
    f = overfitting(epochs_of(vals, trains))
    assert f is not None and "(epoch 4)" in f.evidence and "epochs 6-8" in f.evidence


def test_overfitting_found_in_the_overfit_preset_before_early_stopping_ends_it() -> None:
    diag = Diagnostician(patience=10)
    feed(diag, noisy_flat(200, 0.613, noise=0.02))  # the loss before training: 0.613
    found, bad = [], 0
    best = math.inf
    for i, (v, t) in enumerate(zip(OVERFIT_PRESET_VAL, OVERFIT_PRESET_TRAIN)):
        bad = 0 if v < best else bad + 1
        best = min(best, v)
        found += [(i + 1, f) for f in diag.observe_eval(i + 1, 5 * (i + 1), t, v, bad)]
    assert [(e, f.rule) for e, f in found] == [(17, "overfitting")]
    assert found[0][1].evidence == ("val loss rose from 0.586 (epoch 12) to 0.633 (median of epochs 15-17) "
                                    "while train loss fell from 0.433 to 0.367; early stopping patience 5/10 used")


def test_overfitting_needs_the_rise_to_be_a_real_share_of_the_starting_loss() -> None:
    # Doubling near zero: 0.015 -> 0.03 is 2% of a start of 0.69.
    vals = [0.2, 0.05, 0.02, 0.016, 0.015, 0.022, 0.028, 0.03, 0.031]
    trains = [0.3, 0.08, 0.04, 0.03, 0.025, 0.02, 0.018, 0.016, 0.015]
    assert overfitting(epochs_of(vals, trains), initial_loss=0.69) is None
    assert overfitting(epochs_of(vals, trains), initial_loss=0.1) is not None


def test_overfitting_silent_when_train_rises_too() -> None:
    vals = [1.0, 0.6, 0.5, 0.45, 0.5, 0.56, 0.62, 0.7]
    trains = [1.0, 0.6, 0.5, 0.42, 0.45, 0.5, 0.55, 0.6]
    assert overfitting(epochs_of(vals, trains)) is None


@pytest.mark.parametrize("vals, trains", [
    (CIRCLES_DEFAULT_VAL, CIRCLES_DEFAULT_TRAIN),
    (CIRCLES_SGD_VAL, CIRCLES_SGD_TRAIN),
    (MOONS_VAL, MOONS_TRAIN),
    (SLOW_VAL, SLOW_TRAIN),
], ids=["circles-default", "circles-sgd-0.1", "moons", "circles-lr-1e-4"])
def test_overfitting_silent_on_recorded_validation_noise(vals: list[float], trains: list[float]) -> None:
    for n in range(1, len(vals) + 1):
        assert overfitting(epochs_of(vals[:n], trains[:n])) is None, n


def test_overfitting_shows_early_stopping_patience_and_fires_within_it() -> None:
    vals = [1.0, 0.7, 0.6, 0.55, 0.52, 0.5, 0.49, 0.55, 0.62]
    trains = [1.0, 0.7, 0.6, 0.55, 0.5, 0.47, 0.44, 0.41, 0.38]
    assert overfitting(epochs_of(vals, trains)) is None  # without patience: too soon
    f = overfitting(epochs_of(vals, trains), patience=2, bad_epochs=2)
    assert f is not None and "patience 2/2 used" in f.evidence and "(epoch 7)" in f.evidence


def test_overfitting_ignores_missing_train_loss() -> None:
    vals = [1.0, 0.6, 0.5, 0.45, 0.5, 0.56, 0.62, 0.7]
    assert overfitting(epochs_of(vals, [None] * len(vals))) is None


# -- underfitting ------------------------------------------------------------------------
def test_underfitting_fires_when_both_losses_plateau_high() -> None:
    f = underfitting(epochs_of(LINEAR_VAL, LINEAR_TRAIN), initial_loss=0.73)
    assert f is not None and f.rule == "underfitting" and f.severity == "info"
    assert "epochs 6-8" in f.evidence and "95% of the starting loss 0.73" in f.evidence
    assert "bigger model" in f.remedy


def test_underfitting_silent_on_a_low_plateau() -> None:
    # Converged: flat, but at 5% of where it started.
    assert underfitting(epochs_of([0.035, 0.034, 0.035, 0.034, 0.035, 0.034],
                                  [0.036, 0.035, 0.035, 0.036, 0.035, 0.035]), initial_loss=0.69) is None


def test_underfitting_silent_while_still_improving() -> None:
    for n in range(1, len(SLOW_VAL) + 1):
        assert underfitting(epochs_of(SLOW_VAL[:n], SLOW_TRAIN[:n]), initial_loss=0.694) is None


def test_underfitting_silent_when_validation_rises_or_bounces() -> None:
    assert underfitting(epochs_of(OVERFIT_VAL[:25], OVERFIT_TRAIN[:25]), initial_loss=0.684) is None
    bouncing = [1.18, 0.74, 1.28, 1.0, 0.97, 0.68, 1.11, 0.76]  # Adam at lr 10
    assert underfitting(epochs_of(bouncing, [1.0] * 8), initial_loss=0.7) is None


def test_underfitting_silent_with_a_large_generalisation_gap() -> None:
    assert underfitting(epochs_of([0.7] * 6, [0.3] * 6), initial_loss=0.7) is None


def test_underfitting_uses_epoch_1_train_loss_only_from_the_start() -> None:
    assert underfitting(epochs_of(LINEAR_VAL, LINEAR_TRAIN)) is not None
    assert underfitting(epochs_of(LINEAR_VAL, LINEAR_TRAIN, first_epoch=7)) is None  # resumed


# -- input-bound -------------------------------------------------------------------------
def test_input_bound_fires_on_a_cpu_waiting_for_data() -> None:
    f = input_bound([0.5, 0.45, 0.6, 0.55], step_range=(100, 400))
    assert f is not None and f.rule == "input_bound" and "52%" in f.message
    assert "steps 100-400" in f.evidence and "--num-workers" in f.remedy and "pin_memory" not in f.remedy


def test_input_bound_silent_below_the_threshold_or_with_too_few_windows() -> None:
    assert input_bound([0.1, 0.2, 0.05, 0.25, 0.9]) is None  # median 0.2
    assert input_bound([0.9, 0.9, 0.9]) is None


def test_input_bound_on_a_gpu_only_when_its_utilisation_is_low_or_unknown() -> None:
    waits = [0.4] * 6
    assert input_bound(waits, gpu_util=95.0, device_type="cuda") is None
    f = input_bound(waits, gpu_util=35.0, device_type="cuda")
    assert f is not None and "GPU utilisation 35%" in f.evidence and "pin_memory" in f.remedy
    assert input_bound(waits, gpu_util=None, device_type="cuda") is not None
    assert input_bound(waits, gpu_util=95.0, device_type="cpu") is not None  # a CPU run ignores it


# -- Diagnostician: windows, de-duplication, hysteresis --------------------------------------
def test_exploding_run_gives_one_lr_too_high_hint_however_many_flushes() -> None:
    losses = [0.706, 112682.0, 2483.0] + noisy_flat(5000, 1.0, noise=0.4)
    found = feed(Diagnostician(), losses, chunk=50)
    assert rules(found) == ["lr_too_high"]
    assert found[0][0] <= 100


def test_the_same_run_gives_the_same_hints_whatever_the_flush_size() -> None:
    losses = slow_descent(800) + noisy_flat(400, 2.0, noise=0.3)
    base = [(f.rule, f.evidence) for _, f in feed(Diagnostician(), losses, chunk=25)]
    assert [r for r, _ in base] == ["lr_too_low", "lr_too_high"]
    for chunk in (1, 7, 100, 1200):  # 1200: the whole run in one flush
        got = [(f.rule, f.evidence) for _, f in feed(Diagnostician(), losses, chunk=chunk)]
        assert [r for r, _ in got] == [r for r, _ in base], chunk


def test_a_rule_fires_again_only_after_it_stopped_holding_for_a_while() -> None:
    diag = Diagnostician()
    start = decaying(300, start=0.7, end=0.3, tau=40)
    bad = noisy_flat(200, 5.0, seed=1)
    good_briefly = noisy_flat(100, 0.3, seed=2)  # 4 windows: shorter than the re-arm delay
    good_long = noisy_flat(dg.REARM_WINDOWS * dg.WINDOW_STEPS + 100, 0.3, seed=3)
    losses = start + bad + good_briefly + bad + good_long + bad
    found = feed(diag, losses, chunk=50)
    assert rules(found) == ["lr_too_high", "lr_too_high"]
    assert found[0][0] <= 500  # the second bad stretch (steps 601-800) is the same episode
    assert 800 + len(good_long) < found[1][0] <= 800 + len(good_long) + len(bad)


def test_no_lr_too_low_hint_after_lr_too_high() -> None:
    # Exploded, then flat near its start: an LR problem, but the too-high kind.
    losses = [0.7, 150.0, 30.0] + noisy_flat(1000, 0.68, noise=0.05)
    assert rules(feed(Diagnostician(), losses)) == ["lr_too_high"]


def test_nonfinite_losses_are_left_out_and_a_nan_after_an_explosion_says_lr_too_high() -> None:
    diag = Diagnostician()
    losses = [0.22 * 40.0 ** i for i in range(8)] + [NAN] * 24
    found = diag.observe_steps(list(range(1, 33)), losses)
    assert rules([(0, f) for f in found]) == ["lr_too_high"]
    assert "NaN/Inf at step 9" in found[0].evidence
    assert all(math.isfinite(w.mean) for w in diag.windows(1))
    nan = diag.observe_nonfinite(9, "stop")
    assert nan.rule == "nan" and "step 9" in nan.message


def test_a_nan_in_a_healthy_run_is_not_called_lr_too_high() -> None:
    diag = Diagnostician()
    losses = decaying(1000)
    losses[700] = NAN
    assert feed(diag, losses) == []


def test_reset_steps_after_a_rollback_replaces_the_redone_steps_and_rearms() -> None:
    diag = Diagnostician()
    losses = decaying(300, end=0.3) + noisy_flat(300, 5.0)
    assert rules(feed(diag, losses)) == ["lr_too_high"]
    diag.reset_steps()
    # Rolled back to step 250: steps 251.. are redone, at a lower LR this time.
    redo = noisy_flat(500, 0.3, seed=4)
    assert feed(diag, redo, first_step=251) == []
    wins = diag.windows()
    assert wins[0].first_step == 1 and all(a.last_step < b.first_step for a, b in zip(wins, wins[1:]))
    # The problem coming back is reported again.
    assert rules(feed(diag, noisy_flat(300, 5.0), first_step=751)) == ["lr_too_high"]


def test_memory_stays_bounded_over_a_million_steps() -> None:
    diag = Diagnostician()
    rng = random.Random(0)
    chunk = [0.5 * math.exp(rng.gauss(0, 0.3)) for _ in range(1000)]
    t0 = time.perf_counter()
    for a in range(0, 1_000_000, 1000):
        diag.observe_steps(list(range(a + 1, a + 1001)), chunk, data_wait=0.01)
        if a % 100_000 == 0:
            diag.observe_eval(a // 1000 + 1, a + 1000, 0.5, 0.5)
    elapsed = time.perf_counter() - t0
    sizes = diag.sizes()
    assert sizes["head"] <= dg.HEAD_WINDOWS and sizes["recent"] <= dg.RECENT_WINDOWS
    assert sizes["waits"] <= dg.WAITS_KEPT and sizes["wait_steps"] <= dg.WAITS_KEPT
    assert sizes["epochs"] <= dg.EPOCHS_KEPT and sizes["partial"] < dg.WINDOW_STEPS
    assert diag.windows(partial=True)[-1].last_step == 1_000_000
    assert elapsed < 20, elapsed  # about 1 s on one shared core; the bound only catches O(n^2)


# -- Diagnostician: epochs and waits ------------------------------------------------------
def test_overfitting_is_reported_once_per_episode() -> None:
    diag = Diagnostician()
    found = []
    for i, (v, t) in enumerate(zip(OVERFIT_VAL, OVERFIT_TRAIN)):
        found += diag.observe_eval(i + 1, 7 * (i + 1), t, v)
    assert [f.rule for f in found] == ["overfitting"]
    # A new best, then a new rise: a new episode.
    more = [0.55, 0.6, 0.66, 0.72, 0.78, 0.84]
    for i, v in enumerate(more):
        found += diag.observe_eval(len(OVERFIT_VAL) + 1 + i, 0, 0.4 - 0.02 * i, v)
    assert [f.rule for f in found] == ["overfitting", "overfitting"]
    assert f"(epoch {len(OVERFIT_VAL) + 1})" in found[1].evidence


def test_underfitting_reported_from_the_runs_start_level_and_not_after_lr_too_high() -> None:
    diag = Diagnostician()
    feed(diag, noisy_flat(250, 0.73, noise=0.02))
    found = []
    for i, (v, t) in enumerate(zip(LINEAR_VAL, LINEAR_TRAIN)):
        found += diag.observe_eval(i + 1, 125 * (i + 1), t, v)
    assert [f.rule for f in found] == ["underfitting"]
    assert "of the starting loss 0.729" in found[0].evidence

    exploded = Diagnostician()
    assert rules(feed(exploded, [0.7, 500.0] + noisy_flat(300, 0.72, noise=0.05))) == ["lr_too_high"]
    for i, (v, t) in enumerate(zip(LINEAR_VAL, LINEAR_TRAIN)):
        assert exploded.observe_eval(i + 1, 0, t, v) == []


def test_a_redone_epoch_replaces_the_one_recorded() -> None:
    diag = Diagnostician()
    for e in range(1, 6):
        diag.observe_eval(e, e * 10, 0.5, 0.5)
    diag.observe_eval(4, 40, 0.4, 0.4)  # rolled back: epoch 4 again
    assert [p.epoch for p in diag._epochs] == [1, 2, 3, 4] and diag._epochs[-1].val_loss == 0.4


def test_input_bound_hint_once_then_again_only_after_it_cleared() -> None:
    diag = Diagnostician(device_type="cuda")
    steps = iter(range(1, 10_000))

    def flush(wait: float, util: float | None = 30.0) -> list[str]:
        return [f.rule for f in diag.observe_steps([next(steps)], [0.5], data_wait=wait, gpu_util=util)]

    out = [r for _ in range(10) for r in flush(0.5)]
    assert out == ["input_bound"]
    assert [r for _ in range(20) for r in flush(0.2)] == []  # between clear (15%) and fire (30%)
    assert [r for _ in range(10) for r in flush(0.5)] == []  # never cleared: the same episode
    assert [r for _ in range(dg.REARM_FLUSHES + 8) for r in flush(0.0)] == []
    assert [r for _ in range(10) for r in flush(0.5)] == ["input_bound"]
    assert [r for _ in range(dg.REARM_FLUSHES + 8) for r in flush(0.0)] == []
    assert [r for _ in range(10) for r in flush(0.5, util=99.0)] == []  # the GPU is busy anyway


def test_observe_steps_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError):
        Diagnostician().observe_steps([1, 2], [0.5])


def test_a_diagnostician_restored_from_its_state_continues_as_if_never_stopped() -> None:
    """The state a checkpoint carries: windows, evaluations and gates, plain data only."""
    import json

    losses = slow_descent(800) + noisy_flat(400, 2.0, noise=0.3) + decaying(600, start=2.0, end=0.1)
    whole = [(f.rule, f.step, f.evidence) for _, f in feed(Diagnostician(), losses, chunk=40)]
    assert [(r, step) for r, step, _ in whole] == [("lr_too_low", 326), ("lr_too_high", 876)]
    for cut in (13, 420, 801, 1010):
        first = Diagnostician()
        got = [(f.rule, f.step, f.evidence) for _, f in feed(first, losses[:cut], chunk=40)]
        state = json.loads(json.dumps(first.state_dict()))  # plain numbers, lists and dicts
        second = Diagnostician()
        second.load_state_dict(state)
        got += [(f.rule, f.step, f.evidence) for _, f in feed(second, losses[cut:], chunk=40, first_step=cut + 1)]
        assert got == whole, cut


def test_a_malformed_diagnostician_state_is_a_value_error_and_changes_nothing() -> None:
    diag = Diagnostician()
    feed(diag, decaying(300))
    before = diag.windows()
    for bad in (None, {}, {"version": 99}, {**diag.state_dict(), "head": [[1, 2]]},
                {**diag.state_dict(), "gates": {}}):
        with pytest.raises(ValueError, match="malformed diagnosis state"):
            diag.load_state_dict(bad)
    assert diag.windows() == before


def test_lr_too_high_not_judged_when_the_windows_do_not_start_at_step_1() -> None:
    # Resumed from a checkpoint without diagnosis state: a converged run's noise is no explosion.
    losses = noisy_flat(50, 0.02) + noisy_flat(150, 0.04, seed=1)  # a converged run's noise, rescaled
    assert lr_too_high(windows_of(losses)) is not None  # the same windows from step 1 would fire
    assert lr_too_high(windows_of(losses, first_step=3098)) is None
