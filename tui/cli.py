"""`tuitrain`: parse the command line, set up the run, pick dashboard or headless.

Exit status (DESIGN.md): 0 finished or stopped on purpose; 1 the run failed;
2 bad usage or input, reported in one line before any training; 128+signal
after SIGINT/SIGTERM/SIGHUP, each after saving a checkpoint.

`tuitrain run`, `watch`, `runs`, `export`, `plot` and `serve` are subcommands
(SUBCOMMANDS), recognised by the first word so that every `tuitrain --preset
...` command line parses exactly as before.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NoReturn, Sequence

# Before anything can import torch (which warns on every start where numpy is missing).
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

# Imported up front (standard library only): the run's signal handler must not
# import anything, since it can run in the middle of another import.
from tuitrain.tui.run_process import (  # noqa: E402
    Interrupted, SignalRelay, UsageError, lifeline_end, prepare)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


#: What SIGHUP (the terminal or SSH connection went away) does to a run in the foreground.
ON_HANGUP = ("save-exit", "detach")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + line
        raise UsageError(f"{message} (see tuitrain --help)")


_ASCII_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)",
                           re.IGNORECASE)
_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")


def _number(text: str) -> float:
    """A plain ASCII number: Python's float() also takes other scripts' digits and underscores."""
    try:
        if not _ASCII_NUMBER.fullmatch(text.strip()):
            raise ValueError
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    """Plain ASCII digits (int() also takes '٣' and '1_000')."""
    if not _ASCII_INTEGER.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(text)


def _threads(text: str) -> int:
    """--threads: at most the CPUs this process may use (more only makes torch slower)."""
    from tuitrain.engine.config import available_cpus

    value = _integer(text)
    cpus = available_cpus()
    if value > cpus:
        raise argparse.ArgumentTypeError(f"{value} is more than the {cpus} CPUs available here")
    return value


def _nproc(text: str) -> int:
    """--nproc-per-node: at least 1 and at most the CPUs here (each rank is a process that needs one)."""
    value = _integer(text)
    cpus = os.cpu_count() or 1
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    if value > cpus:
        raise argparse.ArgumentTypeError(f"{value} is more ranks than the {cpus} CPUs here (each rank is a process)")
    return value


def build_parser() -> argparse.ArgumentParser:
    from tuitrain.engine.config import AMP_DTYPES, ON_NAN, OPTIMIZERS, SCHEDULERS

    p = _Parser(
        prog="tuitrain",
        description="Train a PyTorch model and watch and steer the run from the terminal.",
        argument_default=argparse.SUPPRESS,
        epilog="Also: tuitrain run SCRIPT [ARGS ...] (your own training script, which calls "
               "tuitrain.attach(), with the dashboard attached), "
               "tuitrain watch [RUN_DIR ...] (open the dashboard on a run, live or finished), "
               "tuitrain runs [DIR] (a table of runs), "
               "tuitrain export RUN_DIR --tensorboard DIR | --csv FILE, "
               "tuitrain plot RUN_DIR ... -o curves.png, "
               "tuitrain serve [RUN_DIR] (the dashboard in a browser). "
               "Exit status: 0 finished or stopped, 1 run failed, 2 bad input, 128+N after signal N.",
    )
    what = p.add_argument_group("what to run")
    what.add_argument("--preset", metavar="SPEC",
                      help="built-in preset name, a path to your .py file, or package.module:attr")
    what.add_argument("--resume", metavar="PATH",
                      help="continue a run: its directory (from checkpoints/latest.pt) or a .pt file")
    what.add_argument("--list-presets", action="store_true", help="list the built-in presets and exit")
    what.add_argument("--headless", action="store_true",
                      help="plain text output (also chosen when stdout is not a terminal)")
    what.add_argument("--run-dir", metavar="DIR", help="where to write the run (default runs/<preset>-<time>)")
    what.add_argument("--detach", action="store_true",
                      help="train in the background (log in RUN_DIR/output.log); print the run directory and "
                           "return; then: tuitrain watch RUN_DIR")
    # How --detach starts its background run: headless, and computing the decision-boundary
    # frames that a watcher shows (a plain headless run skips them).
    what.add_argument("--for-watchers", action="store_true", help=argparse.SUPPRESS)
    what.add_argument("--in-process", action="store_true",
                      help="train in a thread of the dashboard's own process instead of a child process "
                           "(slower: the two share one interpreter; d then saves and restarts the run)")
    what.add_argument("--nproc-per-node", type=_nproc, metavar="N",
                      help="train on N ranks of this machine under torchrun (DDP; one GPU each on CUDA, gloo on "
                           "CPUs), watched and steered as one run")
    # How the dashboard starts its run: the child side of the lifeline (engine/lifeline.py).
    what.add_argument("--lifeline", type=_integer, help=argparse.SUPPRESS)
    what.add_argument("--on-hangup", choices=ON_HANGUP,
                      help="on SIGHUP (the terminal closed): save-exit saves and exits 129 (default); "
                           "detach saves and continues the run in the background")

    o = p.add_argument_group("overrides (defaults come from the preset)")
    o.add_argument("--epochs", type=_integer)
    o.add_argument("--lr", type=_number, help="learning rate (peak LR for onecycle/warmup-cosine)")
    o.add_argument("--batch-size", type=_integer)
    o.add_argument("--optimizer", choices=OPTIMIZERS)
    o.add_argument("--momentum", type=_number, help="SGD momentum")
    o.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    o.add_argument("--weight-decay", type=_number)
    o.add_argument("--scheduler", choices=SCHEDULERS)
    o.add_argument("--warmup", type=_number, help="warmup-cosine: fraction of steps (or steps if >= 1)")
    o.add_argument("--grad-clip", type=_number, help="clip the gradient norm to this (0: off)")
    o.add_argument("--accumulate", type=_integer, help="optimizer step every K batches")
    o.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="mixed precision (default: on for CUDA, off otherwise)")
    o.add_argument("--amp-dtype", choices=AMP_DTYPES)
    o.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    o.add_argument("--seed", type=_integer)
    o.add_argument("--patience", type=_integer, help="early stopping after N epochs without improvement (0: off)")
    o.add_argument("--max-steps", type=_integer, help="stop after this many optimizer steps")
    o.add_argument("--on-nan", choices=ON_NAN, help="what a non-finite loss does (default stop)")
    o.add_argument("--threads", type=_threads,
                   help="CPU threads for torch, at most the CPUs here (default: 1 for small models); more "
                        "threads than idle cores make every step wait for busy ones (several times slower), "
                        "so tuitrain warns")
    o.add_argument("--num-workers", type=_integer, help="DataLoader workers for non-tensor datasets")
    o.add_argument("--tensorboard", action=argparse.BooleanOptionalAction,
                   help="also write TensorBoard event files, live, into RUN_DIR/tensorboard/ "
                        "(needs pip install 'tuitrain[tensorboard]')")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The console script (argv None: the process's own command line, and it exits even if a
    preset left threads running), or a call with an argument list (tests)."""
    rc = _run(argv)
    if argv is None:
        if _viewer_only:
            _exit_now(rc)
        _exit_despite_stray_threads(rc)
    return rc


#: This process was only the dashboard of a run in another process (tui/launch.py): it holds no
#: work of its own, so it leaves without Python's teardown of Textual and its threads (d returns
#: the shell that much sooner). A rank of a torchrun group leaves the same way once its run has
#: ended: the interpreter's teardown of the process group's threads can abort the process
#: ("terminate called without an active exception", exit -6) after a run that finished well.
_viewer_only = False


def _exit_now(rc: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(rc)


#: Seconds a thread left running by the preset gets to finish after the run ended.
STRAY_THREAD_GRACE = 1.0


def _exit_despite_stray_threads(rc: int) -> None:
    """A non-daemon thread started by a preset would keep Python from ever exiting: end the process."""
    deadline = time.monotonic() + STRAY_THREAD_GRACE
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    strays = [t.name for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not strays:
        return
    try:
        print(f"tuitrain: warning: {len(strays)} thread(s) still running after the run ended "
              f"({', '.join(strays[:5])}); exiting anyway", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(rc)


def _run(argv: Sequence[str] | None) -> int:
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    # Installed first: a signal during the slow torch import or set-up ends
    # the process cleanly; once training runs, it becomes a Stop command.
    relay = SignalRelay().install()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), relay)
    except UsageError as exc:
        # One line, whatever a path in the message contains.
        text = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"tuitrain: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"tuitrain: {signal.Signals(exc.signum).name} before training started; nothing to save",
              file=sys.stderr)
        return 128 + exc.signum
    finally:
        relay.restore()
        _flush_or_drop_stdio()


def _flush_or_drop_stdio() -> None:
    """Flush stdout and stderr now; if the terminal is gone, point them at /dev/null.

    Otherwise Python's own flush at exit fails on the dead terminal and turns the
    exit status into 120, hiding the 129 a hangup ends with.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
            except (OSError, ValueError, AttributeError):
                pass


#: The first words that are subcommands, each the module (in tuitrain.tui) whose main(argv) runs it.
SUBCOMMANDS = {"run": "run_script", "watch": "watch", "runs": "runs_table",
               "export": "export", "plot": "plot", "serve": "serve"}


def _main(argv: list[str], relay: "SignalRelay") -> int:
    global _viewer_only
    if argv and argv[0] in SUBCOMMANDS:
        relay.restore()  # nothing to save here: a signal ends a watcher, a listing or an export the usual way
        if argv[0] == "run":
            _viewer_only = True  # the script is the run; this process only watches it
        module = importlib.import_module(f"tuitrain.tui.{SUBCOMMANDS[argv[0]]}")
        return module.main(argv[1:])
    args = vars(build_parser().parse_args(argv))
    if args.pop("list_presets", False):
        return _list_presets()
    detach = args.pop("detach", False)
    in_process = args.pop("in_process", False)
    lifeline = lifeline_end(args.pop("lifeline", None), relay)
    background = args.pop("for_watchers", False) or lifeline is not None
    relay.on_hangup = args.pop("on_hangup", "save-exit")
    # Textual draws on stderr: both streams must be the terminal for a dashboard.
    headless = args.pop("headless", False) or background or not (sys.stdout.isatty() and sys.stderr.isatty())
    preset_spec, resume = args.pop("preset", None), args.pop("resume", None)
    if preset_spec is None and resume is None:
        raise UsageError("nothing to run: give --preset NAME (see --list-presets) or --resume RUN_DIR")
    if in_process and (detach or headless):
        raise UsageError("--in-process is for the dashboard; it cannot be used with --detach or --headless")

    _answer_without_torch(preset_spec, resume)
    if args.get("tensorboard"):
        from tuitrain.tui.tensorboard_log import MISSING, available
        if not available():
            raise UsageError(f"--tensorboard: {MISSING}")
    from tuitrain.tui.group_member import group_env
    group = group_env()
    nproc = args.pop("nproc_per_node", None)
    if nproc is not None:
        if group is not None:
            raise UsageError("--nproc-per-node: this process is already one rank of a torchrun group")
        if in_process:
            raise UsageError("--in-process trains in the dashboard's own process; it cannot be used with "
                             "--nproc-per-node")
    if nproc is not None and nproc > 1 and (headless or lifeline is not None) and not detach:
        # This process starts torchrun and stands for the group; the ranks import torch, it does not.
        from tuitrain.tui.group_launch import launch_group
        _viewer_only = True
        return launch_group(argv, nproc, preset_spec=preset_spec, resume=resume, run_dir=args.get("run_dir"),
                            lifeline=lifeline, on_hangup=relay.on_hangup)
    if group is not None:  # one rank of a torchrun group: every rank trains, rank 0 records and serves
        if detach or in_process or lifeline is not None:
            raise UsageError("under torchrun every rank trains headless; watch the group with: tuitrain watch RUN_DIR")
        from tuitrain.tui.group_member import run_member
        _viewer_only = True  # the run has written and closed everything: leave without the C++ teardown
        return run_member(group, preset_spec, resume, args, relay)
    if not headless and not detach and not in_process:
        # The dashboard: the run trains in a child process that it starts; this one never imports torch.
        from tuitrain.tui.launch import preset_child, run_attached
        relay.restore()
        _viewer_only = True
        return run_attached(preset_child(argv), on_hangup=relay.on_hangup)
    if lifeline is not None:
        lifeline.say(phase="importing torch")
    run = prepare(preset_spec, resume, args)
    run.for_watchers = background
    warning = threads_warning(run.cfg.threads)
    if warning:
        print(f"tuitrain: warning: {warning}", file=sys.stderr)
    if detach:
        from tuitrain.tui.detach import start_detached
        run.release()  # checked here; the background process takes the run directory's lock
        return start_detached(argv, run.run_dir, resuming_dir=resume is not None and Path(resume).is_dir())
    if headless:
        from tuitrain.tui.headless import run_headless
        on_started = None
        if lifeline is not None:
            lifeline.say(phase="building the model")
            on_started = lambda: lifeline.report_ready(run.run_dir)  # noqa: E731
        rc = run_headless(run, relay, on_started=on_started)
        return run.finish(rc, detach=relay.detach_requested, to_terminal=True)
    from tuitrain.tui.launch import run_in_process
    return run_in_process(run, relay)


def _list_presets() -> int:
    """From the registry's static table: no torch import, so it answers at once."""
    from tuitrain.presets.registry import builtin_names, description

    names = builtin_names()
    width = max(len(name) for name in names)
    for name in names:
        print(f"{name:<{width}}  {description(name)}")
    print("\nYour own: tuitrain --preset ./my_experiment.py (or package.module:attr); see the README.")
    return EXIT_OK


def idle_cores(sample_seconds: float = 0.2) -> float:
    """Cores not busy right now (psutil, over a short sample): the cores other processes leave us."""
    import psutil

    busy = psutil.cpu_percent(interval=sample_seconds, percpu=True)
    return sum(max(0.0, 100.0 - b) for b in busy) / 100.0


def threads_warning(threads: int | None, idle: Callable[[], float] | None = None) -> str | None:
    """A warning when --threads asks for more torch threads than there are idle cores, else None.

    On a busy machine each step waits for its slowest thread: 2 threads on a 2-core box
    with another job running trained 8x slower than 1 thread.
    """
    if threads is None or threads <= 1:
        return None
    free = (idle or idle_cores)()
    if threads <= free + 0.5:
        return None
    return (f"--threads {threads}, but only about {free:.1f} of {os.cpu_count() or '?'} CPU cores are idle: "
            f"each step waits for threads that wait for a busy core, which can be several times slower; "
            f"try --threads {max(1, int(free + 0.5))}")


def _answer_without_torch(preset_spec: str | None, resume: str | None) -> None:
    """The mistakes that need no torch to spot, answered before importing it (seconds).

    A bare word that is not a built-in name can only be an unknown preset (the
    loader imports nothing for it); a --resume path that does not exist cannot
    be resumed.
    """
    from tuitrain.presets.registry import BUILTIN

    if preset_spec is not None:
        word = preset_spec.strip()
        if word not in BUILTIN and not any(c in word for c in "./:") and not Path(word).exists():
            from tuitrain.presets.loader import PresetError, load_preset
            try:
                load_preset(word)
            except PresetError as exc:
                raise UsageError(str(exc)) from None
    if resume is not None:
        from tuitrain.engine.rundir import RunDirError, check_path
        try:
            path = check_path(resume, "--resume")  # a name too long for the file system is one line too
        except RunDirError as exc:
            raise UsageError(str(exc)) from None
        if not path.exists():
            raise UsageError(f"--resume: no such run directory or checkpoint: {path}")


if __name__ == "__main__":
    # `python -m tuitrain.tui.cli` (how background runs start): run the importable module, not a
    # second copy of it under the name __main__.
    from tuitrain.tui.cli import main as _entry

    sys.exit(_entry())
