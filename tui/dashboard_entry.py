"""Where the CLI hands a run to the live dashboard.

The dashboard (tuitrain.tui.app) is built separately; until it is installed
this falls back to headless output, saying so once on stderr.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuitrain.tui.cli import PreparedRun, SignalRelay


def run_dashboard(run: "PreparedRun", relay: "SignalRelay") -> int:
    if importlib.util.find_spec("tuitrain.tui.app") is None:
        from tuitrain.tui.headless import run_headless

        print("tuitrain: the live dashboard is not part of this build yet; showing plain text output",
              file=sys.stderr)
        return run_headless(run, relay)
    from tuitrain.tui.app import run_app

    return run_app(run, relay)
