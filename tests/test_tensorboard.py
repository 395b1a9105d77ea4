"""TensorBoard output: `--tensorboard` (live, a helper process) and `tuitrain export --tensorboard`, read back
with TensorBoard's own EventAccumulator and compared with metrics.jsonl."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from conftest import classifier_preset, make_cfg, run  # noqa: E402
from tuitrain.engine import events as ev  # noqa: E402
from tuitrain.engine.commands import Pause, Resume, SaveCheckpoint, SetLR  # noqa: E402
from tuitrain.engine.rundir import read_metrics  # noqa: E402
from tuitrain.tui import export  # noqa: E402


def f32(x: float | None) -> float:
    """What TensorBoard keeps of a number (simple_value is a float32); None (non-finite) is NaN."""
    return math.nan if x is None else struct.unpack("f", struct.pack("f", x))[0]


def same_values(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
                                    for (sa, va), (sb, vb) in zip(a, b))


def read_tb(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, str]]]]:
    """Every scalar and text series in `folder`, as TensorBoard's own reader sees them."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = {tag: [(t.step, t.tensor_proto.string_val[0].decode()) for t in acc.Tensors(tag)]
             for tag in acc.Tags()["tensors"]}
    return scalars, texts


def expected_scalars(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "eval"]
    out = {"train/loss": [(r["step"], f32(r["loss"])) for r in steps],
           "train/lr": [(r["step"], f32(r["lr"])) for r in steps],
           "val/loss": [(r["step"], f32(r["val_loss"])) for r in evals],
           "val/acc": [(r["step"], f32(r["val_acc"])) for r in evals]}
    if any("grad_norm" in r for r in steps):
        out["train/grad_norm"] = [(r["step"], f32(r["grad_norm"])) for r in steps]
    return out


def writer_processes() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "tuitrain.tui.tensorboard_log" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def test_a_live_run_writes_every_step_eval_and_intervention_and_its_writer_ends_with_it(tmp_path: Path):
    steered = {3: [Pause(), Resume(), SetLR(0.02), SaveCheckpoint()]}
    r = run(make_cfg(epochs=3, tensorboard=True, grad_clip=1.0), classifier_preset(), tmp_path / "run", at=steered)
    assert r.result.status == "finished"
    assert not writer_processes(), "the TensorBoard writer outlived its run"
    files = list((r.dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    records = list(read_metrics(r.dir / "metrics.jsonl"))
    scalars, texts = read_tb(r.dir / "tensorboard")
    for tag, want in expected_scalars(records).items():
        assert same_values(scalars[tag], want), tag
    assert [s for s, _ in scalars["epoch/train_loss"]] == [s for s, _ in scalars["val/loss"]]
    # steps/s: once per flush, at its last step, the rate the dashboard shows.
    flushes = [e for e in r.of(ev.StepStats)]
    assert [s for s, _ in scalars["train/steps_per_sec"]] == [e.steps[-1] for e in flushes]
    assert all(v > 0 for _, v in scalars["train/steps_per_sec"])
    # The interventions, at their steps, in the dashboard's words.
    assert texts["events/paused"] == [(3, "paused at step 3")]
    assert texts["events/resumed"][0][0] == 3
    ((lr_step, lr_text),) = texts["events/lr_changed"]
    assert lr_step == 3 and "-> 0.02" in lr_text
    assert any(step == 3 and "step-3.pt" in text and "manual" in text for step, text in texts["events/checkpoint"])
    assert texts["events/ended"][0][1].startswith("finished: ")
    assert "press q" not in texts["events/ended"][0][1]
    # lr_changed came in metrics.jsonl too: train/lr shows the new LR from the next step on.
    assert dict(scalars["train/lr"])[4] == f32(0.02)

    # An export of the same run gives the same scalars and texts.
    assert export.main([str(r.dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    again_scalars, again_texts = read_tb(tmp_path / "tb")
    assert again_scalars.keys() == scalars.keys()
    for tag in scalars:
        assert same_values(again_scalars[tag], scalars[tag]), tag
    assert again_texts == texts


def test_the_command_line_flag_writes_the_run_live_headless(tmp_path: Path):
    R = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tuitrain.tui.cli", "--preset", "circles", "--headless",
                           "--tensorboard", "--epochs", "2", "--run-dir", str(R)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    assert (R / "config.json").read_text().count('"tensorboard": true') == 1
    scalars, texts = read_tb(R / "tensorboard")
    records = list(read_metrics(R / "metrics.jsonl"))
    for tag, want in expected_scalars(records).items():
        assert same_values(scalars[tag], want), tag
    assert len(scalars["train/loss"]) == 2 * 125 and texts["events/started"][0][0] == 0


def test_without_the_tensorboard_package_the_flag_is_one_line_and_exit_2(tmp_path: Path):
    hide = "import sys; sys.modules['tensorboard'] = None; from tuitrain.tui.cli import main; "
    for argv in (["--preset", "circles", "--headless", "--tensorboard", "--run-dir", str(tmp_path / "R")],
                 ["export", str(tmp_path), "--tensorboard", str(tmp_path / "tb")]):
        proc = subprocess.run([sys.executable, "-c", hide + f"sys.exit(main({argv!r}))"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "pip install 'tuitrain[tensorboard]'" in proc.stderr
    assert not (tmp_path / "R").exists() and not (tmp_path / "tb").exists()


def step_lines(steps: range, t: float, loss: float, epoch: int = 1) -> list[str]:
    return ev.StepStats(steps[-1], t, epoch=epoch, steps=list(steps), loss=[loss + s for s in steps],
                        lr=[0.1] * len(steps), grad_norm=None, epoch_step=0, steps_per_epoch=100,
                        steps_per_sec=0.0, samples_per_sec=0.0).records()


def started(step: int, t: float, resumed: bool) -> str:
    return ev.RunStarted(step, t, run_dir="R", preset="circles", task="classification", metric="acc",
                         device="cpu", device_name="cpu", config={"batch_size": 4}, epoch=0,
                         steps_per_epoch=100, total_steps=100, train_size=400, val_size=100, parameters=10,
                         amp="off", resumed=resumed).to_json()


def test_an_export_shows_a_resumed_run_as_it_finally_went(tmp_path: Path):
    """Steps 6-10 were trained, lost (killed after the checkpoint at 5) and trained again after the resume."""
    R = tmp_path / "R"
    R.mkdir()
    lines = [started(0, 100.0, False), *step_lines(range(1, 6), 101.0, 0.0), *step_lines(range(6, 11), 102.0, 0.0),
             started(5, 200.0, True), *step_lines(range(6, 13), 201.0, 100.0)]
    (R / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert export.main([str(R), "--tensorboard", str(tmp_path / "tb")]) == 0
    scalars, texts = read_tb(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert dict(scalars["train/loss"])[6] == 106.0 and dict(scalars["train/loss"])[5] == 5.0
    assert [s for s, _ in texts["events/started"]] == [0, 5]
    # Live, the resumed run's writer cannot leave the lost steps out: its SessionLog START at step 6 makes
    # TensorBoard drop them. The same file read with the steps of both sessions shows that.
    live = tmp_path / "live"
    from tuitrain.engine.replay import RecordDecoder
    from tuitrain.tui.tensorboard_log import TensorBoardLog
    live.mkdir()
    with open(live / "events.out.tfevents.1.x.tuitrain", "wb") as f:
        log = TensorBoardLog(f)
        log.write(RecordDecoder().decode_bytes(("\n".join(lines) + "\n").encode()))
        log.flush()
    scalars, _ = read_tb(live)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert dict(scalars["train/loss"])[6] == 106.0


def test_a_second_export_replaces_the_first(tmp_path: Path):
    R = tmp_path / "R"
    R.mkdir()
    (R / "metrics.jsonl").write_text("\n".join([started(0, 100.0, False), *step_lines(range(1, 4), 101.0, 0.0)])
                                     + "\n")
    for _ in range(2):
        assert export.main([str(R), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert len(os.listdir(tmp_path / "tb")) == 1
    scalars, _ = read_tb(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]


def test_the_writer_ends_when_its_run_is_killed_and_keeps_what_it_was_given(tmp_path: Path):
    from conftest import wait_until

    R = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tuitrain.tui.cli", "--preset", "circles", "--headless",
                             "--tensorboard", "--epochs", "100000", "--run-dir", str(R)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def writer() -> psutil.Process | None:
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info["cmdline"] or []
                if "tuitrain.tui.tensorboard_log" in cmd and str(proc.pid) in cmd:
                    return p
            return None

        helper = wait_until(writer, timeout=60, what="the TensorBoard writer process")
        wait_until(lambda: helper.nice() >= 10, timeout=10, what="the writer at nice +10")
        wait_until(lambda: any(f.stat().st_size > 10_000 for f in (R / "tensorboard").glob("events.out.*")),
                   timeout=60, what="step records in the event file")
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not helper.is_running() or helper.status() == psutil.STATUS_ZOMBIE, timeout=10,
               what="the writer to end after its run was killed")
    scalars, _ = read_tb(R / "tensorboard")
    assert len(scalars["train/loss"]) > 100


def test_a_writer_that_falls_behind_never_makes_the_run_wait(tmp_path: Path, capfd):
    """The hand-off is bounded: with a writer that reads nothing, sends return at once and drops are counted."""
    from tuitrain.engine import tensorboard_feed
    from tuitrain.engine.tensorboard_feed import TensorBoardFeed

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    # A writer that never reads: it must outlive the test (killed at its end), not wait for anything.
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdin=read_end)  # wait-ok
    os.close(read_end)
    feed = TensorBoardFeed(stuck, write_end, tmp_path / "run" / "tensorboard")
    flush = "".join(step_lines(range(1, 1001), 1.0, 0.0)).replace("}{", "}\n{").encode() + b"\n"
    assert flush.count(b"\n") == 1000
    slowest = 0.0
    for _ in range(3 * tensorboard_feed.BACKLOG // len(flush)):
        began = time.perf_counter()
        feed.send(flush)
        slowest = max(slowest, time.perf_counter() - began)
    assert slowest < 0.05, f"a send took {slowest:.3f} s"
    assert 0 < len(feed._pending) <= tensorboard_feed.BACKLOG
    assert feed.dropped > 0 and feed.dropped % 1000 == 0
    began = time.perf_counter()
    feed.close(wait=0.5)
    assert time.perf_counter() - began < 3 and stuck.poll() is not None, "close() must end a stuck writer"
    err = capfd.readouterr().err
    assert "records were not written live" in err and f"{feed.dropped:,}" in err


def test_a_hint_is_a_text_entry_at_its_step_in_the_dashboards_words(tmp_path: Path):
    R = tmp_path / "R"
    R.mkdir()
    hint = ev.Hint(3, 101.5, rule="lr_too_high", message="the loss is rising", evidence="up 40% in 3 steps",
                   remedy="lower the LR (l)")
    (R / "metrics.jsonl").write_text("\n".join([started(0, 100.0, False), *step_lines(range(1, 4), 101.0, 0.0),
                                                hint.to_json(), *step_lines(range(4, 6), 102.0, 0.0)]) + "\n")
    assert export.main([str(R), "--tensorboard", str(tmp_path / "tb")]) == 0
    _, texts = read_tb(tmp_path / "tb")
    ((step, text),) = texts["events/hint"]
    assert step == 3 and "the loss is rising" in text
