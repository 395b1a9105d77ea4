"""The engine is importable without the TUI (no textual, rich or plotext in sys.modules), and the
viewer without torch (a watcher on a laptop needs no torch; only the run process loads it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import importlib, pkgutil, sys
    import tuitrain.engine, tuitrain.presets
    names = sorted("tuitrain.engine." + m.name for m in pkgutil.iter_modules(tuitrain.engine.__path__))
    assert len(names) >= 11, names
    for name in names:
        importlib.import_module(name)
    import tuitrain.presets.registry, tuitrain.presets.loader

    UI = ("textual", "rich", "plotext", "textual_plotext")
    def ui_modules():
        return sorted(m for m in sys.modules if m.split(".")[0] in UI)
    assert not ui_modules(), ui_modules()
    print("engine modules:", len(names))
    {control}
""")


def run_check(control: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(control=control)], capture_output=True,
                          text=True, timeout=120)


def test_engine_and_presets_import_without_ui_libraries():
    proc = run_check()
    assert proc.returncode == 0, proc.stderr
    assert "engine modules:" in proc.stdout


def test_the_check_would_catch_a_ui_import():
    proc = run_check("import textual.app; assert not ui_modules(), 'caught: ' + ' '.join(ui_modules())")
    assert proc.returncode != 0
    caught = proc.stderr.rsplit("caught: ", 1)[-1].split()
    assert "textual" in caught and "textual.app" in caught


VIEWER_CHECK = textwrap.dedent("""
    import importlib, pkgutil, sys
    import tuitrain.tui
    # headless.py is the run process's own reporter (it sits next to the Trainer), not a viewer.
    IN_RUN_PROCESS = {"tuitrain.tui.headless"}
    names = sorted(m.name for m in pkgutil.walk_packages(tuitrain.tui.__path__, "tuitrain.tui.")
                   if m.name not in IN_RUN_PROCESS)
    for required in ("tuitrain.tui.history", "tuitrain.tui.system", "tuitrain.tui.app",
                     "tuitrain.tui.widgets.system_panel", "tuitrain.tui.plot", "tuitrain.tui.plot_figure",
                     "tuitrain.tui.serve", "tuitrain.tui.web_server"):
        assert required in names, (required, names)
    for name in names:
        importlib.import_module(name)
        assert "torch" not in sys.modules, "torch imported by " + name
    print("viewer modules:", len(names))
""")


def test_the_viewer_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", VIEWER_CHECK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "viewer modules:" in proc.stdout


def test_engine_holds_no_viewer_modules():
    """The plot series and the machine sampler live with the viewer that draws them."""
    import pkgutil

    import tuitrain.engine
    names = {m.name for m in pkgutil.iter_modules(tuitrain.engine.__path__)}
    assert not names & {"history", "system"}, names


EXPORT_CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tuitrain.engine import events as ev
    R = Path(sys.argv[1])
    R.mkdir()
    stats = ev.StepStats(2, 1.0, epoch=1, steps=[1, 2], loss=[0.5, 0.4], lr=[0.1, 0.1], grad_norm=None,
                         epoch_step=2, steps_per_epoch=2, steps_per_sec=0.0, samples_per_sec=0.0)
    (R / "metrics.jsonl").write_text("\\n".join(stats.records()) + "\\n")
    from tuitrain.tui.cli import main
    assert main(["export", str(R), "--csv", str(R / "o.csv")]) == 0
    assert main(["export", str(R), "--tensorboard", str(R / "tb")]) == 0
    from tuitrain.tui import tensorboard_log  # what the live writer process runs
    assert "torch" not in sys.modules, "torch imported by tuitrain export"
    print("exported without torch")
""")


def test_export_and_the_tensorboard_writer_run_without_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(tmp_path / "R")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "exported without torch" in proc.stdout
