"""The LR dialog fed generated input in a live dashboard: only positive finite numbers get through.

parse_lr itself is checked by hypothesis in test_dashboard_keys.py; here the
same kind of input is typed into the real dialog while the engine trains, and
the engine's answers prove a refused value never reached the run.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from conftest import SLOW
from dashboard_helpers import (dashboard, events_named, long_cfg, make_trainer, run_async, step_records, until,
                               wait_running)
from tuitrain.tui.screens.lr_dialog import LRDialog

PIECES = ["", " ", "0", "1", "5", "9", ".", "-", "+", "e", "E", "x", "nan", "inf", "_", ",", "1e-3", "e999",
          "0x1", "\u0661", "\u00bd", "--", "2", "3e-2", "  "]


def _oracle(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _inputs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = ["0.02", "-0.01", "0", "nan", "1e-400", "1e400", "3e-2", " 0.04 ", "+.5e-1", "0.0"]
    while len(texts) < n:
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 4)))[:20]
        value = _oracle(text)
        if value is None or value <= 0.1:  # a valid but large LR ("99") would make the run diverge
            texts.append(text)
    return texts


def test_generated_lr_input_in_the_live_dialog_only_valid_values_reach_the_run(tmp_path: Path) -> None:
    R = tmp_path / "run"
    texts = _inputs(40 if SLOW else 12, seed=5)  # the 10 fixed inputs and generated ones; 40 with TUITRAIN_SLOW=1
    accepted: list[float] = []

    async def body() -> None:
        # Accepted LRs stay small (see _inputs); skip mode besides, so a bad update cannot end the run.
        trainer = make_trainer(tmp_path, cfg=long_cfg(on_nan="skip"))
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            for text in texts:
                await pilot.press("l")
                await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
                dialog = app.screen
                field = dialog.query_one("#lr-input")
                message = dialog.query_one("#lr-message")
                field.value = text
                await pilot.press("enter")
                expected = _oracle(text)
                if expected is None:
                    await until(pilot, lambda: message.has_class("-error"), f"an error for {text!r}")
                    assert app.screen is dialog
                    await pilot.press("escape")
                    await until(pilot, lambda: not isinstance(app.screen, LRDialog), "Esc")
                else:
                    accepted.append(expected)
                    await until(pilot, lambda: not isinstance(app.screen, LRDialog) or message.has_class("-confirm"),
                                f"{text!r} accepted (or a question first: more than 100x the current LR)")
                    if isinstance(app.screen, LRDialog):
                        await pilot.press("enter")
                    await until(pilot, lambda: not isinstance(app.screen, LRDialog), f"{text!r} accepted")
                    await until(pilot, lambda: len(events_named(R, "lr_changed")) == len(accepted),
                                f"the engine's answer to {text!r}")
                assert app.state.status == "RUNNING"
            changes = events_named(R, "lr_changed")
            assert [c["new_lr"] for c in changes] == accepted
            assert events_named(R, "rejected") == []
            last = changes[-1]["step"]
            await until(pilot, lambda: len([r for r in step_records(R) if r["step"] > last]) >= 3,
                        "steps after the last change")
            after = [r for r in step_records(R) if r["step"] > last]
            assert all(r["lr"] == pytest.approx(accepted[-1], rel=1e-12) for r in after)

    run_async(body)
    assert len(accepted) >= 3 and len(texts) - len(accepted) >= len(texts) // 2
    print(f"\nLR dialog: {len(texts)} inputs typed, {len(accepted)} accepted, {len(texts) - len(accepted)} refused")
