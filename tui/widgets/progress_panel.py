"""Epoch and step progress, speed, best validation loss, patience and the current LR."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from tuitrain.tui.state import DashboardState, fmt_extra
from tuitrain.tui.widgets.text_panel import TextPanel


class ProgressPanel(TextPanel):
    COMPONENT_CLASSES = {"progress-panel--bar", "progress-panel--done"}

    def show(self, state: DashboardState) -> None:
        epochs = max(1, state.epochs)
        epoch = min(state.epoch, epochs) if state.epochs > 0 or not state.own_loop else state.epoch
        finished_epoch = state.epoch_step >= state.steps_per_epoch
        done_epochs = min(epochs, epoch - 1 + (1 if finished_epoch else 0))
        best = "--" if state.best_val_loss is None else f"{state.best_val_loss:.4f} (epoch {state.best_epoch})"
        patience = "off" if not state.patience else f"{state.patience_used}/{state.patience}"
        lr = "--" if state.lr is None else f"{state.lr:.3e}"
        speed = f"{state.steps_per_sec:,.0f} steps/s"
        if not state.own_loop:  # a user's loop does not say its batch size
            speed += f" · {state.samples_per_sec:,.0f} samples/s"
        if not state.running:
            speed += " (run average)"
        lines = (
            f"epoch {epoch}/{epochs}" if state.epochs > 0 or not state.own_loop else f"epoch {epoch}",
            f"step {state.epoch_step:,}/{state.steps_per_epoch:,} · total {total_text(state)}",
            speed,
            f"best val loss {best}",
            f"patience {patience} · lr {lr}",
        )
        if state.extras:
            # The preset's own numbers (charlm: perplexity) next to the losses they come from.
            extras = " · ".join(f"{k.replace('_', ' ')} {fmt_extra(v)}" for k, v in state.extras.items())
            lines = lines[:4] + (extras,) + lines[4:]
        key = (lines, done_epochs, self.size)
        if key == self._key:
            return
        width = max(10, self.size.width)
        bar = self.get_component_rich_style("progress-panel--bar", partial=True)
        done = self.get_component_rich_style("progress-panel--done", partial=True)
        if self.size.height < COMPACT_BELOW:
            self.set_content(_compact(state, lines, epochs, done_epochs, width, bar, done), key)
            return
        text = Text(lines[0] + "\n")
        text.append_text(_bar(epochs, done_epochs, width, bar, done))
        text.append("\n" + lines[1] + "\n")
        text.append_text(_bar(state.steps_per_epoch, state.epoch_step, width, bar, done))
        text.append("\n" + "\n".join(lines[2:]))
        self.set_content(text, key)


#: Fewer rows than this (80x24): the same facts in 3 lines, each bar next to its counter.
COMPACT_BELOW = 7


def _compact(state: DashboardState, lines: tuple[str, ...], epochs: int, done_epochs: int, width: int,
             rest: Style, done: Style) -> Text:
    epoch_text = f"{lines[0]} "
    step_text = f"  step {state.epoch_step:,}/{state.steps_per_epoch:,} "
    bar_width = max(4, (width - len(epoch_text) - len(step_text)) // 2)
    text = Text(epoch_text)
    text.append_text(_bar(epochs, done_epochs, bar_width, rest, done))
    text.append(step_text)
    text.append_text(_bar(state.steps_per_epoch, state.epoch_step, bar_width, rest, done))
    text.append(f"\ntotal {total_text(state)} · {lines[2]}\n")
    text.append(" · ".join(lines[3:]))
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def total_text(state: DashboardState) -> str:
    """Steps so far, out of the planned total when the run said it."""
    return f"{state.step:,}/{state.total_steps:,}" if state.total_known else f"{state.step:,}"


def _bar(total: int, completed: int, width: int, rest: Style, done: Style) -> Text:
    filled = round(width * min(1.0, completed / max(1, total)))
    return Text.assemble(("━" * filled, done), ("━" * (width - filled), rest))
