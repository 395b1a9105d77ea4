"""`tuitrain run SCRIPT [ARGS ...]`: the user's own training script, with the dashboard attached.

The script is the run process: `python SCRIPT ARGS ...` (or `python -m MODULE
ARGS ...`) started the way a preset's run is (tui/launch.py: own session, a
lifeline, signals passed on), and its loop calls tuitrain.attach()
(engine/attach.py), which records into the run directory chosen here and
serves its control socket. This module only checks the command line and
picks the run directory: the dashboard is the same one, over the same
LaunchedRun source, as for `tuitrain --preset ...`.

Without a terminal (or with --headless) there is nothing to attach: the
script replaces this process (exec), so it gets the terminal, the signals and
the exit status directly, with TUITRAIN_RUN_DIR set and no lifeline.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Sequence

from tuitrain.tui.launch import Child, run_attached
from tuitrain.tui.run_process import UsageError

EXIT_OK = 0

USAGE = """usage: tuitrain run [--run-dir DIR] [--headless] SCRIPT [ARGS ...]
       tuitrain run [--run-dir DIR] [--headless] -m MODULE [ARGS ...]

Start your own training script (python SCRIPT ARGS ..., or python -m MODULE
ARGS ...) with the dashboard attached. The script's loop calls
tuitrain.attach(), which records the run in the run directory and lets the
dashboard watch and steer it with the usual keys: p pause, l learning rate,
s save, x stop (the dashboard stays), q stop and wait for the script to exit,
d detach (the script trains on; tuitrain watch RUN_DIR re-attaches).
Until the script calls attach() the status bar says so; q then ends it.

Options (before SCRIPT; everything after SCRIPT is the script's own):
  --run-dir DIR  where the run records (default runs/<script>-<YYYYmmdd-HHMMSS>);
                 a new or empty folder. The script finds it in TUITRAIN_RUN_DIR.
  --headless     no dashboard: run the script in the foreground (also chosen
                 when stdout or stderr is not a terminal)

Exit status: the script's own; 2 for bad input here (no such script, a
--run-dir that already holds a run)."""


@dataclass(frozen=True)
class ScriptRun:
    """A checked `tuitrain run` command line."""

    target: tuple[str, ...]
    """What follows the interpreter: (SCRIPT,) or ("-m", MODULE)."""
    args: tuple[str, ...]
    name: str
    """What the screen calls it: train.py, or the module's name."""
    run_dir: Path
    """Absolute; not created here (attach() claims and creates it)."""
    headless: bool

    def child(self) -> Child:
        return Child((sys.executable, *self.target, *self.args), script=self.name, run_dir=self.run_dir)


def parse(argv: Sequence[str]) -> ScriptRun | None:
    """The command line, checked (UsageError: one line); None when it asked for the help."""
    args = list(argv)
    run_dir: str | None = None
    headless = False
    module: str | None = None
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            return None
        if flag == "--":
            break
        if flag == "--headless":
            headless = True
        elif flag == "--run-dir" or flag.startswith("--run-dir="):
            run_dir = _value(flag, args, "--run-dir", "DIR")
        elif flag == "-m" or (flag.startswith("-m") and not flag.startswith("--")):
            module = flag[2:] or _value(flag, args, "-m", "MODULE")
            break
        else:
            raise UsageError(f"run: unknown option {flag}; tuitrain's options go before SCRIPT "
                             "(see tuitrain run --help)")
    if module is not None:
        target, name, stem = ("-m", module), module, _module_stem(module)
    else:
        if not args:
            raise UsageError("run: no script given: tuitrain run SCRIPT [ARGS ...] or tuitrain run -m MODULE "
                             "[ARGS ...]")
        script = args.pop(0)
        _check_script(script)
        target, name, stem = (script,), Path(script).name, Path(script).stem
    headless = headless or not (sys.stdout.isatty() and sys.stderr.isatty())  # Textual draws on stderr
    return ScriptRun(target, tuple(args), name, choose_run_dir(run_dir, stem), headless)


def _value(flag: str, args: list[str], name: str, meta: str) -> str:
    """The value of `--flag=VALUE` or `--flag VALUE`."""
    if flag.startswith(f"{name}="):
        value = flag.split("=", 1)[1]
    elif args:
        value = args.pop(0)
    else:
        value = ""
    if not value:
        raise UsageError(f"run: {name} needs {meta} (see tuitrain run --help)")
    return value


def _module_stem(module: str) -> str:
    if not all(part.isidentifier() for part in module.split(".")):
        raise UsageError(f"run: -m: {module!r} is not a module name (like package.train)")
    return module.rsplit(".", 1)[-1]


def _check_script(script: str) -> None:
    """A readable .py file; otherwise one line (python would say it after our dashboard had opened)."""
    from tuitrain.engine.rundir import RunDirError, check_path

    try:
        path = check_path(script, "run")
    except RunDirError as exc:
        raise UsageError(str(exc)) from None
    if not path.exists():
        raise UsageError(f"run: no such script: {script}")
    if path.is_dir():
        raise UsageError(f"run: {script} is a folder; give the .py file to run (or -m MODULE)")
    if not path.is_file():
        raise UsageError(f"run: {script} is not a regular file")
    if path.suffix != ".py":
        raise UsageError(f"run: {script} is not a .py file (for a module: tuitrain run -m MODULE)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"run: cannot read {script}")


def choose_run_dir(given: str | None, stem: str) -> Path:
    """--run-dir, or runs/<stem>-<time>: checked as a new run's folder would be, made absolute, not created."""
    from tuitrain.engine.rundir import RunDir, RunDirError, check_path, new_run_path

    try:
        path = check_path(given, "--run-dir") if given is not None else new_run_path("runs", stem)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--run-dir: {path} is not a folder")
        RunDir(path).refuse_foreign(resumable=False)  # the check attach() makes when it claims the folder, made now
        return check_path(path.absolute(), "--run-dir")
    except RunDirError as exc:
        raise UsageError(str(exc)) from None


def exec_headless(run: ScriptRun) -> NoReturn:
    """Become the script: it has the terminal, the signals and the exit status, as with plain python."""
    child = run.child()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.execve(sys.executable, child.argv(None), child.environ(None))
    except OSError as exc:
        print(f"tuitrain: error: run: cannot start {sys.executable}: {exc.strerror or exc}", file=sys.stderr)
        os._exit(1)


def main(argv: Sequence[str]) -> int:
    run = parse(argv)
    if run is None:
        print(USAGE)
        return EXIT_OK
    if run.headless:
        exec_headless(run)
    return run_attached(run.child())
