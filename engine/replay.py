"""Rebuild engine events from metrics.jsonl, so a watcher feeds the dashboard as the live engine does.

metrics.jsonl is the source of truth for everything a run persists (DESIGN.md).
`events_from_records` turns its records back into the Event objects the engine
emitted, so `DashboardState.apply_all(events_from_records(records))` rebuilds
what a live viewer saw (without the live-only events: the schedule preview and
mid-epoch boundary frames, which `tuitrain watch` gets from the control
socket). `MetricsFollower` is the one follower of the file: each read costs
what was appended since the last one (bounded by its chunk), and it decodes
with its own `RecordDecoder` (state such as the batch size and the time of the
last flush carries over from one read to the next), parsing step lines on a
fast path, without a dict per line (a 1,000,000-step, 130 MB file: about 2 s
of CPU on a slow shared core, against about 3.3 s via
`events_from_records(read_metrics(...))`). Lines that are not exactly as
StepStats.records() writes them fall back to the JSON path.

Decoding rules
- consecutive "step" records with the same "t" and epoch and consecutive steps
  (one engine flush) become ONE StepStats; steps_per_sec comes from the step
  count and the time since the previous flush (paused time taken out, as the
  engine does), samples_per_sec = steps_per_sec * batch_size * accumulate from
  the run's config, epoch_step / steps_per_epoch from RunStarted, data_wait None;
- "eval" records become EvalDone (the val_<metric>/train_<metric> copies are
  dropped, the preset's extras such as val_ppl go back into `extras`);
- "event" records become the Event subclass with that `name` (a registry built
  from engine/events.py), with exactly its dataclass fields: unknown keys are
  ignored (forward compatibility), missing optional fields take defaults, and a
  record that cannot be decoded is skipped, never an error;
- metrics.jsonl writes a non-finite float as null: a null in a field typed
  `float` (or an element of `list[float]`) comes back as NaN; Optional fields
  keep None.

Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from itertools import groupby
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import events as ev

__all__ = ["EVENT_TYPES", "MetricsFollower", "RecordDecoder", "events_from_records", "load_history", "parse_lines",
           "stream_events"]

_NAN = math.nan


def _registry() -> dict[str, type[ev.Event]]:
    out: dict[str, type[ev.Event]] = {}
    for value in vars(ev).values():
        if (isinstance(value, type) and issubclass(value, ev.Event) and value is not ev.Event
                and value.record_kind == "event" and dataclasses.is_dataclass(value)):
            out[value.name] = value
    return out


EVENT_TYPES: dict[str, type[ev.Event]] = _registry()
"""Event name (the "event" key of a record) -> its class."""


class _Spec:
    """How to build one Event class from a record: its fields, the required ones, the float ones."""

    __slots__ = ("cls", "names", "required", "floats", "float_lists")

    def __init__(self, cls: type[ev.Event]) -> None:
        self.cls = cls
        fields = dataclasses.fields(cls)
        self.names = tuple(f.name for f in fields)
        self.required = frozenset(f.name for f in fields if f.default is dataclasses.MISSING
                                  and f.default_factory is dataclasses.MISSING)
        # Annotations are strings (from __future__ import annotations).
        self.floats = tuple(f.name for f in fields if str(f.type).replace(" ", "") == "float")
        self.float_lists = tuple(f.name for f in fields if str(f.type).replace(" ", "") == "list[float]")

    def build(self, record: dict[str, Any]) -> ev.Event | None:
        kwargs = {name: record[name] for name in self.names if name in record}
        if not self.required.issubset(kwargs):
            return None
        for name in self.floats:
            if kwargs.get(name, 0.0) is None:
                kwargs[name] = _NAN
        for name in self.float_lists:
            value = kwargs.get(name)
            if isinstance(value, list) and None in value:
                kwargs[name] = [_NAN if v is None else v for v in value]
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError):
            return None


_SPECS: dict[str, _Spec] = {name: _Spec(cls) for name, cls in EVENT_TYPES.items()}
_EVAL = _Spec(ev.EvalDone)
_EVAL_KEYS = frozenset(_EVAL.names) | {"kind"}


def _eval_done(record: dict[str, Any]) -> ev.EvalDone | None:
    metric = record.get("metric")
    skip = _EVAL_KEYS | {f"val_{metric}", f"train_{metric}"}
    extras = {k: v for k, v in record.items() if k not in skip}
    body = {k: v for k, v in record.items() if k in _EVAL_KEYS}
    body["extras"] = extras
    return _EVAL.build(body)  # type: ignore[return-value]


class RecordDecoder:
    """Turns metrics.jsonl records (dicts) or raw complete lines (bytes) into engine events.

    Stateful, so that it can be fed piece by piece as a file grows: it remembers
    the run's batch size and steps per epoch (from RunStarted) and when the last
    flush was (for steps/s). Each `decode`/`decode_bytes` call returns finished
    events; the step group at the end of a call is emitted at the end of that call.
    """

    def __init__(self) -> None:
        self.batch = 1
        """Samples per optimizer step (batch_size * accumulate), from the run's config."""
        self.steps_per_epoch = 1
        self._prev_t: float | None = None
        self._paused = 0.0
        self._rate = 0.0
        self._out: list[ev.Event] = []
        # The step group being gathered (one engine flush): merged with the next piece when it continues.
        self._g_t: float | None = None
        self._g_epoch = 1
        self._g_steps: list[int] = []
        self._g_loss: list[float] = []
        self._g_lr: list[float] = []
        self._g_norms: list[float] | None = None

    # -- public -----------------------------------------------------------------------------
    def decode(self, records: Iterable[dict[str, Any]]) -> list[ev.Event]:
        self._records(records)
        return self._take()

    def decode_bytes(self, data: bytes, *, steps: bool = True, final: bool = True) -> list[ev.Event]:
        """Events for `data`, complete metrics.jsonl lines; `steps=False` skips the step records.

        `final=False` keeps the last step group open, to be continued by the next call
        (a file read in chunks); `finish()` then emits it.
        """
        self._bytes(data, steps)
        return self._take() if final else self._take_closed()

    def finish(self) -> list[ev.Event]:
        """Emit the step group still open (after decode_bytes(..., final=False))."""
        return self._take()

    def _take(self) -> list[ev.Event]:
        self._close()
        return self._take_closed()

    def _take_closed(self) -> list[ev.Event]:
        out, self._out = self._out, []
        return out

    # -- step groups ----------------------------------------------------------------------------
    def _add_group(self, t: float, epoch: int, steps: list[int], loss: list[float], lr: list[float],
                   norms: list[float] | None) -> None:
        if (self._g_steps and t == self._g_t and epoch == self._g_epoch and steps[0] == self._g_steps[-1] + 1
                and (norms is None) == (self._g_norms is None)):
            self._g_steps += steps
            self._g_loss += loss
            self._g_lr += lr
            if norms is not None:
                self._g_norms += norms  # type: ignore[operator]
            return
        self._close()
        self._g_t, self._g_epoch, self._g_steps, self._g_loss, self._g_lr, self._g_norms = (
            t, epoch, steps, loss, lr, norms)

    def _close(self) -> None:
        steps = self._g_steps
        if not steps:
            return
        t, epoch = self._g_t if self._g_t is not None else (self._prev_t or 0.0), self._g_epoch
        if self._prev_t is not None:
            elapsed = t - self._prev_t - self._paused
            if elapsed > 0:
                self._rate = len(steps) / elapsed
        self._prev_t, self._paused = t, 0.0
        spe = self.steps_per_epoch
        epoch_step = min(max(steps[-1] - (epoch - 1) * spe, 0), spe)
        self._out.append(ev.StepStats(
            steps[-1], t, epoch=epoch, steps=steps, loss=self._g_loss, lr=self._g_lr, grad_norm=self._g_norms,
            epoch_step=epoch_step, steps_per_epoch=spe, steps_per_sec=self._rate,
            samples_per_sec=self._rate * self.batch, data_wait=None))
        self._g_t, self._g_steps, self._g_loss, self._g_lr, self._g_norms = None, [], [], [], None

    # -- dict records -----------------------------------------------------------------------------
    def _records(self, records: Iterable[dict[str, Any]]) -> None:
        group: list[dict[str, Any]] = []  # consecutive step records of one flush
        g_t: Any = None
        g_epoch: Any = None
        next_step = 0
        for record in records:
            try:
                kind = record.get("kind")
            except AttributeError:
                continue  # not a dict
            if kind == "step":
                step = record.get("step")
                if type(step) is not int:
                    continue
                t, epoch = record.get("t"), record.get("epoch")
                if group and not (t == g_t and epoch == g_epoch and step == next_step):
                    self._step_dicts(group)
                    group = []
                if not group:
                    g_t, g_epoch = t, epoch
                group.append(record)
                next_step = step + 1
                continue
            if group:
                self._step_dicts(group)
                group = []
            self._other(record, kind)
        if group:
            self._step_dicts(group)

    def _step_dicts(self, group: list[dict[str, Any]]) -> None:
        first = group[0]
        steps = [r["step"] for r in group]
        loss = _nan_for_none([r.get("loss") for r in group])
        lr = _nan_for_none([r.get("lr") for r in group])
        norms = _nan_for_none([r.get("grad_norm") for r in group]) if "grad_norm" in first else None
        t = first.get("t")
        epoch = first.get("epoch")
        self._add_group(float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None,  # type: ignore[arg-type]
                        epoch if type(epoch) is int else 1, steps, loss, lr, norms)

    def _other(self, record: dict[str, Any], kind: Any) -> None:
        self._close()
        try:
            if kind == "eval":
                event: ev.Event | None = _eval_done(record)
            elif kind == "event":
                spec = _SPECS.get(record.get("event"))  # type: ignore[arg-type]
                event = spec.build(record) if spec is not None else None
            else:
                event = None  # a kind from a newer tuitrain
        except Exception:  # a garbled record is skipped, never the end of the replay
            event = None
        if event is None:
            return
        if isinstance(event, ev.RunStarted):
            config = event.config if isinstance(event.config, dict) else {}
            self.batch = _positive(config.get("batch_size")) * _positive(config.get("accumulate"))
            self.steps_per_epoch = _positive(event.steps_per_epoch)
            self._prev_t, self._paused, self._rate = event.t, 0.0, 0.0
        elif isinstance(event, ev.Resumed) and isinstance(event.paused_seconds, (int, float)):
            self._paused += event.paused_seconds
        self._out.append(event)

    # -- raw lines: the fast path for step records -------------------------------------------------
    def _bytes(self, data: bytes, steps: bool) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if data.startswith(_STEP_PREFIX, pos):
                # A run of step lines, up to the next eval/event line (any other line inside makes
                # the fast path refuse the run, which is then parsed line by line).
                nxt = data.find(_OTHER_LINE, pos)
                stop = end if nxt < 0 else nxt + 1
                segment = data[pos:stop]
                if steps:
                    if not self._fast_steps(segment):
                        self._records(parse_lines(segment))
                elif segment.count(b"\n") != segment.count(_STEP_PREFIX):
                    # Not all step lines: an eval or event line written another way (with spaces, as
                    # json.dumps does by default) sits inside. Skipping the run whole would lose it.
                    self._records([r for r in parse_lines(segment) if r.get("kind") != "step"])
                pos = stop
            else:
                nl = data.find(b"\n", pos)
                stop = end if nl < 0 else nl + 1
                records = parse_lines(data[pos:stop])
                if steps:
                    self._records(records)
                else:
                    self._records([r for r in records if r.get("kind") != "step"])
                pos = stop

    def _fast_steps(self, seg: bytes) -> bool:
        """Decode a run of step lines written by StepStats.records() without a dict per line.

        Returns False (nothing decoded) if the run is not exactly in that format.
        """
        n = seg.count(b"\n")
        if n == 0 or not seg.endswith(b"\n") or seg.count(_STEP_PREFIX) != n:
            return False
        with_norms = seg.count(b',"grad_norm":')
        if with_norms not in (0, n):
            return False
        k = 7 if with_norms else 6  # fields a line leaves after the translation, the empty one included
        # '{"kind":"step","step":1,"epoch":1,"t":5.0,"loss":0.5,"lr":1e-05}\n'
        #   -> (letters but e deleted, e -> E) ',E,E1,E1,5.0,0.5,1E-05,' -> (",E" -> ",") ',,1,1,5.0,0.5,1E-05,'
        # An exponent's E always follows a digit, so it survives; null becomes an empty field.
        parts = (b"," + seg).translate(_STEP_TABLE, _STEP_DELETE).replace(b",E", b",").split(b",")
        parts = parts[1:]
        try:
            steps = list(map(int, parts[1::k]))
            epochs, ts = parts[2::k], parts[3::k]
            loss = _floats(parts[4::k])
            lr = _floats(parts[5::k], repeats=True)
            norms = _floats(parts[6::k]) if with_norms else None
        except ValueError:
            return False
        # Check the key order on the first and last line against the JSON parser.
        for i, line in ((0, seg[:seg.find(b"\n")]), (n - 1, seg[seg.rfind(b"\n", 0, len(seg) - 1) + 1:-1])):
            try:
                r = json.loads(line)
                same = (r["step"] == steps[i] and r["epoch"] == int(epochs[i]) and r["t"] == float(ts[i])
                        and _same(r["loss"], loss[i]) and _same(r["lr"], lr[i])
                        and (norms is None or _same(r["grad_norm"], norms[i])))
            except (ValueError, KeyError, TypeError):
                return False
            if not same:
                return False
        # Flush groups: the same t and epoch, consecutive steps.
        bounds = [0]
        if ts[0] == ts[-1] and ts.count(ts[0]) == n:
            bounds.append(n)
        else:
            for _, run in groupby(ts):
                bounds.append(bounds[-1] + sum(1 for _ in run))
        cuts = set(bounds)
        if epochs[0] != epochs[-1] or epochs.count(epochs[0]) != n:
            cuts.update(i for i in range(1, n) if epochs[i] != epochs[i - 1])
        if steps[-1] - steps[0] != n - 1 or steps != list(range(steps[0], steps[0] + n)):
            cuts.update(i for i in range(1, n) if steps[i] != steps[i - 1] + 1)
        if len(cuts) != len(bounds):
            bounds = sorted(cuts)
        try:
            groups = [(float(ts[a]), int(epochs[a]), a, b) for a, b in zip(bounds, bounds[1:])]
        except ValueError:
            return False
        for t, epoch, a, b in groups:
            self._add_group(t, epoch, steps[a:b], loss[a:b], lr[a:b], norms[a:b] if norms is not None else None)
        return True


_STEP_PREFIX = b'{"kind":"step","step":'
_OTHER_LINE = b'\n{"kind":"e'  # the start of an eval or event line
_STEP_DELETE = b'{}":_' + bytes(c for c in range(ord("a"), ord("z") + 1) if c != ord("e"))
_STEP_TABLE = bytes.maketrans(b"\ne", b",E")


def _floats(column: list[bytes], repeats: bool = False) -> list[float]:
    """Numbers as written by StepStats.records(); an empty field (null: non-finite) is NaN.

    `repeats`: the column often repeats values (the LR under a constant schedule):
    each distinct one is parsed once.
    """
    if repeats:
        table = dict.fromkeys(column)
        if len(table) * 4 <= len(column):
            for v in table:
                table[v] = float(v) if v else _NAN
            return list(map(table.__getitem__, column))
    try:
        return list(map(float, column))
    except ValueError:
        return [float(v) if v else _NAN for v in column]


def _same(recorded: Any, value: float) -> bool:
    return value == recorded or (recorded is None and value != value)


def _nan_for_none(values: list[Any]) -> list[Any]:
    return [_NAN if v is None else v for v in values] if None in values else values


def events_from_records(records: Iterable[dict[str, Any]]) -> list[ev.Event]:
    """The engine events behind metrics.jsonl records (see the module docstring), in order.

    Stateless: for a file that grows, use one MetricsFollower (its RecordDecoder keeps the state),
    so that steps/s and the batch size carry over from one piece to the next.
    """
    return RecordDecoder().decode(records)


def _positive(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


# -- reading ------------------------------------------------------------------------------------

def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """The records in `data` (complete lines of metrics.jsonl), skipping garbled ones."""
    if not data:
        return []
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    try:
        # One parse for the whole chunk is much faster than one call per line.
        records = json.loads(b"[" + b",".join(line for line in lines if line.strip()) + b"]")
    except (ValueError, RecursionError):
        records = []
        loads = json.loads
        for line in lines:
            try:
                records.append(loads(line))
            except (ValueError, RecursionError):
                continue
    if not all(type(r) is dict for r in records):
        records = [r for r in records if type(r) is dict]
    return records


#: Bytes read and decoded at a time (bounds the temporary memory of a big first read).
CHUNK = 8 << 20
#: A line longer than this is no record tuitrain writes (a flood of NULs after a crash, say):
#: it is skipped, scanned a chunk at a time and never held in memory.
MAX_RECORD = 8 << 20


class LineReader:
    """Complete lines of a growing file, from a byte offset on, in bounded pieces.

    The follower's line source. Each byte is read once (a line split over chunks
    is joined once, when its newline arrives), so a region without newlines costs
    linear time, and a line longer than `max_line` is skipped as it is scanned,
    never held whole: `skipped` counts those, `skipped_at` is where the first began.
    A partial last line stays unread until it is completed (a resumed run cuts a
    torn line and appends). A replaced or shrunk file starts over from the top.
    """

    def __init__(self, path: str | os.PathLike[str], max_line: int | None = None) -> None:
        self.path = Path(path)
        self.max_line = MAX_RECORD if max_line is None else max_line
        self.offset = 0
        """Just past the last complete line handed out (or skipped)."""
        self.skipped = 0
        self.skipped_at: int | None = None
        self.behind = False
        """The last read() stopped at its byte budget with more of the file unread."""
        self._ino: int | None = None
        self._scan = 0  # bytes after `offset` of an over-long line already skipped
        self._skipping = False

    def read(self, chunk: int, budget: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(byte offset, complete lines) pieces from the offset on; about `budget` bytes at most
        (None: to the end of the file). Advances the offset as each piece is taken."""
        self.behind = False
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        with f:
            st = os.fstat(f.fileno())
            if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset + self._scan:
                self.offset, self._scan, self._skipping = 0, 0, False  # a new file
            self._ino = st.st_ino
            if st.st_size <= self.offset + self._scan:
                return
            f.seek(self.offset + self._scan)
            pieces: list[bytes] = []  # the start of a line longer than a chunk, joined when it ends
            taken = 0
            yielded = False
            while True:
                # At the budget, stop; a partial line after what was handed out is read again next
                # time, from its start (the offset). Only a line begun at the offset and longer than
                # the budget is read on to its end (at most max_line), or no call would get past it.
                if budget is not None and taken >= budget and (not pieces or yielded):
                    self.behind = f.tell() < st.st_size
                    break
                data = f.read(chunk)
                if not data:
                    break
                taken += len(data)
                if self._skipping:
                    nl = data.find(b"\n")
                    if nl < 0:
                        self._scan += len(data)
                        continue
                    self.offset += self._scan + nl + 1
                    self._scan, self._skipping = 0, False
                    data = data[nl + 1:]
                cut = data.rfind(b"\n")
                if cut < 0:
                    pieces.append(data)
                    if sum(map(len, pieces)) > self.max_line:
                        self._skip(sum(map(len, pieces)))
                        pieces = []
                    continue
                block = b"".join(pieces) + data[:cut + 1] if pieces else data[:cut + 1]
                pieces = []
                start = self.offset
                self.offset += len(block)
                rest = data[cut + 1:]
                if rest:
                    pieces.append(rest)
                yield start, block
                yielded = True
                if pieces and len(pieces[0]) > self.max_line:
                    self._skip(len(pieces[0]))
                    pieces = []
            # A partial line (not over-long) is read again next time, from its start.

    def _skip(self, scanned: int) -> None:
        """The line at `offset` is over-long: skip what was scanned of it, and the rest as it comes."""
        self._skipping = True
        self._scan = scanned
        self.skipped += 1
        if self.skipped_at is None:
            self.skipped_at = self.offset


class MetricsFollower:
    """The one follower of metrics.jsonl: a bounded piece of the file per call, decoded into events.

    Every reader uses it: load_history (the whole file at once), `tuitrain watch`
    (RemoteRun: `chunk` bytes a call, so the first frame of a million-step run
    comes at once and the watcher stays responsive) and the tests. The lines come
    from a LineReader (a partial last line is read again once completed, a
    replaced or shrunk file starts over, a line over `max_line` is skipped as it
    is scanned); the events from one RecordDecoder kept for the follower's life,
    which carries what a piece alone cannot know: the batch size and steps per
    epoch (from RunStarted) and the time of the previous flush, so steps/s and
    samples/s are right even when a read holds a single flush.
    """

    def __init__(self, path: str | os.PathLike[str], chunk: int | None = None, *,
                 max_line: int | None = None) -> None:
        """`chunk`: about how many bytes one read_events() call reads (None: to the end of the file)."""
        self.lines = LineReader(path, max_line)
        self.decoder = RecordDecoder()
        self.chunk = chunk

    @property
    def path(self) -> Path:
        return self.lines.path

    @property
    def offset(self) -> int:
        """Just past the last complete line read (or skipped)."""
        return self.lines.offset

    @property
    def behind(self) -> bool:
        """The last read stopped at its chunk with more of the file waiting: read again without sleeping."""
        return self.lines.behind

    @property
    def skipped(self) -> int:
        """Over-long lines skipped so far (no record tuitrain writes)."""
        return self.lines.skipped

    @property
    def skipped_at(self) -> int | None:
        """The byte offset where the first skipped line began."""
        return self.lines.skipped_at

    @property
    def max_line(self) -> int:
        return self.lines.max_line

    def read_events(self, *, steps_from: int = 0) -> list[ev.Event]:
        """The engine events for what was appended since the last call (at most about `chunk` bytes).

        While `behind`, the step records at the end of the piece wait for the next call,
        which continues their flush (a flush cut in two would read as two slower ones).

        `steps_from`: a byte offset in the file before which step records are skipped
        (the other records are all decoded); see load_history(max_step_records=...).
        """
        out: list[ev.Event] = []
        decode = self.decoder.decode_bytes
        piece = self.chunk if self.chunk is not None else CHUNK
        for start, block in self.lines.read(piece, budget=self.chunk):
            if start + len(block) <= steps_from:
                out += decode(block, steps=False, final=False)
            elif start < steps_from:
                cut = steps_from - start
                out += decode(block[:cut], steps=False, final=False)
                out += decode(block[cut:], final=False)
            else:
                out += decode(block, final=False)
        if self.behind:
            return out  # the last flush may go on in the next piece: one StepStats, with its real steps/s
        return out + self.decoder.finish()


def load_history(run_dir: str | os.PathLike[str], max_step_records: int | None = None) -> list[ev.Event]:
    """Every event metrics.jsonl holds for RUN_DIR (empty if there is none).

    `max_step_records`: keep only about the last N step records (every other
    record is still decoded), for a quick first look at a very long run.
    """
    follower = MetricsFollower(Path(run_dir) / "metrics.jsonl")
    steps_from = 0
    if max_step_records is not None:
        steps_from = _offset_of_last_steps(follower.path, max_step_records)
    return follower.read_events(steps_from=steps_from)


def stream_events(path: str | os.PathLike[str], *, steps: bool = True,
                  chunk: int = CHUNK) -> Iterator[list[ev.Event]]:
    """The events of metrics.jsonl as it is now, in pieces of about `chunk` bytes of the file each.

    For readers that must not hold a whole run (an export of a million-step run):
    memory stays about one piece's worth. A live run is read up to where it is;
    `steps=False` skips the step records (every other record is decoded).
    """
    follower = MetricsFollower(path, chunk=chunk)
    while True:
        events = follower.read_events(steps_from=0 if steps else 1 << 62)
        if events:
            yield events
        if not follower.behind:
            return


def _offset_of_last_steps(path: Path, count: int) -> int:
    """A byte offset before which the file holds all but about its last `count` step lines."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            want = max(count, 0) * 120 + 4096  # a step line is ~60-110 bytes
            while True:
                start = max(0, size - want)
                f.seek(start)
                tail = f.read(size - start)
                found = tail.count(b'\n{"kind":"step"')
                if found >= count or start == 0:
                    break
                want *= 2
    except OSError:
        return 0
    if start == 0 and found < count:
        return 0
    # Walk back from the end to the line that starts the last `count` step lines.
    pos, seen = len(tail), 0
    while seen < count:
        pos = tail.rfind(b'\n{"kind":"step"', 0, pos)
        if pos < 0:
            return start
        seen += 1
    return start + pos + 1
