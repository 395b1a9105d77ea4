"""`tuitrain plot`: a run's curves as a PNG or SVG, checked as a user would check the file.

Run directories are written here in the engine's own record format (the
events' records(), as the Trainer writes them), so each test knows exactly
which interventions happened at which step; one test plots a real live run.
The PNG's size is read from its IHDR chunk, the SVG parsed with ElementTree
(each intervention is a group whose id is `<event>-<panel>-<run>-<step>`).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import assert_usage_error, in_process, tuitrain
from conftest import wait_until
from tuitrain.engine import events as ev

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_790_000_000.0


def write_run(run_dir: Path, *, steps: int = 600, per_epoch: int = 100, lr_change_at: int | None = 250,
              nan_at: int | None = None, end: str | None = "finished", preset: str = "circles",
              torn_tail: bool = False) -> Path:
    """A run directory as the engine leaves it: config.json and metrics.jsonl (flushes of 50 steps, an
    evaluation per epoch); with `lr_change_at`, a pause, an LR change to a tenth, a resume and a manual
    checkpoint at that step; `end` None leaves it without an end record (a run still going)."""
    run_dir.mkdir(parents=True)
    config = {"preset": preset, "epochs": steps // per_epoch, "batch_size": 16, "accumulate": 1}
    (run_dir / "config.json").write_text(json.dumps(config))
    records: list[ev.Event] = [ev.RunStarted(
        0, T0, run_dir=str(run_dir), preset=preset, task="classification", metric="acc", device="cpu",
        device_name="cpu", config=config, epoch=0, steps_per_epoch=per_epoch, total_steps=steps,
        train_size=1600, val_size=400, parameters=100, amp="off")]
    lr = 0.01
    for first in range(1, steps + 1, 50):
        window = list(range(first, min(steps, first + 49) + 1))
        losses = [math.nan if s == nan_at else 0.7 * math.exp(-s / 200) + 0.02 * (s % 7) / 7 for s in window]
        t = T0 + window[-1] / 100
        records.append(ev.StepStats(window[-1], t, epoch=(first - 1) // per_epoch + 1, steps=window, loss=losses,
                                    lr=[lr] * len(window), grad_norm=None, epoch_step=0, steps_per_epoch=per_epoch,
                                    steps_per_sec=100.0, samples_per_sec=1600.0))
        last = window[-1]
        if last == nan_at or (nan_at is not None and first <= nan_at <= last):
            records.append(ev.NonFinite(nan_at, t, action="skip"))
        if last == lr_change_at:
            records += [ev.Paused(last, t), ev.LRChanged(last, t, old_lr=lr, new_lr=lr / 10, multiplier=0.1),
                        ev.Resumed(last, t + 1, paused_seconds=1.0),
                        ev.CheckpointSaved(last, t + 1, path=f"checkpoints/step-{last}.pt", bytes=1000,
                                           reason="manual")]
            lr /= 10
        if last % per_epoch == 0:
            epoch = last // per_epoch
            val = 0.6 * math.exp(-last / 200) + 0.03
            records.append(ev.EvalDone(last, t, epoch=epoch, train_loss=val + 0.01, train_metric=0.8 + epoch / 100,
                                       val_loss=val, val_metric=0.81 + epoch / 100, metric="acc", lr=lr,
                                       best_val_loss=val, best_epoch=epoch, improved=True, patience_used=0,
                                       patience=None, epoch_end=True))
    if end is not None:
        records.append(ev.RunEnded(steps, T0 + steps / 100 + 2, status=end, summary={"status": end, "steps": steps}))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for record in records:
            for line in record.records():
                f.write(line + "\n")
        if torn_tail:
            f.write('{"kind":"step","step":99999,"epo')  # a flush being written
    return run_dir


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's signature and IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND", "the file does not end with IEND: cut short"
    return width, height


def svg(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def svg_ids(root: ET.Element) -> set[str]:
    return {el.get("id", "") for el in root.iter()}


def svg_text(root: ET.Element) -> str:
    return "\n".join("".join(el.itertext()) for el in root.iter(f"{SVG}text"))


def plot(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    return in_process("plot", *args)


def no_temp_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


# -- the picture -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size,dpi", [(None, None), ("640x480", None), ("1234x567", "73")])
def test_the_png_is_a_png_of_the_requested_pixel_size(tmp_path: Path, size: str | None, dpi: str | None) -> None:
    R = write_run(tmp_path / "R")
    out = tmp_path / "curves.png"
    extra = [*(["--size", size] if size else []), *(["--dpi", dpi] if dpi else [])]
    rc, stdout, err = plot(R, "-o", out, *extra)
    assert rc == 0, err
    assert stdout.strip() == str(out)
    want = tuple(map(int, size.split("x"))) if size else (1200, 900)
    assert png_size(out) == want
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # a normal file, not mkstemp's 0600
    assert no_temp_files(tmp_path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_default_output_is_curves_png_in_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    R = write_run(tmp_path / "R")
    monkeypatch.chdir(tmp_path)
    rc, _, err = plot(R)
    assert rc == 0, err
    assert png_size(tmp_path / "curves.png") == (1200, 900)


def test_an_lr_change_is_marked_on_every_panel_in_the_svg(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R", lr_change_at=250)
    out = tmp_path / "p.svg"
    rc, _, err = plot(R, "-o", out)
    assert rc == 0, err
    root = svg(out)
    assert root.tag == f"{SVG}svg"
    ids = svg_ids(root)
    for panel in ("loss", "metric", "lr"):
        for event in ("lr_changed", "paused", "checkpoint"):
            assert f"{event}-{panel}-0-250" in ids, (event, panel)
    # Each mark is a vertical line at the same x on every panel.
    xs = set()
    for panel in ("loss", "metric", "lr"):
        group = next(el for el in root.iter() if el.get("id") == f"lr_changed-{panel}-0-250")
        path = next(group.iter(f"{SVG}path")).get("d", "")
        x = path.split()[1::3][:2]  # "M x y L x y"
        assert x[0] == x[1], path
        xs.add(x[0])
    assert len(xs) == 1
    text = svg_text(root)
    assert "LR change" in text and "pause" in text and "checkpoint" in text  # the marks' legend


def test_a_run_without_interventions_has_no_marks(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R", lr_change_at=None)
    out = tmp_path / "p.svg"
    assert plot(R, "-o", out)[0] == 0
    ids = svg_ids(svg(out))
    assert not [i for i in ids if i.split("-")[0] in ("lr_changed", "paused", "checkpoint", "nan", "stopped", "hint")]


def test_the_title_names_the_run_preset_status_steps_and_final_numbers(tmp_path: Path) -> None:
    R = write_run(tmp_path / "my-run", steps=600, end="stopped", preset="moons")
    out = tmp_path / "p.svg"
    assert plot(R, "-o", out)[0] == 0
    text = svg_text(svg(out))
    title = next(line for line in text.splitlines() if line.startswith("my-run"))
    assert "moons" in title and "STOPPED" in title and "600 steps" in title
    val = 0.6 * math.exp(-600 / 200) + 0.03
    assert f"val loss {val:.4g}" in title and f"val acc {0.81 + 6 / 100:.4g}" in title
    assert "loss 0." in title.split("val loss")[0]


def test_several_runs_are_overlaid_one_colour_each_with_their_names(tmp_path: Path) -> None:
    from tuitrain.tui.plot_figure import RUN_COLOURS

    A = write_run(tmp_path / "alpha", lr_change_at=250)
    B = write_run(tmp_path / "beta", steps=800, lr_change_at=500)
    out = tmp_path / "p.svg"
    rc, _, err = plot(A, B, "-o", out)
    assert rc == 0, err
    root = svg(out)
    ids = svg_ids(root)
    assert "lr_changed-loss-0-250" in ids and "lr_changed-loss-1-500" in ids
    assert "lr_changed-loss-0-500" not in ids
    text = svg_text(root)
    lines = text.splitlines()
    assert any(line.startswith("alpha ·") and "600 steps" in line for line in lines)
    assert any(line.startswith("beta ·") and "800 steps" in line for line in lines)
    assert "alpha" in lines and "beta" in lines  # the legend entries
    raw = out.read_text()
    for colour in RUN_COLOURS[:2]:
        assert f"stroke: {colour}" in raw


def test_runs_with_the_same_name_are_told_apart_by_their_path(tmp_path: Path) -> None:
    A = write_run(tmp_path / "a" / "run")
    B = write_run(tmp_path / "b" / "run", steps=400)
    out = tmp_path / "p.svg"
    assert plot(A, B, "-o", out)[0] == 0
    lines = svg_text(svg(out)).splitlines()
    assert str(A) in lines and str(B) in lines


def test_the_smoothed_curve_is_the_dashboards_ema(tmp_path: Path) -> None:
    """Same Series, same EMA, same default weight as the dashboard's loss plot."""
    from tuitrain.tui import plot_figure
    from tuitrain.tui.history import DEFAULT_SMOOTHING
    from tuitrain.tui.plot import read_run

    run = read_run(write_run(tmp_path / "R", steps=6000, per_epoch=1000))
    for weight in (DEFAULT_SMOOTHING, 0.9):
        fig = plot_figure.draw([run], size=(800, 600), dpi=100, smoothing=weight, log_scale=False)
        loss_ax = fig.axes[0]
        want = run.state.loss.ema(weight, 800)
        drawn = [line for line in loss_ax.get_lines() if list(line.get_xdata()) == want.x]
        assert any(list(line.get_ydata()) == pytest.approx(want.y) for line in drawn), weight
    assert DEFAULT_SMOOTHING == 0.6  # the dashboard's opening value, as the README says


def test_smoothing_zero_draws_no_smoothed_curve_and_says_so(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R")
    out0, out6 = tmp_path / "s0.svg", tmp_path / "s6.svg"
    assert plot(R, "-o", out0, "--smoothing", "0")[0] == 0
    assert plot(R, "-o", out6)[0] == 0
    assert "smoothed" not in svg_text(svg(out0))
    assert "train (smoothed 0.60)" in svg_text(svg(out6))


def test_log_scale_for_the_loss(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R")
    out = tmp_path / "p.svg"
    assert plot(R, "-o", out, "--log")[0] == 0
    assert "loss (log)" in svg_text(svg(out))


def test_a_nan_loss_is_a_gap_and_a_mark_not_a_failure(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R", lr_change_at=None, nan_at=333)
    out = tmp_path / "p.svg"
    rc, _, err = plot(R, "-o", out)
    assert rc == 0, err
    assert "nan-loss-0-333" in svg_ids(svg(out))


def test_a_run_that_has_not_recorded_a_step_yet_is_drawn_and_says_so(tmp_path: Path) -> None:
    R = tmp_path / "R"
    R.mkdir()
    (R / "config.json").write_text("{}")
    out = tmp_path / "p.png"
    rc, _, err = plot(R, "-o", out, "--size", "600x400")
    assert rc == 0, err
    assert png_size(out) == (600, 400)


def test_a_run_still_writing_is_plotted_up_to_its_last_complete_line(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R", end=None, torn_tail=True)
    out = tmp_path / "p.svg"
    rc, _, err = plot(R, "-o", out)
    assert rc == 0, err
    title = next(line for line in svg_text(svg(out)).splitlines() if line.startswith("R ·"))
    # No end record, no summary, no run.pid: nothing says how it stands.
    assert "600 steps" in title and "UNKNOWN" in title


def test_a_failed_write_leaves_the_previous_picture_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    from tuitrain.tui import plot_figure

    R = write_run(tmp_path / "R")
    out = tmp_path / "p.png"
    assert plot(R, "-o", out)[0] == 0
    before = out.read_bytes()

    def full_disk(fig: Any, file: Any, fmt: str) -> None:
        file.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot_figure, "save", full_disk)
    rc, _, err = plot(R, "-o", out)
    assert_usage_error(rc, err, "cannot write", "No space left on device")
    assert out.read_bytes() == before
    assert no_temp_files(tmp_path)


# -- bad input ---------------------------------------------------------------------------------------

def test_help_is_usage_and_exit_0(tmp_path: Path) -> None:
    rc, out, _ = plot("--help")
    assert rc == 0 and out.startswith("usage: tuitrain plot RUN_DIR") and "--smoothing" in out


@pytest.mark.parametrize("args,needles", [
    ([], ["needs a run directory"]),
    (["{tmp}/missing"], ["no such run directory", "missing"]),
    (["{tmp}/plain"], ["is not a run directory"]),
    (["{R}", "{tmp}/missing"], ["no such run directory"]),
    (["{R}", "--size", "big"], ["--size", "WIDTHxHEIGHT"]),
    (["{R}", "--size", "1200"], ["--size"]),
    (["{R}", "--size", "0x0"], ["--size", "300 to 8000"]),
    (["{R}", "--size", "100000x100"], ["--size", "300 to 8000"]),
    (["{R}", "--size", "-1200x900"], ["--size"]),
    (["{R}", "--size"], ["--size"]),
    (["{R}", "--dpi", "0"], ["--dpi"]),
    (["{R}", "--dpi", "abc"], ["--dpi", "integer"]),
    (["{R}", "--smoothing", "1"], ["--smoothing", "0 to 0.99"]),
    (["{R}", "--smoothing", "-0.1"], ["--smoothing"]),
    (["{R}", "--smoothing", "nan"], ["--smoothing"]),
    (["{R}", "-o", "{tmp}/curves.jpg"], [".png or .svg"]),
    (["{R}", "-o", "{tmp}/curves"], [".png or .svg"]),
    (["{R}", "-o", "{tmp}/nofolder/curves.png"], ["no such folder"]),
    (["{R}", "-o", "{tmp}/plain/file.txt/curves.png"], ["no such folder"]),
    (["{R}", "-o", "{tmp}/adir.png"], ["is a folder"]),
    (["{R}", "--bogus"], ["unrecognized arguments", "--bogus"]),
])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path: Path, args: list[str],
                                                              needles: list[str]) -> None:
    R = write_run(tmp_path / "R")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("not a folder")
    (tmp_path / "adir.png").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(tmp=tmp_path, R=R) for a in args]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc, out, err = plot(*argv)
    finally:
        os.chdir(old)
    assert_usage_error(rc, err, *needles)
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_output_folder_is_refused(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = plot(R, "-o", ro / "c.png")
    finally:
        ro.chmod(0o755)
    assert_usage_error(rc, err, "cannot write")


# -- what the command imports ---------------------------------------------------------------------------

MISSING_MATPLOTLIB = textwrap.dedent("""
    import sys
    sys.modules["matplotlib"] = None  # import matplotlib now raises ImportError, as when it is not installed
    from tuitrain.tui.cli import main
    sys.exit(main(["plot", sys.argv[1], "-o", sys.argv[2]]))
""")

NO_TORCH = textwrap.dedent("""
    import sys
    from tuitrain.tui.cli import main
    rc = main(["plot", sys.argv[1], "-o", sys.argv[2]])
    assert rc == 0, rc
    assert "torch" not in sys.modules, "torch imported"
    assert "textual" not in sys.modules, "textual imported"
    print("ok")
""")


def test_without_matplotlib_it_says_what_to_install(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R")
    out = tmp_path / "p.png"
    p = subprocess.run([sys.executable, "-c", MISSING_MATPLOTLIB, str(R), str(out)], capture_output=True, text=True,
                       timeout=60)
    assert_usage_error(p.returncode, p.stderr, "matplotlib", "pip install 'tuitrain[plot]'")
    assert not out.exists()


def test_the_command_imports_neither_torch_nor_textual(tmp_path: Path) -> None:
    R = write_run(tmp_path / "R")
    out = tmp_path / "p.png"
    p = subprocess.run([sys.executable, "-c", NO_TORCH, str(R), str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr
    assert png_size(out) == (1200, 900)


# -- a live run ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="Unix sockets")
def test_a_live_run_is_plotted_while_it_trains(tmp_path: Path) -> None:
    """A real background run, paused and steered through its socket, plotted while it is still live."""
    from tuitrain.engine.commands import Pause, SetLR
    from tuitrain.engine.control import ControlClient
    from tuitrain.engine.rundir import pid_alive, read_metrics, read_pid, run_state

    R = tmp_path / "R"
    p = tuitrain("--preset", "circles", "--detach", "--run-dir", R, "--epochs", "100000", cwd=tmp_path, timeout=90)
    assert p.returncode == 0, p.stderr
    pid = int(read_pid(R)["pid"])
    try:
        def events(name: str) -> list[dict[str, Any]]:
            return [r for r in read_metrics(R / "metrics.jsonl") if r.get("event") == name]

        wait_until(lambda: any(r.get("kind") == "step" for r in read_metrics(R / "metrics.jsonl")), 60,
                   "the first steps")
        with ControlClient.connect(R) as client:
            client.send(Pause())
            wait_until(lambda: events("paused"), 30, "paused")
            client.send(SetLR(0.002))
            wait_until(lambda: events("lr_changed"), 30, "lr_changed")
        change = events("lr_changed")[0]["step"]
        out = tmp_path / "live.svg"
        rc, _, err = plot(R, "-o", out)
        assert rc == 0, err
        assert run_state(R) == "live"
        root = svg(out)
        assert f"lr_changed-loss-0-{change}" in svg_ids(root)
        title = next(line for line in svg_text(root).splitlines() if line.startswith("R ·"))
        assert "circles" in title and "PAUSED" in title
    finally:
        if pid_alive(pid):
            os.kill(pid, 15)
            wait_until(lambda: not pid_alive(pid), 60, "the run to end")
