"""Turn the user's `--preset` argument into a Preset.

A spec is one of:

* a built-in name (``circles``),
* a path to a ``.py`` file (``./my_experiment.py``),
* ``package.module:attr`` (a Preset, or a zero-argument callable returning one),
  or a dotted ``package.module`` that follows the file conventions below.

A file or module either defines ``PRESET`` or the functions ``make_data(seed)``
and ``make_model()`` (plus optional ``make_loss()``, ``TASK``, ``DESCRIPTION``,
``DEFAULTS``, ``NAME``, ``DROP_LAST``, ``METRIC``).

Every failure is a PresetError whose text is one line the dashboard can show
as is, pointing at the user's file and line where there is one.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .registry import BUILTIN, builtin_names, closest_name

if TYPE_CHECKING:  # imported where used: a mistyped name is answered without importing torch
    from .base import Preset

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENT}(\.{_IDENT})*")
_MODULE_ONLY = re.compile(rf"{_IDENT}(\.{_IDENT})+")  # needs a dot: a bare word is never imported
_MAX_MSG = 300
_module_ids = itertools.count()


class PresetError(Exception):
    """A preset could not be loaded; str() is one line meant for the user."""


def load_preset(spec: str) -> Preset:
    """Resolve a built-in name, a .py path, or package.module[:attr] to a Preset."""
    spec = spec.strip()
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec.endswith(".py"):
        return _load_file(spec)
    module_name, sep, attr = spec.partition(":")
    if sep and _DOTTED.fullmatch(module_name) and _DOTTED.fullmatch(attr):
        return _load_module_attr(module_name, attr)
    if not sep and Path(spec).expanduser().is_file():
        raise PresetError(f"preset file must be a .py file: {spec}")
    if not sep and _MODULE_ONLY.fullmatch(spec):
        return _from_namespace(_import_module(spec), spec, default_name=spec.rsplit(".", 1)[-1])
    near = closest_name(spec)
    raise PresetError(
        f"unknown preset {spec!r}" + (f"; did you mean {near!r}?" if near else "") +
        f" (known: {', '.join(builtin_names())}; or a path to a .py file, or package.module:attr)"
    )


def preset_name_for_rundir(spec: str, preset: Preset) -> str:
    """A short, filesystem-safe name for run directories (file stem for files)."""
    spec = spec.strip()
    raw = Path(spec).stem if spec.endswith(".py") else preset.name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")[:40].strip("-.")
    return safe or "preset"


# --- files -------------------------------------------------------------------


def _load_file(spec: str) -> Preset:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise PresetError(f"preset file not found: {spec}")
    resolved = path.resolve()
    stem_id = re.sub(r"\W", "_", resolved.stem)
    module_name = f"_tuitrain_user_preset_{stem_id}_{next(_module_ids)}"
    import_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if import_spec is None or import_spec.loader is None:
        raise PresetError(f"cannot import preset file: {spec}")
    module = importlib.util.module_from_spec(import_spec)
    # Registered so dataclasses and pickling inside the file can find the module.
    sys.modules[module_name] = module
    folder = str(resolved.parent)
    # Only while it runs, so the file can import helpers that sit next to it.
    sys.path.insert(0, folder)
    try:
        import_spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise PresetError(_syntax_message(exc, resolved, spec)) from exc
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        raise PresetError(_import_message(exc, resolved, spec)) from exc
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return _from_namespace(module, spec, default_name=resolved.stem)


# --- modules -----------------------------------------------------------------


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise PresetError(f"module not found: {name!r} (is it installed or on PYTHONPATH?)") from exc
        origin = _module_origin(name)
        raise PresetError(_import_message(exc, origin, str(origin or name))) from exc
    except SyntaxError as exc:
        origin = _module_origin(name)
        raise PresetError(_syntax_message(exc, origin, str(origin or name))) from exc
    except (Exception, SystemExit) as exc:
        origin = _module_origin(name)
        raise PresetError(_import_message(exc, origin, str(origin or name))) from exc


def _load_module_attr(module_name: str, attr: str) -> Preset:
    from .base import Preset

    module = _import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PresetError(f"module {module_name!r} has no attribute {attr!r}") from None
    where = f"{module_name}:{attr}"
    if isinstance(obj, Preset):
        return obj
    if isinstance(obj, ModuleType):
        return _from_namespace(obj, where, default_name=obj.__name__.rsplit(".", 1)[-1])
    if not callable(obj):
        raise PresetError(f"{where} is a {type(obj).__name__}, not a Preset or a function returning one")
    try:
        result = obj()
    except Exception as exc:  # noqa: BLE001 - anything the user's factory raises
        raise PresetError(f"{where}() raised {type(exc).__name__}: {_one_line(exc)}") from exc
    if not isinstance(result, Preset):
        raise PresetError(f"{where}() returned a {type(result).__name__}, not a Preset")
    return result


def _module_origin(name: str) -> Path | None:
    """The module's source file, found without running it (None if unknown)."""
    try:
        found = importlib.util.find_spec(name)
    except (Exception, SystemExit):
        return None
    if found is None or not found.origin or not found.has_location:
        return None
    return Path(found.origin).resolve()


# --- building the Preset -----------------------------------------------------


def _from_namespace(module: ModuleType, where: str, default_name: str) -> Preset:
    """PRESET if the module has one, else a Preset built from its make_* functions."""
    from .base import Preset

    ns = vars(module)
    if "PRESET" in ns:
        preset = ns["PRESET"]
        if not isinstance(preset, Preset):
            raise PresetError(f"{where}: PRESET is a {type(preset).__name__}, not a tuitrain Preset")
        return preset
    make_data, make_model = ns.get("make_data"), ns.get("make_model")
    if make_data is None and make_model is None:
        raise PresetError(f"{where} defines no PRESET and no make_data/make_model")
    if make_data is None:
        raise PresetError(f"{where} defines make_model but no make_data")
    if make_model is None:
        raise PresetError(f"{where} defines make_data but no make_model")
    make_loss = ns.get("make_loss")
    for fname, fn in (("make_data", make_data), ("make_model", make_model), ("make_loss", make_loss)):
        if fn is not None and not callable(fn):
            raise PresetError(f"{where}: {fname} must be a function, not a {type(fn).__name__}")
    defaults = ns.get("DEFAULTS", {})
    if not isinstance(defaults, dict):
        raise PresetError(f"{where}: DEFAULTS must be a dict, not a {type(defaults).__name__}")
    task = ns.get("TASK", "classification")
    if task not in ("classification", "regression"):
        raise PresetError(f"{where}: TASK must be 'classification' or 'regression', not {task!r}")
    doc_line = (module.__doc__ or "").strip().splitlines()[:1]
    try:
        return Preset(
            name=str(ns.get("NAME", default_name)),
            description=_one_line(ns.get("DESCRIPTION") or (doc_line[0] if doc_line else f"user preset {where}")),
            task=task,
            make_data=make_data,
            make_model=make_model,
            make_loss=make_loss,
            defaults=dict(defaults),
            drop_last=bool(ns.get("DROP_LAST", False)),
            metric=ns.get("METRIC"),
        )
    except (TypeError, ValueError) as exc:
        raise PresetError(f"{where}: {_one_line(exc)}") from exc


# --- messages ----------------------------------------------------------------


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_MSG else text[: _MAX_MSG - 3] + "..."


def _display(path: Path | None, target: Path | None, spec: str) -> str:
    """The user's own spelling for their file, the full path for any other file."""
    if path is None or (target is not None and path == target):
        return spec
    return str(path)


def _syntax_message(exc: SyntaxError, target: Path | None, spec: str) -> str:
    path = Path(exc.filename).resolve() if exc.filename and not exc.filename.startswith("<") else target
    line = f":{exc.lineno}" if exc.lineno else ""
    return f"{_display(path, target, spec)}{line}: syntax error: {_one_line(exc.msg or exc)}"


def _import_message(exc: BaseException, target: Path | None, spec: str) -> str:
    """FILE:LINE from the innermost traceback frame in the user's file."""
    frames = traceback.extract_tb(exc.__traceback__)
    path, line = target, None
    mine = [f for f in frames if target is not None and _same_file(f.filename, target)]
    if mine:
        line = mine[-1].lineno
    else:  # e.g. a module whose file we could not locate: the innermost top-level frame
        tops = [f for f in frames if f.name == "<module>" and not f.filename.startswith("<")]
        if tops:
            path, line = Path(tops[-1].filename).resolve(), tops[-1].lineno
    where = _display(path, target, spec) + (f":{line}" if line else "")
    detail = _one_line(exc)
    kind = type(exc).__name__
    return f"{where}: {kind}: {detail} while importing the preset" if detail else f"{where}: {kind} while importing the preset"


def _same_file(filename: str, target: Path) -> bool:
    if filename.startswith("<"):
        return False
    try:
        return Path(filename).resolve() == target
    except OSError:
        return False
