"""Plain-text reporting for runs without a terminal (nohup, CI, pipes).

The trainer runs in the main thread and calls the reporter for each event;
it prints one line per epoch and the notable interventions, never per step.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from tuitrain.engine import events as ev
from tuitrain.engine.commands import Stop, clean_text
from tuitrain.tui.text import final_lines, size_text

#: The longest line the reporter prints (anything longer is cut, marked with an ellipsis).
MAX_LINE_CHARS = 2000

if TYPE_CHECKING:
    from tuitrain.tui.run_process import PreparedRun, SignalRelay


class HeadlessReporter:
    """Formats engine events as lines; stops printing (not training) if the output goes away."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        # Looked up now, not at import: whoever runs us may have redirected them.
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.metric = "acc"
        self._epoch_started = time.perf_counter()
        self._epoch_step = 0
        self._paused_at: float | None = None
        self._paused = 0.0
        self.run_dir = "RUN_DIR"
        self.commands: Any = None
        """The run's CommandQueue, once it is built (run_headless sets it)."""
        self.steerable = False
        """A control socket serves the run: `tuitrain watch` can steer it."""

    def __call__(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def _print(self, text: str, *, err: bool = False) -> None:
        """One line, always: text from a watcher or a preset (a stop reason, an error message) could
        otherwise carry newlines and terminal escape sequences."""
        stream = self.err if err else self.out
        try:
            print(clean_text(text, MAX_LINE_CHARS), file=stream, flush=True)
        except (OSError, ValueError):  # closed pipe or file: keep training regardless
            pass

    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        self.metric = e.metric
        self._epoch_started = time.perf_counter()
        self._epoch_step = e.step
        verb = f"resuming at step {e.step} (epoch {e.epoch + 1})" if e.resumed else "training"
        amp = "" if e.amp == "off" else f" | amp {e.amp}"
        self._print(f"tuitrain: {verb} {e.preset} on {e.device_name}{amp} | {e.train_size:,} train / "
                    f"{e.val_size:,} val | {e.steps_per_epoch} steps/epoch x {e.config['epochs']} epochs | "
                    f"{e.parameters:,} parameters")
        if e.world_size > 1:
            per_step = e.config["batch_size"] * e.world_size * e.config.get("accumulate", 1)
            self._print(f"group: {e.world_size} ranks (torchrun) | each trains on its own shard | batch "
                        f"{e.config['batch_size']} per rank x {e.world_size} ranks"
                        + (f" x {e.config['accumulate']} accumulated" if e.config.get("accumulate", 1) > 1 else "")
                        + f" = {per_step:,} samples per step")
        self._print(f"run dir: {e.run_dir}")
        self.run_dir = e.run_dir

    def _on_SchedulePreview(self, e: ev.SchedulePreview) -> None:
        if e.step == self._epoch_step:  # computing a long plan is not training time
            self._epoch_started = time.perf_counter()

    def _on_EvalDone(self, e: ev.EvalDone) -> None:
        if not e.epoch_end:
            self._print(f"eval    step {e.step} | val {e.val_loss:.4f} | {e.metric} {e.val_metric:.4f}")
            return
        now = time.perf_counter()
        elapsed = max(now - self._epoch_started - self._paused, 1e-9)
        rate = (e.step - self._epoch_step) / elapsed
        self._epoch_started, self._epoch_step, self._paused = now, e.step, 0.0
        train = "   n/a" if e.train_loss is None else f"{e.train_loss:.4f}"
        best = " *" if e.improved else ""
        extras = "".join(f" | {k} {v:.4g}" for k, v in e.extras.items() if k.startswith("val_") and v is not None)
        self._print(f"epoch {e.epoch:>3} | lr {e.lr:.2e} | train {train} | val {e.val_loss:.4f} | "
                    f"{e.metric} {e.val_metric:.4f}{extras} | {rate:,.0f} steps/s{best}")

    def _on_Hint(self, e: ev.Hint) -> None:
        remedy = e.remedy.replace("(press l)", "(tuitrain watch, then l)")  # no keys in headless mode
        self._print(f"hint: {e.message} ({e.evidence}); {remedy}", err=e.severity == "warning")

    def _on_Sample(self, e: ev.Sample) -> None:
        self._print(f"sample  epoch {e.epoch}: {e.text!r}")

    def _on_CheckpointFailed(self, e: ev.CheckpointFailed) -> None:
        self._print(f"warning: could not save {e.path}: {e.error} ({e.outcome})", err=True)

    def _on_WriteFailed(self, e: ev.WriteFailed) -> None:
        self._print(f"warning: cannot write {e.path}: {e.error} (training goes on; the records wait in memory "
                    "and are written once the disk takes them)", err=True)

    def _on_CheckpointSaved(self, e: ev.CheckpointSaved) -> None:
        if e.reason in ("manual", "stop", "interrupt"):
            self._print(f"saved {e.path} ({size_text(e.bytes)})")

    def _on_NonFinite(self, e: ev.NonFinite) -> None:
        what = {"stop": "stopping", "pause": "pausing", "skip": f"skipped {e.count} update(s)"}[e.action]
        self._print(f"warning: non-finite loss at step {e.step}; {what}", err=True)
        if e.action == "pause":
            self._paused_on_nan(e)

    def _paused_on_nan(self, e: ev.NonFinite) -> None:
        """--on-nan pause with no keys to press: say how to steer the run, or stop if nothing can."""
        where = ("nothing to roll back to (no checkpoint yet)" if e.rolled_back_to is None
                 else f"rolled back to step {e.rolled_back_to}")
        if not self.steerable:
            self._print(f"paused on a non-finite loss, {where}; no control socket, so nothing can steer this "
                        "run: stopping", err=True)
            if self.commands is not None:
                self.commands.put(Stop(reason="--on-nan pause, headless, with no control socket to steer it"))
            return
        import os
        self._print(f"paused on a non-finite loss, {where}; the run waits: tuitrain watch {self.run_dir} "
                    f"(l lowers the LR, p resumes, x stops), or stop it: kill -INT {os.getpid()}", err=True)

    def _on_Paused(self, e: ev.Paused) -> None:
        self._paused_at = time.perf_counter()
        self._print(f"paused at step {e.step}")

    def _on_Resumed(self, e: ev.Resumed) -> None:
        if self._paused_at is not None:
            self._paused += time.perf_counter() - self._paused_at
            self._paused_at = None
        self._print(f"resumed at step {e.step}")

    def _on_LRChanged(self, e: ev.LRChanged) -> None:
        self._print(f"lr {e.old_lr:.2e} -> {e.new_lr:.2e} at step {e.step}")

    def _on_CommandRejected(self, e: ev.CommandRejected) -> None:
        self._print(f"{e.command} rejected: {e.reason}", err=True)

    def _on_EarlyStop(self, e: ev.EarlyStop) -> None:
        self._print(f"early stop after epoch {e.epoch}: no improvement for {e.patience} epochs "
                    f"(best val {e.best_val_loss:.4f} at epoch {e.best_epoch})")

    def _on_Stopped(self, e: ev.Stopped) -> None:
        self._print(f"stopping at step {e.step}: {e.reason}")

    def _on_RunFailed(self, e: ev.RunFailed) -> None:
        pass  # bounded: RunEnded prints the error in one line; the traceback is in error.txt

    def _on_RunEnded(self, e: ev.RunEnded) -> None:
        for text, err in final_lines(e, self.metric):
            self._print(text, err=err)


def run_headless(run: "PreparedRun", relay: "SignalRelay", on_started: Callable[[], None] | None = None) -> int:
    """Train in this thread, printing lines; `on_started` runs once the run serves its socket, before step 1."""
    from tuitrain.engine.rundir import exit_status

    # The reporter hears every event as a listener; nobody reads the EventBuffer here, so it keeps
    # nothing (a full one holds 10,000 events: over a GB of step batches in a long fast run).
    reporter = HeadlessReporter()
    trainer = run.start(relay, listeners=[reporter], events=ev.EventBuffer(maxlen=0),
                        boundary=run.for_watchers)
    if isinstance(trainer, int):
        return trainer
    reporter.commands, reporter.steerable = trainer.commands, run.control is not None
    if on_started is not None:
        on_started()
    try:
        result = trainer.run()
        return exit_status(result.status, result.signal)
    finally:
        run.close()  # watchers see EOF; the socket file goes
