"""Every key of the dashboard, written once.

The bindings, the footer labels, the help screen and the command palette are
all generated from KEYS. Which keys a viewer offers depends on its run source
(tui/source.py): `q` either stops the run and quits (a run this dashboard
started) or only closes the viewer (`tuitrain watch`); `d` exists only where
the run can go on without this viewer.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

#: The footer shows [ and ] as one entry: "[] Smooth".
SMOOTHING = Binding.Group("Smooth", compact=True)


@dataclass(frozen=True)
class Key:
    key: str
    """Textual's key name ("left_square_bracket")."""
    shown: str
    """How the help screen writes it ("[ / ]")."""
    action: str
    label: str
    """The footer's word."""
    help: str
    """The help screen's line."""
    id: str
    palette: tuple[str, str] | None = None
    """(title, help) in the command palette; None keeps it out of the palette."""
    steering: bool = False
    """It commands the run: greyed out (and out of the palette) when the run cannot be steered."""
    show: bool = True
    """In the footer."""
    group: Binding.Group | None = None
    priority: bool = False


KEYS: tuple[Key, ...] = (
    Key("p", "p", "toggle_pause", "Pause", "pause / resume training (the system panel keeps updating)", "pause",
        ("Pause / resume training", "p: pause or resume at the next step"), steering=True),
    # The same key while PAUSED: the footer says what p does now (check_action shows one of the two).
    Key("p", "", "resume", "Resume", "", "resume", steering=True),
    Key("l", "l", "set_lr", "LR", "set the learning rate (a multiplier on the schedule from now on)", "set-lr",
        ("Set learning rate", "l: a new LR from now on (scales the schedule)"), steering=True),
    Key("s", "s", "save", "Save", "save a checkpoint now (checkpoints/step-<N>.pt)", "save",
        ("Save checkpoint now", "s: write checkpoints/step-<N>.pt"), steering=True),
    Key("x", "x", "stop", "Stop", "stop early: the run finishes the step, evaluates, saves and ends; the "
        "dashboard stays open", "stop", ("Stop early", "x: finish the step, evaluate, save"), steering=True),
    Key("d", "d", "detach", "Detach", "detach: return the shell; the run keeps training in the background "
        "(tuitrain watch RUN_DIR re-attaches)", "detach",
        ("Detach", "d: keep training in the background and return the shell"), steering=True),
    Key("q", "q", "quit_run", "Quit", "quit (stops and saves first while training)", "quit",
        ("Quit tuitrain", "q: stops and saves first while training")),
    # q where leaving never stops the run (tuitrain watch): only one of the two q's is offered.
    Key("q", "q", "leave", "Detach", "detach: close this viewer; the run keeps training (tuitrain watch again "
        "any time)", "leave", ("Detach (close the viewer)", "q: the run keeps training")),
    Key("b", "b", "toggle_boundary", "Boundary",
        "decision boundary on / off: the predicted class over the input (2-D presets)", "boundary",
        ("Toggle decision boundary", "b: the model's predicted class over the input plane")),
    Key("h", "h", "toggle_health", "Health", "layer health in the middle row: gradient norm, per-layer table",
        "health", ("Toggle layer health", "h: gradient norm and per-layer norms instead of LR and system")),
    Key("y", "y", "toggle_log", "Log", "log scale for the loss", "log-scale",
        ("Toggle log scale", "y: log scale for the loss plot")),
    Key("question_mark", "?", "help", "Help", "this help", "help", ("Keys", "?: every key")),
    # Hidden from the footer below 100 columns (app.tcss: it would not fit); in the help and the palette.
    Key("left_square_bracket", "[ / ]", "smoothing(-0.1)", "Smooth-", "less / more smoothing of the loss curve",
        "smooth-less", ("Less smoothing", "[: smooth the loss curve less"), group=SMOOTHING),
    Key("right_square_bracket", "", "smoothing(0.1)", "Smooth+", "", "smooth-more",
        ("More smoothing", "]: smooth the loss curve more"), group=SMOOTHING),
    Key("ctrl+p", "ctrl+p", "command_palette", "", "command palette: every action by name", "palette",
        show=False),
    # ctrl+c closes a dialog (help, LR, palette), wherever the focus is: a second way out where Esc
    # is unreliable (GNU screen glues a lone Esc to the next key); on the dashboard it points at q.
    Key("ctrl+c", "", "help_quit", "", "", "close-or-help-quit", show=False, priority=True),
)

#: Actions that steer a live run; greyed out once it has ended or when the source cannot steer.
STEERING = tuple(k.action for k in KEYS if k.steering)


def action_name(action: str) -> str:
    """"smoothing(0.1)" -> "smoothing": the name check_action is asked about."""
    return action.split("(", 1)[0]


def bindings() -> list[Binding]:
    """The App's BINDINGS (ctrl+p is Textual's own palette binding, not repeated here)."""
    return [Binding(k.key, k.action, k.label, show=k.show, id=k.id, group=k.group, priority=k.priority,
                    tooltip=k.help) for k in KEYS if k.key != "ctrl+p"]


def help_rows(offered: "set[str] | frozenset[str]") -> list[tuple[str, str]]:
    """(key, text) lines for the help screen: the keys whose action is offered here."""
    return [(k.shown, k.help) for k in KEYS if k.shown and k.help and action_name(k.action) in offered]


def palette_entries(offered: "set[str] | frozenset[str]") -> list[tuple[Key, str, str]]:
    """(key, title, help) for the command palette: the offered keys that have an entry."""
    return [(k, *k.palette) for k in KEYS if k.palette is not None and action_name(k.action) in offered]
