"""Find a ``@gpu_service`` class from ``FILE.py[:Class]``, imported the way Modal imports it."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from .._core.spec import SPEC_ATTR
from .._server import ModelServer
from ..exceptions import KitError

__all__ = ["UsageError", "load_service"]


class UsageError(KitError):
    """A command-line mistake: printed as one line, exit status 2."""


def load_service(ref: str) -> type[ModelServer[Any, Any]]:
    """Import ``FILE.py[:Class]`` and return the decorated class it names or holds."""
    path_text, _, class_name = ref.partition(":") if not _is_drive(ref) else (ref, "", "")
    path = Path(path_text)
    if path.suffix != ".py":
        raise UsageError(f"{path_text!r} is not a Python file; pass FILE.py or FILE.py:Class")
    if not path.is_file():
        raise UsageError(f"file not found: {path_text}")
    module = _import_file(path)
    if class_name:
        found = getattr(module, class_name, None)
        if found is None:
            raise UsageError(f"{path_text} has no class {class_name!r}")
        if not _is_service(found):
            raise UsageError(
                f"{path_text}:{class_name} is not a @gpu_service class; decorate it with "
                "@gpu_service(...) and subclass ModelServer"
            )
        return found  # type: ignore[no-any-return]
    services = [
        obj
        for obj in vars(module).values()
        if _is_service(obj) and obj.__module__ == module.__name__
    ]
    if not services:
        raise UsageError(f"{path_text} defines no @gpu_service class")
    if len(services) > 1:
        names = ", ".join(sorted(s.__name__ for s in services))
        raise UsageError(f"{path_text} defines several services ({names}); pick one: FILE.py:Class")
    return services[0]  # type: ignore[no-any-return]


def _is_drive(ref: str) -> bool:
    return len(ref) > 1 and ref[1] == ":" and ref[0].isalpha() and "\\" in ref


def _is_service(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, ModelServer) and SPEC_ATTR in vars(obj)


def _import_file(path: Path) -> Any:
    """Import like ``modal deploy FILE.py``: the file's folder and the cwd on sys.path."""
    full = path.resolve()
    name = inspect.getmodulename(str(full))
    if name is None or "." in name:
        raise UsageError(f"{path.name!r} is not an importable module name")
    for entry in ("", str(full.parent)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KitError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    return module
