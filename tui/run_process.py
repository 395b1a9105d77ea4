"""The run process's side of a run's life: a validated run, built, served, ended; the signals that stop it.

Used by every process that trains: headless in a terminal, under nohup, the
background run of --detach, and the child a dashboard starts (which also
holds the run's end of the lifeline, engine/lifeline.py). Everything that can
fail on bad input is checked in prepare(), before any training (exit 2).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

# Imported up front (standard library only): the signal handler must not
# import anything, since it can run in the middle of another import.
from tuitrain.engine.commands import Stop
from tuitrain.engine.signals import StopSignals

EXIT_OK, EXIT_FAILED = 0, 1


#: Flags that may be given with --resume: they do not change what was trained.
RESUME_FLAGS = {"epochs", "max_steps", "patience", "device", "on_nan", "threads", "num_workers", "run_dir",
                "tensorboard"}


class UsageError(Exception):
    """Bad usage or input: one line on stderr, exit 2."""


def lifeline_end(fd: int | None, relay: "SignalRelay") -> Any:
    """The run's end of the lifeline to the dashboard that started it (engine/lifeline.py), watched from now on."""
    if fd is None:
        return None
    from tuitrain.engine.lifeline import open_run_end

    try:
        end = open_run_end(fd)
    except ValueError as exc:
        raise UsageError(f"--lifeline {exc}") from None
    relay.lifeline = end
    relay.honour_ignored()
    end.watch()
    return end


def prepare(preset_spec: str | None, resume: str | None, overrides: dict[str, Any], *,
            follower: bool = False) -> "PreparedRun":
    """Everything that can fail on bad input, done before any training (exit 2).

    The run directory is locked (engine/rundir.py RunLock) before anything is
    written there; the PreparedRun holds the lock until the run ends.
    `follower`: a rank other than 0 under torchrun, in the run directory that
    rank 0 prepared and holds (overrides["run_dir"]); it locks and writes nothing.
    """
    from tuitrain.engine import checkpoint as ckpt
    from tuitrain.engine.config import ConfigError
    from tuitrain.engine.devices import DeviceError, resolve_device
    from tuitrain.engine.rundir import RunDir, RunDirError, check_path, new_run_path, read_history
    from tuitrain.presets import PresetError
    from tuitrain.presets.loader import preset_name_for_rundir

    if "run_dir" in overrides and not str(overrides["run_dir"]).strip():
        raise UsageError("--run-dir must not be empty")
    state = None
    lock = None
    try:
        run_dir = check_path(overrides["run_dir"], "--run-dir") if "run_dir" in overrides else None
        in_place = False
        if resume is not None:
            state, resume_dir = _load_resume(str(check_path(resume, "--resume")), overrides, ckpt,
                                             follower=follower)
            in_place = resume_dir is not None
            run_dir = resume_dir or run_dir
            cfg, preset = _resume_config(state, resume, resume_dir, preset_spec, overrides)
            name = preset_name_for_rundir(cfg.preset, preset)
        else:
            assert preset_spec is not None
            cfg, preset = _new_config(preset_spec, overrides)
            name = preset_name_for_rundir(preset_spec, preset)
        if run_dir is None:
            run_dir = new_run_path("runs", name)
        cfg = cfg.replace(run_dir=str(run_dir))
        resolve_device(cfg.device)
        if follower:
            run = PreparedRun(cfg, preset, run_dir, state, created=None)
            run.follower = True
            return run
        created = _first_missing(run_dir)
        try:
            lock = RunDir(run_dir).claim(resume=in_place)
            if in_place:
                read_history(run_dir)  # a resumed run keeps its rows: they must be rows
        except BaseException:
            _undo_created(created, lock)
            raise
    except (ConfigError, PresetError, DeviceError, RunDirError, ckpt.CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    return PreparedRun(cfg, preset, run_dir, state, created=created, lock=lock)


def _new_config(preset_spec: str, overrides: dict[str, Any]) -> tuple[Any, Any]:
    from tuitrain.engine.config import RunConfig
    from tuitrain.presets import load_preset

    preset = load_preset(preset_spec)
    spec = str(Path(preset_spec).resolve()) if preset_spec.endswith(".py") else preset_spec
    merged = {**preset.defaults, **overrides, "preset": spec}
    try:
        cfg = RunConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"preset {preset.name!r} sets an unknown option in its defaults: {exc}") from None
    return cfg, preset


def _resume_config(state: dict[str, Any], resume: str, resume_dir: Path | None, preset_spec: str | None,
                   overrides: dict[str, Any]) -> tuple[Any, Any]:
    """The resumed run's config and preset; the preset is imported only once everything else checked out."""
    from tuitrain.engine.config import ConfigError, RunConfig
    from tuitrain.presets import load_preset

    try:
        cfg = RunConfig.from_dict(state["config"])
    except (ConfigError, TypeError) as exc:
        raise UsageError(f"{resume}: the checkpoint's config is not valid: {exc}") from None
    if resume_dir is not None:
        _check_same_run(resume_dir, cfg.preset)
    spec = _resume_preset_spec(cfg.preset, preset_spec, resume)
    changes = {k: v for k, v in overrides.items() if k != "run_dir"}
    if "epochs" in changes and cfg.scheduler in ("cosine", "onecycle", "warmup-cosine"):
        raise UsageError(f"--epochs cannot change on resume with --scheduler {cfg.scheduler}: "
                         "its plan is fixed to the original length")
    cfg = cfg.replace(**changes)
    if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
        raise UsageError(f"this run already reached --max-steps {cfg.max_steps} (step {state['step']}); "
                         "resume with a larger --max-steps, or --max-steps 0 for no limit")
    preset = load_preset(spec)
    if state["preset"] != preset.name:
        raise UsageError(f"the checkpoint was saved by preset {state['preset']!r}, but its config "
                         f"now loads preset {preset.name!r} from {cfg.preset!r}")
    return cfg, preset


def _resume_preset_spec(recorded: str, named: str | None, resume: str) -> str:
    """What a resumed run may import: a built-in by name, or the preset the user names on this command line.

    A checkpoint is data: a file path or module:attr in it is never run on the
    checkpoint's word alone (README, Security). Decided before importing anything.
    """
    from tuitrain.presets import BUILTIN

    if named is None:
        if recorded.strip() in BUILTIN:
            return recorded.strip()
        raise UsageError(f"{resume} was trained with the preset {recorded!r}, which is code; tuitrain runs a "
                         f"preset file or module only when you name it: tuitrain --resume {shlex.quote(resume)} "
                         f"--preset {shlex.quote(recorded)}")
    if not _same_preset(named, recorded):
        raise UsageError(f"--preset {named!r} is not the preset {resume} was trained with ({recorded!r})")
    return named


def _same_preset(named: str, recorded: str) -> bool:
    named, recorded = named.strip(), recorded.strip()
    if named.endswith(".py") and recorded.endswith(".py"):
        return os.path.realpath(os.path.expanduser(named)) == os.path.realpath(os.path.expanduser(recorded))
    return named == recorded


def _check_same_run(run_dir: Path, preset: str) -> None:
    """A checkpoint resumed in place must be that run's: the preset its config.json records."""
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return  # nothing to compare with (it is written when the run starts)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}); it records which "
                         "run this is, so it must be intact to resume") from None
    if not isinstance(config, dict) or not isinstance(config.get("preset"), str):
        raise UsageError(f"{path} is not a run config (no preset); it must be intact to resume")
    if config["preset"] != preset:
        raise UsageError(f"{run_dir / 'checkpoints' / 'latest.pt'} belongs to another run: it was saved by "
                         f"preset {preset!r}, but {path} says this run trains {config['preset']!r}")


def _undo_created(created: Path | None, lock: Any) -> None:
    """After a refusal: remove the folders this attempt created, if nothing else was written there."""
    if lock is not None:
        if created is not None:
            lock.remove()
        else:
            lock.release()
    if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
        shutil.rmtree(created, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what creating it would add)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _load_resume(resume: str, overrides: dict[str, Any], ckpt: Any,
                 follower: bool = False) -> tuple[dict[str, Any], Path | None]:
    """The checkpoint to resume (every field checked), and the run directory when resuming one in place."""
    path = Path(resume)
    if follower and path.is_dir():  # rank 0 checked it and holds it: read the same checkpoint
        overrides.pop("run_dir", None)
        return ckpt.load(path / "checkpoints" / "latest.pt"), path
    extra = sorted(set(overrides) - RESUME_FLAGS)
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise UsageError(f"{flags} cannot be changed when resuming (the run continues as saved); "
                         f"allowed: {', '.join('--' + k.replace('_', '-') for k in sorted(RESUME_FLAGS))} "
                         "(and --preset, to name the run's own preset file)")
    if path.is_dir():
        if "run_dir" in overrides:
            raise UsageError("--run-dir cannot be used when resuming a run directory (it continues there)")
        from tuitrain.engine.rundir import check_run_files, run_state
        check_run_files(path)  # before anything opens them (a FIFO would hang, a link lead elsewhere)
        if run_state(path) == "live":
            raise UsageError(f"a live run is training in {path}; watch and steer it with: tuitrain watch {path}")
        latest = path / "checkpoints" / "latest.pt"
        if not latest.exists():
            raise UsageError(f"no checkpoint to resume in {path} ({latest} is missing)")
        return ckpt.load(latest), path
    if not path.exists():
        raise UsageError(f"--resume: no such run directory or checkpoint: {path}")
    return ckpt.load(path), None


class PreparedRun:
    """A validated run, ready to build: config, preset, run directory, resume state."""

    def __init__(self, cfg: Any, preset: Any, run_dir: Path, state: dict[str, Any] | None,
                 created: Path | None, lock: Any = None) -> None:
        self.cfg, self.preset, self.run_dir, self.state = cfg, preset, run_dir, state
        self.created = created
        """The outermost folder this run created (None when the run directory existed)."""
        self.lock = lock
        """The run directory's RunLock, held until the run ends (release())."""
        self.for_watchers = False
        """A background run: compute what only a watcher shows (decision-boundary frames)."""
        self.control: Any = None
        """The run's ControlServer (RUN_DIR/control.sock) while it trains; None without one."""
        self.trainer: Any = None
        """The Trainer, once start() built it."""
        self.follower = False
        """A rank other than 0 under torchrun: trains in rank 0's run directory, serves and writes nothing."""
        self._finished = False
        self._finish_lock = threading.Lock()

    def start(self, relay: "SignalRelay", **trainer_kwargs: Any) -> Any:
        """Build the Trainer and route signals to it; an int is the exit status of a run that could not start.

        A checkpoint that does not fit is bad input (exit 2); a crash in the
        preset's own code while building data or model is a failed run
        (exit 1, error.txt and summary.json written). An interruption while
        building leaves no empty run directory behind.
        """
        try:
            trainer = self._build_or_record_failure(**trainer_kwargs)
            self.trainer = trainer
            if not isinstance(trainer, int):
                relay.attach(trainer.commands)
                if not self.follower:
                    self._serve(trainer)
            return trainer
        except BaseException:
            self.close()
            self.discard()
            raise

    def _serve(self, trainer: Any) -> None:
        """Let watchers steer this run (`tuitrain watch`); without the socket the run still trains."""
        from tuitrain.engine.control import ControlError, ControlServer

        server = ControlServer(self.run_dir, trainer.commands)
        try:
            server.start()
        except (ControlError, OSError) as exc:
            print(f"tuitrain: warning: no control socket, so `tuitrain watch` cannot steer this run: {exc}",
                  file=sys.stderr)
            return
        self.control = server
        trainer.listeners.append(server.listener)

    def close(self) -> None:
        """Stop serving the control socket (idempotent); watchers see EOF."""
        server, self.control = self.control, None
        if server is not None:
            server.close()

    def release(self) -> None:
        """Give up the run directory's lock (idempotent): the run wrote its last file, or hands over."""
        if self.lock is not None:
            self.lock.release()

    def finish(self, code: int, *, detach: bool, to_terminal: bool) -> int:
        """Once the run has ended: close the socket, and if a detach was asked for, continue in the background.

        Safe to call twice (the dashboard's exit watchdog and its normal
        return may race): the second call returns `code` unchanged.
        """
        with self._finish_lock:
            if self._finished:
                return code
            self._finished = True
            self.close()
            self.release()  # before a background resume of this directory takes it over
            code = self._check_record(code)
            if not detach:
                return code
            from tuitrain.engine.rundir import read_json
            summary = read_json(self.run_dir / "summary.json")
            if not isinstance(summary, dict) or summary.get("status") != "interrupted":
                return code  # it ended on its own before the detach took effect: nothing to continue
            from tuitrain.tui.detach import continue_in_background
            return continue_in_background(self.run_dir, to_terminal=to_terminal, preset=self.cfg.preset)

    def _check_record(self, code: int) -> int:
        """A run whose summary or metrics could not be written did not end well, whatever it reached."""
        problem = getattr(self.trainer, "record_error", None)
        if not problem:
            return code
        try:
            print(f"tuitrain: error: the run's record is incomplete: {problem}; what it reached is not all on "
                  "disk (exit 1)", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        return code if code != EXIT_OK else EXIT_FAILED

    def _build_or_record_failure(self, **trainer_kwargs: Any) -> Any:
        import traceback

        from tuitrain.engine import checkpoint as ckpt
        from tuitrain.engine.config import ConfigError
        from tuitrain.engine.events import RunSummary
        from tuitrain.engine.rundir import RunDir
        from tuitrain.engine.trainer import PRESET_FAILURES, Trainer, failure_text

        try:
            return Trainer(self.cfg, self.preset, self.run_dir, resume=self.state, **trainer_kwargs)
        except (ckpt.CheckpointError, ConfigError) as exc:
            raise UsageError(str(exc)) from None
        except PRESET_FAILURES as exc:  # sys.exit() or KeyboardInterrupt in preset code is the preset failing
            tb = traceback.format_exc()
            reason = failure_text(exc)
            if self.follower:  # rank 0 records the run; this rank says what happened to it
                print(f"tuitrain: rank {os.environ.get('RANK', '?')}: the preset failed while building its data "
                      f"or model: {reason}", file=sys.stderr)
                return EXIT_FAILED
            rundir = RunDir(self.run_dir)
            try:
                rundir.write_error(tb)
                rundir.write_json("summary.json", RunSummary(
                    status="failed", reason=reason, preset=self.preset.name, run_dir=str(self.run_dir)).to_dict())
            except OSError:
                pass
            print(f"tuitrain: the preset failed while building its data or model: {reason} "
                  f"(the traceback is in {self.run_dir}/error.txt)", file=sys.stderr)
            return EXIT_FAILED

    def discard(self) -> None:
        """Remove the folders this run created, if nothing was written into them."""
        if self.created is not None and self.lock is not None:
            self.lock.remove()
        if self.created is not None and self.created.is_dir():
            if not any(p.is_file() for p in self.created.rglob("*")):
                shutil.rmtree(self.created, ignore_errors=True)


class Interrupted(BaseException):
    """A signal arrived before there was a run to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalRelay(StopSignals):
    """Turns SIGINT/SIGTERM/SIGHUP into a Stop command (checkpoint, then exit 128+N).

    Before a trainer is attached, a signal raises Interrupted. A second SIGINT
    or SIGTERM kills the process at once (Ctrl-C twice); a second SIGHUP does
    not: one dropped connection often delivers several (the shell, the wrapper,
    the kernel), and the save in progress must finish. A signal the parent set
    to be ignored (nohup ignores SIGHUP) stays ignored; a terminal that went
    away counts as SIGHUP all the same (`terminal_lost`, from the dashboard).
    """

    def __init__(self, commands: Any = None) -> None:
        super().__init__()
        self.commands = commands
        self.on_hangup = "save-exit"
        """'detach': SIGHUP saves and the run continues in the background (tui/detach.py)."""
        self.detach_requested = False
        self.lifeline: Any = None
        """A run started by a dashboard (engine/lifeline.py RunEnd): it is already in the background, so
        with --on-hangup detach a hangup (or the dashboard going away) leaves it training as it is."""

    def honour_ignored(self) -> None:
        """A run started by a dashboard: the dashboard decides what a signal it ignores means (it passes a
        hangup on only when its terminal is really gone), so nothing stays ignored here."""
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                self._previous[sig] = signal.SIG_IGN
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == getattr(signal, "SIGHUP", None) and self.lifeline is not None and self.on_hangup == "detach":
            self.lifeline.detached.set()
            return  # its own session already: nothing to move, keep training
        # Recorded first: Python can swallow an exception raised in a handler
        # (inside compile() during an import, say), and attach() re-checks.
        if self.commands is None:
            self.received = signum
            raise Interrupted(signum)
        if signum == getattr(signal, "SIGHUP", None) and self.received is not None:
            return  # the same hangup again, or one after another stop: the stop under way saves
        if self.received == signum:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        if signum == getattr(signal, "SIGHUP", None) and self.on_hangup == "detach":
            self.detach_requested = True
            self.commands.put_from_signal(Stop(reason="detached on SIGHUP (the terminal closed)", signal=signum))
            return
        self.commands.put_from_signal(Stop(reason=f"received {signal.Signals(signum).name}", signal=signum))

    def terminal_lost(self) -> None:
        """The terminal went away without a SIGHUP reaching us (a wrapper caught or ignored it): a hangup."""
        hup = getattr(signal, "SIGHUP", None)
        if hup is not None and self.received is None and self.commands is not None:
            self._handle(hup, None)

    def attach(self, commands: Any) -> None:
        """From now on a signal stops the run; one that came during set-up ends it before training."""
        if self.received is not None:
            raise Interrupted(self.received)
        self.commands = commands


