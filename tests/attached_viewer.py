"""A dashboard process for the tests: `tuitrain`'s attached shape (tui/launch.py run_attached), headless.

    python tests/attached_viewer.py MODE RUN_DIR [tuitrain args ...]

The real TuitrainApp over a real child run, without a terminal (Textual's
headless mode, driven by an auto-pilot). MODE says what the "user" does once
the dashboard shows a few steps:

  quit    press q (stop, save, exit with the run's status)
  detach  press d (the run keeps training; the shell returns)
  hold    nothing: wait to be signalled or killed
  crash   the dashboard's own code raises

It prints "VIEWER {json}" at the end: the exit status, whether torch was
ever imported here, and whether libtorch is mapped into this process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def main() -> int:
    mode, run_dir, *args = sys.argv[1:]
    from textual.app import App

    from tuitrain.tui import launch
    from tuitrain.tui.app import TuitrainApp

    seen: dict[str, float] = {}

    async def pilot_fn(pilot) -> None:
        app = pilot.app
        deadline = time.monotonic() + 60
        while not (app.state.step >= 3 and app.state.status == "RUNNING"):
            if time.monotonic() > deadline or not app.is_running:
                return
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait with a deadline
        seen["shown_step"] = app.state.step
        print("VIEWER-SHOWN", flush=True)
        if mode == "quit":
            await pilot.press("q")
        elif mode == "detach":
            seen["pressed"] = time.monotonic()
            await pilot.press("d")
        elif mode == "crash":
            app.boom = True

    import tuitrain.tui.app as app_module

    class Viewer(TuitrainApp):
        CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))  # a subclass looks next to its own file
        boom = False

        def drain(self) -> None:
            super().drain()
            if self.boom:
                raise RuntimeError("a bug in the dashboard")

        def run(self, **kwargs):  # type: ignore[override]
            return App.run(self, headless=True, size=(120, 40), auto_pilot=pilot_fn)

    started = time.monotonic()
    rc = launch.run_attached(launch.preset_child([*args, "--run-dir", run_dir]), make_app=Viewer)
    ended = time.monotonic()
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    report = {"rc": rc, "torch": "torch" in sys.modules, "libtorch": "libtorch" in maps,
              "shown_step": seen.get("shown_step"), "seconds": ended - started,
              "after_press": ended - seen["pressed"] if "pressed" in seen else None}
    print("VIEWER " + json.dumps(report), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
