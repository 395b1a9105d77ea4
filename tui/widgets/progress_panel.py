"""Epoch and step progress, speed, best validation loss, patience and the current LR."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar, Static

from tuitrain.tui.state import DashboardState


class ProgressPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Label("epoch", id="epoch-label")
        yield ProgressBar(id="epoch-bar", show_eta=False)
        yield Label("step", id="step-label")
        yield ProgressBar(id="step-bar", show_eta=False)
        yield Static("", id="progress-stats")

    def show(self, state: DashboardState) -> None:
        epochs = max(1, state.epochs)
        done_epochs = min(epochs, state.epoch - 1 + (1 if not state.running and state.epoch_step >= state.steps_per_epoch else 0))
        self.query_one("#epoch-label", Label).update(f"epoch {min(state.epoch, epochs)}/{epochs}")
        self.query_one("#epoch-bar", ProgressBar).update(total=epochs, progress=done_epochs)
        self.query_one("#step-label", Label).update(
            f"step {state.epoch_step}/{state.steps_per_epoch} · total {state.step:,}/{state.total_steps:,}")
        self.query_one("#step-bar", ProgressBar).update(total=state.steps_per_epoch, progress=state.epoch_step)
        best = "--" if state.best_val_loss is None else f"{state.best_val_loss:.4f} (epoch {state.best_epoch})"
        patience = "off" if not state.patience else f"{state.patience_used}/{state.patience}"
        lr = "--" if state.lr is None else f"{state.lr:.3e}"
        self.query_one("#progress-stats", Static).update(
            f"{state.steps_per_sec:,.0f} steps/s · {state.samples_per_sec:,.0f} samples/s\n"
            f"best val loss {best}\n"
            f"patience {patience} · lr {lr}")
