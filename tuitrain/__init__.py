"""tuitrain: train a PyTorch model and watch and steer the run from the terminal.

From your own loop::

    import tuitrain
    run = tuitrain.attach(model=model, optimizer=opt, scheduler=sched, total_steps=n)
    ...  run.step(loss=loss) after each optimizer step, run.evaluate(val_loss=v, val_acc=a) ...
    run.close()

Names resolve on first use, so `import tuitrain` loads neither torch nor the dashboard
(the viewer imports tuitrain.tui without torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["attach", "Run", "integrations"]


def __getattr__(name: str) -> Any:
    if name in ("attach", "Run"):
        from tuitrain.engine import attach as module

        return getattr(module, name)
    if name == "integrations":
        import importlib

        return importlib.import_module("tuitrain.integrations")
    raise AttributeError(f"module 'tuitrain' has no attribute {name!r}")
