"""Engine events as TensorBoard event files, written with the tensorboard package's own classes.

One writer for both ways a run reaches TensorBoard, so they give the same files:
`tuitrain --tensorboard` (live: `main()` below runs in a helper process the run
starts, engine/tensorboard_feed.py, fed the run's metrics.jsonl lines on stdin)
and `tuitrain export RUN_DIR --tensorboard OUT_DIR` (tui/export.py). Both
decode the records with engine/replay.py, so steps/s is the one the dashboard
shows for a replayed run.

What is written (tags): per step `train/loss`, `train/lr` (the LR the step
used) and `train/grad_norm` (with clipping); per flush `train/steps_per_sec`
at its last step; per evaluation `val/loss`, `val/<metric>` and the preset's
extras (`val/ppl`), with the epoch's mean training loss and metric as
`epoch/train_loss`, `epoch/train_<metric>`; the interventions and what the run
said (pause, resume, LR change, checkpoint, hint, stop, failure ...) as text
under `events/<name>`, in the words of the dashboard's event log
(tui/state.py). A resumed run (or a NaN roll-back) writes a SessionLog START at
the first re-run step, so TensorBoard drops the steps the run went back over.

No torch: the export must start fast, and the helper must stay small.
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from tuitrain.engine import events as ev

#: What to say when the tensorboard package is missing (one line, exit 2).
MISSING = "TensorBoard output needs the tensorboard package: pip install 'tuitrain[tensorboard]'"


def available() -> bool:
    """Whether the tensorboard package is installed (looked up, not imported: no cost)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def event_file_name(label: str) -> str:
    """An event file name TensorBoard picks up ("tfevents" in it), in its usual shape."""
    return f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{label}"


class TensorBoardLog:
    """Turns engine events into TensorBoard records, appended to one event file (an open binary file)."""

    def __init__(self, file: BinaryIO) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.compat.proto.types_pb2 import DT_STRING
        from tensorboard.plugins.text import metadata as text_metadata
        from tensorboard.summary.writer.record_writer import RecordWriter

        from tuitrain.tui.state import DashboardState

        self._Event, self._Summary = event_pb2.Event, summary_pb2.Summary
        self._Value = summary_pb2.Summary.Value
        self._SessionLog = event_pb2.SessionLog
        self._text_meta = text_metadata.create_summary_metadata("", "")
        self._text_tensor = lambda text: TensorProto(dtype=DT_STRING, tensor_shape=TensorShapeProto(),
                                                     string_val=[text.encode("utf-8", "replace")])
        self._writer = RecordWriter(file)
        # The dashboard's own words for each intervention (its event log), never a second phrasing.
        self._words = DashboardState()
        self.records = 0
        self._put(self._Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _put(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
        self.records += 1

    def write(self, events: Iterable[ev.Event]) -> None:
        for event in events:
            if isinstance(event, ev.StepStats):
                self._steps(event)
            elif isinstance(event, ev.EvalDone):
                self._eval(event)
                self._text(event)
            else:
                self._restart(event)
                self._text(event)

    def _steps(self, e: ev.StepStats) -> None:
        Event, Summary, Value, put = self._Event, self._Summary, self._Value, self._put
        norms = e.grad_norm
        last = len(e.steps) - 1
        for i, step in enumerate(e.steps):
            values = [Value(tag="train/loss", simple_value=e.loss[i]), Value(tag="train/lr", simple_value=e.lr[i])]
            if norms is not None:
                values.append(Value(tag="train/grad_norm", simple_value=norms[i]))
            if i == last and e.steps_per_sec > 0:
                values.append(Value(tag="train/steps_per_sec", simple_value=e.steps_per_sec))
            put(Event(wall_time=e.t, step=step, summary=Summary(value=values)))

    def _eval(self, e: ev.EvalDone) -> None:
        Value = self._Value
        values = [Value(tag="val/loss", simple_value=e.val_loss)]
        if not (e.metric == "metric" and math.isnan(e.val_metric)):  # a user's loop that gave no metric
            values.append(Value(tag=f"val/{e.metric}", simple_value=e.val_metric))
        if e.train_loss is not None:
            values.append(Value(tag="epoch/train_loss", simple_value=e.train_loss))
        if e.train_metric is not None:
            values.append(Value(tag=f"epoch/train_{e.metric}", simple_value=e.train_metric))
        for key, value in e.extras.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.append(Value(tag=extra_tag(key), simple_value=value))
        self._put(self._Event(wall_time=e.t, step=e.step, summary=self._Summary(value=values)))

    def _restart(self, e: ev.Event) -> None:
        """A resumed run goes back to its checkpoint's step: TensorBoard purges what follows at a START."""
        back = restart_step(e)
        if back is not None:
            self._put(self._Event(wall_time=e.t, step=back + 1,
                                  session_log=self._SessionLog(status=self._SessionLog.START)))

    def _text(self, e: ev.Event) -> None:
        try:
            self._words.apply(e)
        except Exception:  # a record too odd for the dashboard's words (garbled, from a newer tuitrain): no text
            self._words.take_log()
            return
        lines = [line.text for line in self._words.take_log()]
        if isinstance(e, ev.RunEnded):  # the dashboard's own advice (q, a longer run) is not the record's
            lines = [line.removesuffix("; press q to quit") for line in lines[:1]]
        if not lines:
            return
        tag = "events/evaluated" if isinstance(e, ev.EvalDone) else f"events/{e.name}"
        value = self._Value(tag=tag, metadata=self._text_meta, tensor=self._text_tensor("  \n".join(lines)))
        self._put(self._Event(wall_time=e.t, step=e.step, summary=self._Summary(value=[value])))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def extra_tag(key: str) -> str:
    """`val_ppl` -> `val/ppl`, `train_ppl` -> `epoch/train_ppl`, anything else under `val/`."""
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key.startswith("train_"):
        return "epoch/" + key
    return "val/" + key


def restart_step(e: ev.Event) -> int | None:
    """The step a run went back to at this event (a resume, a NaN roll-back), else None.

    What came after that step before this event was re-run, and the record kept both
    (engine/rundir.py step_losses reads it the same way)."""
    if isinstance(e, ev.RunStarted) and e.resumed:
        return e.step
    if isinstance(e, ev.NonFinite) and e.rolled_back_to is not None:
        return e.rolled_back_to
    return None


# -- the live helper: python -m tuitrain.tui.tensorboard_log --live DIR --parent PID ---------------------

#: Seconds between checks that the run (the parent) is still there while nothing arrives.
PARENT_CHECK = 1.0


def main(argv: list[str] | None = None) -> int:
    """Write the run's records arriving on stdin into an event file in DIR until stdin ends.

    Started by the run (engine/tensorboard_feed.py) in its own session, 10 nicer than the run:
    the terminal's signals do not reach it, and it ends when the run closes the
    pipe, dies (the pipe ends too) or is gone as its parent.
    """
    parser = argparse.ArgumentParser(prog="tuitrain-tensorboard-writer")
    parser.add_argument("--live", required=True, metavar="DIR")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--nice", type=int, default=10, help="the niceness to run at (at least)")
    args = parser.parse_args(argv)
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < args.nice:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except OSError:
        pass
    if not available():
        print(f"tuitrain: warning: --tensorboard: {MISSING}", file=sys.stderr)
        return 2
    from tuitrain.engine.replay import RecordDecoder

    out = Path(args.live)
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / event_file_name(f"{os.getpid()}.tuitrain"), "wb")
    except OSError as exc:
        print(f"tuitrain: warning: --tensorboard: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log = TensorBoardLog(f)
    decoder = RecordDecoder()
    stdin = sys.stdin.fileno()
    rest = b""
    try:
        while True:
            ready, _, _ = select.select([stdin], [], [], PARENT_CHECK)
            if not ready:
                if os.getppid() != args.parent:
                    break  # the run is gone (and something else kept the pipe open): never outlive it
                continue
            data = os.read(stdin, 1 << 20)
            if not data:
                break
            cut = data.rfind(b"\n")
            if cut < 0:
                rest += data
                continue
            lines, rest = rest + data[:cut + 1], data[cut + 1:]
            log.write(decoder.decode_bytes(lines, final=False))
            if not select.select([stdin], [], [], 0)[0]:  # caught up: the open flush is complete, show it
                log.write(decoder.finish())
                log.flush()
    except OSError as exc:
        print(f"tuitrain: warning: --tensorboard: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            log.write(decoder.finish())
            log.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run decides when the record ends, not a Ctrl-C
    sys.exit(main())
