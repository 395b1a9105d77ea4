"""tuitrain.integrations without the frameworks: the modules import, the callback names the pip line.

Each case is a fresh interpreter, with the framework hidden (sys.modules[name] = None), so this
module needs neither Lightning nor transformers and runs in every environment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module, package", [("tuitrain.integrations.lightning", "lightning"),
                                             ("tuitrain.integrations.pytorch_lightning", "pytorch-lightning"),
                                             ("tuitrain.integrations.hf", "transformers")])
def test_without_the_framework_the_module_imports_and_the_callback_says_what_to_install(
        module: str, package: str) -> None:
    absent = {"lightning": ["lightning", "lightning.pytorch"], "pytorch-lightning": ["pytorch_lightning"],
              "transformers": ["transformers"]}[package]
    code = "\n".join([
        "import sys",
        *[f"sys.modules[{name!r}] = None" for name in absent],
        "import importlib, tuitrain, tuitrain.integrations",
        f"mod = importlib.import_module({module!r})",
        "try:",
        f"    from {module} import TuitrainCallback",
        "except ImportError as exc:",
        "    print('ERR', exc)",
        "else:",
        "    print('NO ERROR')",
    ])
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith(f"pip install {package}"), p.stdout
    assert p.stdout.startswith("ERR ") and p.stdout.count("\n") == 1


def test_importing_tuitrain_and_its_integrations_loads_no_framework() -> None:
    code = ("import sys, tuitrain, tuitrain.integrations, tuitrain.integrations.lightning, "
            "tuitrain.integrations.hf\n"
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'torch') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
