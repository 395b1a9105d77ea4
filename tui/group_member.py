"""One rank of a torchrun group running `tuitrain --preset ...`: the group is one run.

torchrun (PyTorch's elastic agent) starts every rank with RANK, WORLD_SIZE and
LOCAL_RANK in its environment. Each rank joins the process group (NCCL on a
GPU, one per local rank; gloo on CPUs), validates the same command line, and
builds the same Trainer (engine/trainer.py does the DDP wrapping, the data
shards and the step-boundary agreement). Rank 0 alone prepares and locks the
run directory, records the run, serves control.sock and prints; the others
learn the run directory from it and train in silence. After torchrun restarts
a failed group (--max-restarts), the new group resumes the same run directory
from its latest.pt.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path
from typing import Any

from tuitrain.tui.run_process import EXIT_FAILED, SignalRelay, UsageError, prepare

EXIT_USAGE = 2

#: Seconds a collective may wait before the group gives up on a rank (torch's default is 30 minutes;
#: a pause never waits in one that long: engine/distributed.py). TUITRAIN_GROUP_TIMEOUT overrides it.
GROUP_TIMEOUT = 300.0


def group_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process as one of 2+ ranks, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return None
    return (rank, world, local) if world > 1 else None


def _timeout() -> datetime.timedelta:
    text = os.environ.get("TUITRAIN_GROUP_TIMEOUT")
    try:
        seconds = float(text) if text else GROUP_TIMEOUT
    except ValueError:
        seconds = GROUP_TIMEOUT
    return datetime.timedelta(seconds=max(seconds, 1.0))


def _join(args: dict[str, Any], local_rank: int) -> None:
    """Join the process group: one GPU per local rank with NCCL when the run trains on CUDA, else gloo."""
    import torch
    import torch.distributed as dist

    device = str(args.get("device", "auto"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             "use --nproc-per-node at most that, or --device cpu")
        torch.cuda.set_device(local_rank)
        args["device"] = f"cuda:{local_rank}"
    elif device == "auto":
        args["device"] = "cpu"
    backend, timeout = "nccl" if cuda else "gloo", _timeout()
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart not in ("", "0") and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # A restarted group meets in torchrun's own store, which still holds the dead group's keys (the
        # ranks' addresses): a rank that reads one first connects to a process that is gone. Keys of
        # this round's own, then.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              world_size=int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=dist.PrefixStore(f"tuitrain-restart-{restart}/", store),
                                rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                timeout=timeout)
        return
    dist.init_process_group(backend, timeout=timeout)


def _restart_dir(run_dir: Any) -> Path | None:
    """After torchrun restarted the group: the run directory attempt 0 chose, if it can be resumed."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) <= 0:
        return None
    path = Path(run_dir) if run_dir is not None else _remembered()
    if path is not None and (path / "checkpoints" / "latest.pt").is_file():
        return path
    return None


def _restart_left() -> bool:
    """torchrun may start this group again: it restarts a failed group while its --max-restarts last
    (a run that ends 0 is never restarted). When it cannot be told, assume it may."""
    try:
        done = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        allowed = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    except ValueError:
        return True
    return done < allowed


def _marker() -> Path | None:
    """runs/.torchrun/<run id>: torchrun's --standalone gives each launch its own id; without one
    ('none': a c10d rendezvous without --rdzv-id) a restart finds its run only through --run-dir."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or run_id == "none" or not run_id.replace("-", "").replace("_", "").isalnum():
        return None
    return Path("runs") / ".torchrun" / run_id


def _remembered() -> Path | None:
    marker = _marker()
    try:
        return Path(marker.read_text(encoding="utf-8").strip()) if marker is not None else None
    except OSError:
        return None


def _remember(run_dir: Path) -> None:
    """Attempt 0's run directory, for a restarted group of the same torchrun launch to resume."""
    marker = _marker()
    if marker is None:
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(run_dir.resolve()), encoding="utf-8")
    except OSError:
        pass


def _forget() -> None:
    """The run ended for good: its marker goes, and runs/.torchrun/ with the last one."""
    marker = _marker()
    if marker is None:
        return
    try:
        marker.unlink(missing_ok=True)
        marker.parent.rmdir()
    except OSError:
        pass  # other launches' markers are still there, or it was never ours to remove


def run_member(env: tuple[int, int, int], preset_spec: str | None, resume: str | None, args: dict[str, Any],
               relay: SignalRelay) -> int:
    """Train as one rank of the group; the exit status is the run's, the same on every rank."""
    import torch.distributed as dist

    rank, world, local_rank = env
    _join(args, local_rank)
    try:
        restart = _restart_dir(args.get("run_dir"))
        if restart is not None:
            resume, preset_spec = str(restart), preset_spec
            args = {k: v for k, v in args.items() if k in ("device", "threads", "num_workers", "tensorboard")}
        rc = _train(rank, world, preset_spec, resume, args, relay, restarted=restart is not None)
        if rc != EXIT_FAILED and rc != EXIT_USAGE:
            try:
                dist.barrier()  # every rank ended at the same step: leave together
            except Exception:
                pass
        return rc
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a group that lost a rank may not tear down cleanly; the run has ended
                pass


def _train(rank: int, world: int, preset_spec: str | None, resume: str | None, args: dict[str, Any],
           relay: SignalRelay, restarted: bool) -> int:
    from tuitrain.engine.distributed import broadcast_object
    from tuitrain.engine.events import EventBuffer
    from tuitrain.engine.rundir import exit_status

    if rank == 0:
        outcome: Any = None
        try:
            run = prepare(preset_spec, resume, args)
            outcome = str(run.run_dir)
        except UsageError as exc:
            outcome = exc
        broadcast_object(outcome if isinstance(outcome, str) else None)
        if isinstance(outcome, UsageError):
            raise outcome
        _remember(run.run_dir)
        if restarted:
            print(f"tuitrain: torchrun restarted the group (restart "
                  f"{os.environ.get('TORCHELASTIC_RESTART_COUNT')}); resuming {run.run_dir}", file=sys.stderr)
        from tuitrain.tui.headless import run_headless
        rc = run.finish(run_headless(run, relay), detach=False, to_terminal=True)
        if rc == 0 or not _restart_left():
            _forget()  # no attempt of this launch will come to resume: it needs no marker now
        return rc
    run_dir = broadcast_object(None)
    if not isinstance(run_dir, str):
        return EXIT_USAGE  # rank 0 says why, in one line
    run = prepare(preset_spec, resume, {**args, "run_dir": run_dir}, follower=True)
    trainer = run.start(relay, events=EventBuffer(maxlen=0))
    if isinstance(trainer, int):
        return trainer
    result = trainer.run()
    return exit_status(result.status, result.signal) if result.status != "failed" else EXIT_FAILED
