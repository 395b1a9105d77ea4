"""The engine is importable without the TUI (no textual, rich or plotext in sys.modules)."""

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
