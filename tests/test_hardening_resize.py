"""The terminal is resized quickly while training: no crash, the layout settles.

In a real terminal (tmux resize-window sends SIGWINCH to the dashboard; 30 times, 100 with
TUITRAIN_SLOW=1) and under the Pilot (30 times). Sizes go from far too small (12x4) to very large (250x80).
"""

from __future__ import annotations

import random
import re
import shutil
import sys
from pathlib import Path

import pytest

from cli_helpers import read_json

from conftest import SLOW

from tuitrain.engine import checkpoint as ckpt

#: The fixed sizes below and random ones after them; TUITRAIN_SLOW=1 resizes 100 times.
RESIZES = 100 if SLOW else 30


def _sizes(seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    fixed = [(12, 4), (250, 80), (80, 24), (1, 1), (40, 10), (79, 19), (100, 30)]
    return fixed + [(rng.randint(10, 250), rng.randint(3, 80)) for _ in range(RESIZES - len(fixed))]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.skipif(sys.platform != "linux", reason="a real terminal")
def test_a_resize_storm_in_a_real_terminal_settles_and_q_exits_0(tmp_path: Path) -> None:
    from test_dashboard_tmux import DEADLINE, START_DEADLINE, Tmux, assert_terminal_restored, script, wait_file

    R = tmp_path / "R"
    tmux = Tmux(tmp_path, script(tmp_path, "--preset", "circles", "--epochs", "400", "--run-dir", "R",
                                 pidfile=True))
    try:
        tmux.wait_text("RUNNING", START_DEADLINE)
        tmux.wait_screen(lambda s: re.search(r"total [1-9][\d,]*/", s), "steps on screen")
        pid = int((tmp_path / "pid").read_text())
        for w, h in _sizes(1):
            tmux._tmux("resize-window", "-t", tmux.session, "-x", str(max(w, 2)), "-y", str(max(h, 2)))
        assert Path(f"/proc/{pid}").exists(), "the dashboard died in the resize storm"
        tmux._tmux("resize-window", "-t", tmux.session, "-x", "120", "-y", "40")
        assert tmux.pane_flag("pane_width") == "120" and tmux.pane_flag("pane_height") == "40"

        def settled(screen: str) -> bool:
            lines = screen.splitlines()
            return (len(lines) >= 39 and " RUNNING " in lines[0] and "tuitrain" in lines[0]
                    and "Quit" in lines[-1] and re.search(r"total [1-9][\d,]*/", screen) is not None)

        first = tmux.wait_screen(settled, "the layout to settle at 120x40 with the status bar and footer")
        step = int(re.search(r"total ([\d,]+)/", first).group(1).replace(",", ""))
        tmux.wait_screen(lambda s: settled(s) and int(re.search(r"total ([\d,]+)/", s).group(1).replace(",", ""))
                         > step, "training to go on after the storm")
        tmux.keys("q")
        assert wait_file(tmp_path / "exit", DEADLINE, tmux).strip() == "EXIT=0"
        assert_terminal_restored(tmux, "EXIT=0")
    finally:
        tmux.kill()
    summary = read_json(R / "summary.json")
    assert summary["status"] == "stopped"
    assert ckpt.load(R / "checkpoints" / "latest.pt")["step"] == summary["steps"]


def test_a_resize_storm_under_the_pilot_keeps_training_and_steering(tmp_path: Path) -> None:
    from dashboard_helpers import (dashboard, make_trainer, run_async, status_text, ticks, until, wait_exit,
                                   wait_running)

    R = tmp_path / "run"

    async def body() -> None:
        trainer = make_trainer(tmp_path)
        async with dashboard(trainer) as (app, pilot, sampler):
            await wait_running(pilot, app, R)
            for w, h in _sizes(2)[:30]:  # Pilot settles each (slow): 30 here
                await pilot.resize_terminal(w, h)
            await pilot.resize_terminal(120, 40)
            await ticks(pilot, sampler, 3)
            assert app.is_running and app.size == (120, 40)
            assert " RUNNING " in status_text(app)
            step = app.state.step
            await until(pilot, lambda: app.state.step > step + 5, "training to go on after the storm")
            # Keys still steer the run: pause answers.
            await pilot.press("p")
            await until(pilot, lambda: app.state.status == "PAUSED", "PAUSED after the storm")
            await pilot.press("q")
            await wait_exit(pilot, app)
        assert app.return_code == 0

    run_async(body)
    assert read_json(R / "summary.json")["status"] == "stopped"
