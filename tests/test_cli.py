"""`tuitrain` as a user runs it: presets, overrides, the run directory, failures, pipes.

Each test runs the installed console script in a subprocess with cwd=tmp_path
and --run-dir under it; stdout is a pipe, so the run is headless.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from cli_helpers import (CIRCLES_STEPS_PER_EPOCH, EPOCH_LINE, EXAMPLE, TUITRAIN, cli_env, in_process, load_ckpt,
                         metrics, read_json, tuitrain, write_preset)

BUILTINS = ("circles", "moons", "spiral", "xor", "sine")

#: A model whose output does not depend on its weights: the gradients are zero,
#: Adam leaves the weights alone, and the validation loss is ln 2 every epoch.
FLAT_PRESET = """
    import torch
    from torch import nn
    from tuitrain.presets import Data

    DESCRIPTION = "random labels, a model that cannot learn"
    DEFAULTS = {"batch_size": 16, "epochs": 10}

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return torch.zeros(len(x), 2) + 0 * self.w

    def make_data(seed):
        g = torch.Generator().manual_seed(seed)
        def split(n):
            return torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)
        return Data(train=split(64), val=split(32))

    def make_model():
        return Flat()
"""

#: Training forward number 31 raises: 30 optimizer steps happen first.
BOOM_PRESET = """
    import torch
    from torch import nn
    from tuitrain.presets import Data

    DEFAULTS = {"batch_size": 16, "epochs": 2}
    CALLS = 0

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            global CALLS
            CALLS += 1
            if CALLS > 30:
                raise RuntimeError("boom")
            return self.lin(x)

    def make_data(seed):
        g = torch.Generator().manual_seed(seed)
        def split(n):
            return torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)
        return Data(train=split(1600), val=split(64))

    def make_model():
        return Boom()
"""

BAD_DATA_PRESET = """
    from torch import nn

    def make_data(seed):
        raise ValueError("no data here")

    def make_model():
        return nn.Linear(2, 2)
"""


def test_list_presets_names_each_builtin_with_a_description(tmp_path: Path) -> None:
    p = tuitrain("--list-presets", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    for name in BUILTINS:
        row = [line for line in lines if line.split()[:1] == [name]]
        assert len(row) == 1, f"{name} not listed once in {lines}"
        description = row[0][len(name):].strip()
        assert len(description) > 10, row[0]
    assert [line.split()[0] for line in lines[:5]] == list(BUILTINS)
    assert list(tmp_path.iterdir()) == []


def test_the_preset_table_matches_each_presets_own_name_and_description() -> None:
    from tuitrain.presets.registry import BUILTIN, TABLE

    for name, (_, _, text) in TABLE.items():
        assert (BUILTIN[name].name, BUILTIN[name].description) == (name, text)


NO_TORCH = """
import sys, time
t0 = time.perf_counter()
from tuitrain.tui.cli import main
rc = main(sys.argv[1:])
print(f"rc={rc} torch={'torch' in sys.modules} seconds={time.perf_counter() - t0:.2f}", file=sys.stderr)
"""


@pytest.mark.parametrize("args, rc, needle", [
    (["--list-presets"], 0, "circles     two noisy concentric rings"),
    (["--preset", "cirles"], 2, "tuitrain: error: unknown preset 'cirles'; did you mean 'circles'? (known: circles,"),
    (["--preset", "shapes_aug", "--headless"], 2, "did you mean 'shapes-aug'?"),
    (["--preset", "nope"], 2, "tuitrain: error: unknown preset 'nope' (known: circles,"),
    (["--resume", "no/such/run"], 2, "tuitrain: error: --resume: no such run directory or checkpoint: no/such/run"),
])
def test_answers_that_need_no_torch_come_without_importing_it(args: list[str], rc: int, needle: str,
                                                               tmp_path: Path) -> None:
    """--list-presets, a mistyped preset and a missing --resume path: a tenth of a second, not three."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60, stdin=subprocess.DEVNULL)
    *lines, last = p.stderr.splitlines()
    assert last.startswith(f"rc={rc} torch=False "), p.stderr
    assert float(last.rsplit("=", 1)[1]) < 1.0  # importing torch alone takes seconds
    assert needle in p.stdout + "\n".join(lines)
    if rc:
        assert len(lines) == 1 and p.stdout == ""  # one line
    assert list(tmp_path.iterdir()) == []


def test_circles_two_epochs_headless_writes_the_whole_run_directory(tmp_path: Path) -> None:
    R = tmp_path / "R"
    p = tuitrain("--preset", "circles", "--headless", "--epochs", "2", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 2, p.stdout
    for n, line in enumerate(epochs, 1):
        m = re.match(EPOCH_LINE, line)
        assert m, line
        assert int(m.group(1)) == n
    assert lines[0].startswith("tuitrain: training circles on cpu | 2,000 train / 500 val | "
                               "125 steps/epoch x 2 epochs")
    finished = [line for line in lines if line.startswith("finished")]
    assert len(finished) == 1 and finished[0].startswith("finished: 2 epochs, 250 steps in "), p.stdout
    assert lines.index(finished[0]) > lines.index(epochs[-1])

    assert sorted(x.name for x in R.iterdir()) == ["checkpoints", "config.json", "history.json",
                                                     "metrics.jsonl", "run.lock", "run.pid", "summary.json"]
    config = read_json(R / "config.json")
    assert config["preset"] == "circles" and config["epochs"] == 2 and config["run_dir"] == str(R)
    history = read_json(R / "history.json")
    assert [row["epoch"] for row in history] == [1, 2]
    assert [row["step"] for row in history] == [125, 250]
    summary = read_json(R / "summary.json")
    assert summary["status"] == "finished"
    assert summary["steps"] == 2 * CIRCLES_STEPS_PER_EPOCH
    assert summary["epochs"] == 2
    assert summary["final"]["val_loss"] == history[-1]["val_loss"]
    assert summary["best_val_loss"] == min(row["val_loss"] for row in history)
    # The printed epoch lines carry the numbers that are on disk.
    for line, row in zip(epochs, history):
        assert f"val {row['val_loss']:.4f}" in line and f"acc {row['val_acc']:.4f}" in line

    steps = [r["step"] for r in metrics(R) if r["kind"] == "step"]
    assert steps == list(range(1, 251))
    assert sorted(x.name for x in (R / "checkpoints").iterdir()) == ["best.pt", "latest.pt"]
    latest = load_ckpt(R / "checkpoints" / "latest.pt")
    best = load_ckpt(R / "checkpoints" / "best.pt")
    assert latest["step"] == 250 and latest["epoch"] == 2
    assert best["step"] == summary["best_epoch"] * CIRCLES_STEPS_PER_EPOCH
    assert latest["config"] == config
    assert not (tmp_path / "runs").exists()


def test_overrides_reach_the_config_and_cosine_drives_the_lr(tmp_path: Path) -> None:
    R = tmp_path / "R"
    p = tuitrain("--preset", "circles", "--headless", "--epochs", "2", "--lr", "0.003", "--optimizer", "sgd",
                 "--scheduler", "cosine", "--seed", "1", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    config = read_json(R / "config.json")
    assert {k: config[k] for k in ("epochs", "lr", "optimizer", "scheduler", "seed", "batch_size")} == {
        "epochs": 2, "lr": 0.003, "optimizer": "sgd", "scheduler": "cosine", "seed": 1, "batch_size": 16}
    # CosineAnnealingLR(T_max=epochs), stepped per epoch: lr_e = lr/2 (1 + cos(pi e / T)).
    expected = [0.003 * (1 + math.cos(math.pi * e / 2)) / 2 for e in range(2)]
    history = read_json(R / "history.json")
    assert [row["lr"] for row in history] == pytest.approx(expected, rel=1e-9)
    step_lrs = {r["step"]: r["lr"] for r in metrics(R) if r["kind"] == "step"}
    assert all(step_lrs[s] == pytest.approx(expected[0]) for s in range(1, 126))
    assert all(step_lrs[s] == pytest.approx(expected[1]) for s in range(126, 251))
    assert "lr 3.00e-03" in p.stdout and "lr 1.50e-03" in p.stdout
    assert read_json(R / "summary.json")["status"] == "finished"


def test_max_steps_stops_exactly_and_exits_0(tmp_path: Path) -> None:
    R = tmp_path / "R"
    p = tuitrain("--preset", "circles", "--headless", "--epochs", "3", "--max-steps", "10", "--run-dir", R,
                 cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "stopping at step 10: reached --max-steps 10" in p.stdout
    assert re.search(r"^finished: 0 epochs, 10 steps in ", p.stdout, re.M), p.stdout
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("finished", 10, 0)
    assert summary["reason"] == "reached --max-steps 10"
    assert [r["step"] for r in metrics(R) if r["kind"] == "step"] == list(range(1, 11))
    assert load_ckpt(R / "checkpoints" / "latest.pt")["step"] == 10
    assert not (R / "history.json").exists()  # no epoch ended


def test_amp_grad_clip_and_accumulate_two_give_63_steps_per_epoch(tmp_path: Path) -> None:
    """--amp on the CPU is bf16 autocast; --accumulate 2 on 125 batches is ceil(125/2) = 63 steps."""
    R = tmp_path / "R"
    p = tuitrain("--preset", "circles", "--headless", "--epochs", "1", "--amp", "--grad-clip", "1",
                 "--accumulate", "2", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    header = p.stdout.splitlines()[0]
    assert "| amp bfloat16 |" in header and "| 63 steps/epoch x 1 epochs |" in header, header
    config = read_json(R / "config.json")
    assert (config["amp"], config["grad_clip"], config["accumulate"]) == (True, 1.0, 2)
    started = [r for r in metrics(R) if r.get("event") == "started"]
    assert (started[0]["amp"], started[0]["steps_per_epoch"]) == ("bfloat16", 63)
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["steps"]) == ("finished", math.ceil(125 / 2))
    steps = [r for r in metrics(R) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 64))
    assert all(r["grad_norm"] is not None and r["grad_norm"] >= 0 for r in steps)
    assert all(math.isfinite(r["loss"]) for r in steps)


def test_patience_stops_a_run_that_cannot_improve(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "flat.py", FLAT_PRESET)
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--patience", "1", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "early stop after epoch 2" in p.stdout
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["epochs"], summary["steps"], summary["best_epoch"]) == (
        "early_stopped", 2, 8, 1)
    history = read_json(R / "history.json")
    assert len(history) == 2
    assert history[0]["val_loss"] == pytest.approx(math.log(2)) and history[1]["val_loss"] == history[0]["val_loss"]
    assert [r["event"] for r in metrics(R) if r.get("event") == "early_stop"] == ["early_stop"]


def test_example_preset_file_runs_into_a_default_run_directory(tmp_path: Path) -> None:
    p = tuitrain("--preset", EXAMPLE, "--headless", "--epochs", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and re.fullmatch(r"my_experiment-\d{8}-\d{6}", runs[0].name), runs
    summary = read_json(runs[0] / "summary.json")
    assert (summary["status"], summary["epochs"], summary["steps"]) == ("finished", 1, 50)  # 1600 / 32
    assert read_json(runs[0] / "config.json")["preset"] == str(EXAMPLE)
    assert "1,600 train / 400 val | 50 steps/epoch x 1 epochs" in p.stdout


def test_package_module_attr_spec_on_pythonpath(tmp_path: Path) -> None:
    pkg = tmp_path / "lib" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    write_preset(pkg, "experiments.py", """
        import torch
        from torch import nn
        from tuitrain.presets import Data, Preset

        def make_data(seed):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(96, 3, generator=g)
            return Data(train=(x[:64], x[:64, :1] * 2), val=(x[64:], x[64:, :1] * 2))

        LINE = Preset(name="line3", description="a linear regression", task="regression",
                      make_data=make_data, make_model=lambda: nn.Linear(3, 1),
                      defaults={"batch_size": 8, "lr": 0.05})
    """)
    R = tmp_path / "R"
    p = tuitrain("--preset", "mypkg.experiments:LINE", "--headless", "--epochs", "2", "--run-dir", R,
                 cwd=tmp_path, env=cli_env(PYTHONPATH=str(tmp_path / "lib")))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("tuitrain: training line3 on cpu")
    assert "| mae " in p.stdout  # regression: the metric is the mean absolute error
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["preset"], summary["steps"]) == ("finished", "line3", 16)
    assert read_json(R / "config.json")["preset"] == "mypkg.experiments:LINE"


def test_model_that_raises_mid_run_fails_with_the_traceback_on_record(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "boom.py", BOOM_PRESET)
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    # One bounded line with the user's file and line; the traceback goes to error.txt only.
    assert "Traceback" not in p.stderr
    assert re.search(rf"^error: RuntimeError: boom \(at {re.escape(str(preset))}:\d+ in forward\) "
                     rf"\(details in {re.escape(str(R))}/error.txt\)$", p.stderr, re.M), p.stderr
    error = (R / "error.txt").read_text()
    assert error.startswith("Traceback") and "RuntimeError: boom" in error and str(preset) in error
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["reason"], summary["steps"]) == (
        "failed", f"RuntimeError: boom (at {preset}:17 in forward)", 30)
    assert [r["step"] for r in metrics(R) if r["kind"] == "step"] == list(range(1, 31))
    assert [r["event"] for r in metrics(R) if r.get("event") == "error"] == ["error"]


def test_make_data_that_raises_fails_with_error_txt(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "baddata.py", BAD_DATA_PRESET)
    R = tmp_path / "R"
    p = tuitrain("--preset", preset, "--headless", "--epochs", "1", "--run-dir", R, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    last = p.stderr.splitlines()[-1]
    assert last == (f"tuitrain: the preset failed while building its data or model: ValueError: no data here "
                    f"(at {preset}:4 in make_data) (the traceback is in {R}/error.txt)")
    error = (R / "error.txt").read_text()
    assert "ValueError: no data here" in error and str(preset) in error
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["reason"]) == ("failed", f"ValueError: no data here (at {preset}:4 in make_data)")


def test_closed_stdout_pipe_does_not_stop_training(tmp_path: Path) -> None:
    """`tuitrain ... | head -1`: the reader goes away after one line; the run goes on."""
    R = tmp_path / "R"
    popen = subprocess.Popen([str(TUITRAIN), "--preset", "circles", "--epochs", "3", "--run-dir", str(R)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, env=cli_env())
    assert popen.stdout is not None and popen.stderr is not None
    first = popen.stdout.readline()
    assert first.startswith("tuitrain: training circles")
    popen.stdout.close()
    err = popen.stderr.read()
    rc = popen.wait(120)
    assert rc == 0, err
    assert err == ""  # no BrokenPipeError, and no dashboard fallback notice: no TTY means headless
    summary = read_json(R / "summary.json")
    assert (summary["status"], summary["steps"]) == ("finished", 3 * CIRCLES_STEPS_PER_EPOCH)
    assert len(read_json(R / "history.json")) == 3



# -- --threads on a busy machine ----------------------------------------------------------

def test_threads_above_the_idle_cores_warns_with_a_number_that_fits() -> None:
    from tuitrain.tui.cli import threads_warning

    text = threads_warning(2, idle=lambda: 0.3)
    assert text is not None and text.startswith("--threads 2, but only about 0.3 of ")
    assert text.endswith("try --threads 1")
    assert threads_warning(4, idle=lambda: 2.2).endswith("try --threads 2")
    assert threads_warning(2, idle=lambda: 1.8) is None  # two cores nearly idle: fine
    assert threads_warning(1, idle=lambda: 0.0) is None and threads_warning(None, idle=lambda: 0.0) is None


def test_a_run_with_more_threads_than_cores_says_so_once_on_stderr(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tuitrain.tui.cli as cli
    import tuitrain.tui.headless as headless

    # 2 threads (within the CPUs, which --threads allows) while another job keeps 1.6 cores busy.
    monkeypatch.setattr(cli, "idle_cores", lambda: 0.4)
    monkeypatch.setattr(headless, "run_headless", lambda run, relay, **kw: 0)  # the warning comes before training
    monkeypatch.chdir(tmp_path)
    rc, _, err = in_process("--preset", "circles", "--headless", "--threads", "2", "--max-steps", "5",
                            "--run-dir", tmp_path / "R")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "--threads" in line]
    assert len(warnings) == 1 and warnings[0].startswith("tuitrain: warning: --threads 2, but only about 0.4 ")
    assert "idle" in tuitrain("--help", cwd=tmp_path).stdout
