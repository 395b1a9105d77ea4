"""One rule for a valid learning rate: the `l` dialog and the engine accept and refuse the same values,
with the same words (engine/commands.py check_lr)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import classifier_preset, make_cfg, run
from tuitrain.engine import events as ev
from tuitrain.engine.commands import LR_RULE, SetLR, check_lr, valid_lr
from tuitrain.tui.screens.lr_dialog import parse_lr

#: What a user might type, and the number the run would be sent.
TYPED = [("0", 0.0), ("-0.001", -0.001), ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
         ("1e999", math.inf), ("1e-12", 1e-12), ("10", 10.0), ("0.02", 0.02)]
GOOD = {"1e-12", "10", "0.02"}


def dialog_answer(text: str) -> str | None:
    """None when the dialog lets the value through, else the error it shows."""
    try:
        parse_lr(text)
    except ValueError as exc:
        return str(exc)
    return None


def test_the_dialog_and_the_engine_accept_and_refuse_the_same_values(tmp_path: Path) -> None:
    plan = {i + 1: [SetLR(value)] for i, (_, value) in enumerate(TYPED)}  # one command a step
    r = run(make_cfg(epochs=2, log_interval=1e-6), classifier_preset(), tmp_path / "run", at=plan)
    answers = [e for e in r.events if isinstance(e, ev.LRChanged)
               or (isinstance(e, ev.CommandRejected) and e.command == "set_lr")]
    assert len(answers) == len(TYPED)  # every command answered, in order
    for (text, _), answer in zip(TYPED, answers):
        shown = dialog_answer(text)
        if text in GOOD:
            assert shown is None and isinstance(answer, ev.LRChanged), (text, answer)
            assert answer.new_lr == float(text)
        else:
            assert isinstance(answer, ev.CommandRejected), (text, answer)
            assert shown == answer.reason and shown.startswith(LR_RULE), (text, shown, answer.reason)


@pytest.mark.parametrize("value", [True, False, "0.1", None, [0.1], 10**400, -(10**400)])
def test_what_is_no_number_is_refused_in_words_never_with_an_exception(value: object) -> None:
    with pytest.raises(ValueError, match=LR_RULE):
        check_lr(value)
    assert not valid_lr(value)


def test_an_integer_too_big_for_a_float_is_rejected_by_the_engine_not_a_crash(tmp_path: Path) -> None:
    r = run(make_cfg(epochs=1, log_interval=1e-6), classifier_preset(), tmp_path / "run",
            at={1: [SetLR(10**400)]})  # type: ignore[arg-type]
    assert r.result.status == "finished"
    [rejected] = [e for e in r.events if isinstance(e, ev.CommandRejected)]
    assert rejected.reason == f"{LR_RULE}, got an integer of 401 digits"


def test_the_dialog_still_says_what_is_not_a_number() -> None:
    assert dialog_answer("") == "type a learning rate, e.g. 0.001 or 1e-3"
    assert dialog_answer("abc") == "not a number: 'abc'"
    assert check_lr(1) == 1.0 and isinstance(check_lr(1), float)
