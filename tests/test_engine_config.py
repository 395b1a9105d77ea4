"""RunConfig validation: a bad value is a ConfigError with one line naming the flag."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuitrain.engine.config import ConfigError, RunConfig

WRONG_TYPES = st.one_of(
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.just(b"1"),
    st.just(1 + 2j),
)
NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def assert_config_error(flag: str, **values) -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig(**values)
    message = str(info.value)
    assert message and len(message.splitlines()) == 1, repr(message)
    assert f"--{flag}" in message, message
    return message


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(max_value=0.0, allow_nan=False), st.integers(max_value=0), NOT_FINITE, WRONG_TYPES))
def test_bad_learning_rates_are_config_errors(value):
    assert_config_error("lr", lr=value)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(), NOT_FINITE, WRONG_TYPES))
def test_bad_batch_sizes_are_config_errors(value):
    assert_config_error("batch-size", batch_size=value)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(), NOT_FINITE, WRONG_TYPES))
def test_bad_epoch_counts_are_config_errors(value):
    assert_config_error("epochs", epochs=value)


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(min_value=1e-12, max_value=1e3), batch_size=st.integers(1, 10**6),
       epochs=st.integers(1, 10**4))
def test_good_values_are_kept_and_survive_a_round_trip(lr, batch_size, epochs):
    cfg = RunConfig(lr=lr, batch_size=batch_size, epochs=epochs)
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (lr, batch_size, epochs)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_an_integer_learning_rate_becomes_a_float():
    cfg = RunConfig(lr=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize("values, flag", [
    (dict(scheduler="linear"), "scheduler"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(on_nan="ignore"), "on-nan"),
    (dict(accumulate=0), "accumulate"),
    (dict(grad_clip=-1.0), "grad-clip"),
    (dict(patience=-1), "patience"),
    (dict(max_steps=-1), "max-steps"),
    (dict(seed=-1), "seed"),
    (dict(nesterov=True, optimizer="adam"), "nesterov"),
    (dict(device=""), "device"),
    (dict(log_interval=0), "log-interval"),
])
def test_other_bad_values_name_their_flag(values, flag):
    assert_config_error(flag, **values)


def test_zero_patience_and_zero_clip_mean_off():
    cfg = RunConfig(patience=0, grad_clip=0.0)
    assert cfg.patience is None and cfg.grad_clip is None


def test_unknown_keys_in_a_saved_config_are_refused():
    data = RunConfig().to_dict()
    data["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig.from_dict(data)


@pytest.mark.parametrize("values", [
    pytest.param(dict(lr=10**400), id="lr-huge-int"),
    pytest.param(dict(warmup="abc"), id="warmup-str"),
    pytest.param(dict(warmup=None), id="warmup-none"),
    pytest.param(dict(plateau_factor="abc"), id="plateau_factor-str"),
])
def test_values_that_crash_validation_are_config_errors(values):
    with pytest.raises(ConfigError):
        RunConfig(**values)


def test_zero_turns_limits_off():
    cfg = RunConfig(max_steps=0, patience=0, grad_clip=0.0)
    assert (cfg.max_steps, cfg.patience, cfg.grad_clip) == (None, None, None)
