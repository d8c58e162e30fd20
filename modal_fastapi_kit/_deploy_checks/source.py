"""What the service's code imports, found by reading its source with ``ast``, never running it.

The walk reads the service file, then every local module it reaches (``local_sources`` and the
packages they hold, and local files Modal does not ship), imports inside functions included,
``if TYPE_CHECKING:`` blocks skipped, each import marked optional when a ``try/except
ImportError`` (or ``contextlib.suppress(ImportError)``) guards it.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import site
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .distributions import packages_distributions

__all__ = ["LIBRARY", "ImportSite", "Walk", "display_path", "find_top", "module_file", "walk"]

LIBRARY = "modal_fastapi_kit"  # shipped as source with every image; its needs are the kit's
# Exceptions whose handler makes the imports in its ``try`` body optional.
_OPTIONAL_HANDLERS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


@dataclass(frozen=True)
class ImportSite:
    """One ``import`` statement (or one name of it) found in a file."""

    module: str  # absolute dotted name, e.g. "transformers" or "pkg.helpers"
    path: Path
    line: int
    scope: str  # enclosing class/function, e.g. "Svc.load"; "" at module level
    optional: bool  # inside try/except ImportError (or contextlib.suppress(ImportError))
    names: tuple[str, ...] = ()  # ``from module import names``: each may be a submodule

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


@dataclass
class Walk:
    """What a walk found: third-party import sites, and local modules Modal would not ship
    (by top-level name, with the sites that import them from outside)."""

    third_party: list[ImportSite] = field(default_factory=list)
    not_shipped: dict[str, list[ImportSite]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def walk(entry: Path, local_sources: Iterable[str]) -> Walk:
    """Every import reachable from ``entry``: its own, then those of each local module it
    reaches, once per file. This library is not walked: the image always has it."""
    shipped = {entry.stem, *(name.split(".")[0] for name in local_sources)}
    found = Walk()
    # (file, package its relative imports resolve against, top-level module it belongs to)
    queue: list[tuple[Path, str | None, str]] = [(entry.resolve(), None, entry.stem)]
    while queue:
        path, package, owner = queue.pop(0)
        if path in found.files:
            continue
        found.files.append(path)
        for site_ in _file_imports(path, package):
            top = site_.top
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top in sys.builtin_module_names or top == LIBRARY:
                continue
            local = [(p.resolve(), pkg, top) for p, pkg in _local_files(site_.module, site_.names)]
            if top in shipped:
                queue.extend(local)
            elif local and _is_local(top):
                if top != owner:
                    found.not_shipped.setdefault(top, []).append(site_)
                queue.extend(local)
            else:
                found.third_party.append(site_)
    return found


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when under it, else absolute."""
    full = path.resolve()
    here = Path.cwd().resolve()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(full)


# -- reading files --------------------------------------------------------------------------


class _Imports(ast.NodeVisitor):
    """Collects the import statements of one module, with scope and optional-ness."""

    def __init__(self, path: Path, package: str | None) -> None:
        self.path = path
        self.package = package
        self.sites: list[ImportSite] = []
        self._scope: list[str] = []
        self._optional = 0

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._visit_all(node.orelse)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches_import_error(h.type) for h in node.handlers)
        self._optional += guarded
        self._visit_all(node.body)
        self._optional -= guarded
        self._visit_all([*node.handlers, *node.orelse, *node.finalbody])

    visit_TryStar = visit_Try

    def visit_With(self, node: ast.With) -> None:
        guarded = any(_suppresses_import_error(item.context_expr) for item in node.items)
        self._optional += guarded
        self.generic_visit(node)
        self._optional -= guarded

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno, ())

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names if alias.name != "*")
        if not node.level:
            self._add(node.module or "", node.lineno, names)
            return
        if self.package is None:  # a relative import in a top-level file fails anyway
            return
        parts = self.package.split(".")
        if node.level - 1 >= len(parts):
            return
        base = ".".join(parts[: len(parts) - (node.level - 1)])
        self._add(f"{base}.{node.module}" if node.module else base, node.lineno, names)

    def _add(self, module: str, line: int, names: tuple[str, ...]) -> None:
        if module:
            scope = ".".join(self._scope)
            self.sites.append(ImportSite(module, self.path, line, scope, self._optional > 0, names))

    def _visit_all(self, nodes: Iterable[ast.AST]) -> None:
        for child in nodes:
            self.visit(child)


def _file_imports(path: Path, package: str | None) -> list[ImportSite]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    visitor = _Imports(path, package)
    visitor.visit(tree)
    return visitor.sites


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _exception_names(node: ast.expr | None) -> list[str]:
    if node is None:
        return ["BaseException"]  # a bare except
    if isinstance(node, ast.Tuple):
        return [name for element in node.elts for name in _exception_names(element)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def _catches_import_error(node: ast.expr | None) -> bool:
    return any(name in _OPTIONAL_HANDLERS for name in _exception_names(node))


def _suppresses_import_error(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return name == "suppress" and any(_catches_import_error(arg) for arg in node.args)


# -- finding local modules ------------------------------------------------------------------


@cache
def find_top(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of a top-level module, found on sys.path without importing it."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


def module_file(spec: importlib.machinery.ModuleSpec) -> Path | None:
    """The file (or a folder, for a namespace package) a module spec loads from."""
    if spec.origin not in (None, "built-in", "frozen") and spec.has_location:
        return Path(str(spec.origin))
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


@cache
def _installed_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    roots = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    if hasattr(site, "getsitepackages"):  # missing in some old virtualenvs
        roots += site.getsitepackages()
    roots.append(site.getusersitepackages())
    return tuple(Path(root).resolve() for root in roots)


def _is_local(top: str) -> bool:
    """A module found in the user's tree rather than installed: no distribution provides it."""
    spec = find_top(top)
    origin = module_file(spec) if spec is not None else None
    if origin is None or top in packages_distributions():
        return False
    resolved = origin.resolve()
    if {"site-packages", "dist-packages"} & set(resolved.parts):
        return False
    return not any(resolved.is_relative_to(root) for root in _installed_roots())


def _local_files(module: str, names: tuple[str, ...]) -> list[tuple[Path, str | None]]:
    """The source files importing ``module`` (and ``from module import names``) runs, each
    with the package its relative imports resolve against; empty if not a local source file."""
    parts = module.split(".")
    spec = find_top(parts[0])
    if spec is None:
        return []
    if spec.submodule_search_locations is None:
        origin = module_file(spec)
        is_source = origin is not None and origin.suffix == ".py"
        return [(origin, None)] if is_source and origin is not None else []
    files: list[tuple[Path, str | None]] = []
    dirs = [Path(p) for p in spec.submodule_search_locations]
    files += [(d / "__init__.py", parts[0]) for d in dirs if (d / "__init__.py").is_file()][:1]
    dotted = parts[0]
    for part in [*parts[1:], None]:
        if part is None:  # the names of a from-import may be submodules
            for name in names:
                files += _child(dirs, name, dotted)[0]
            break
        found, dirs = _child(dirs, part, dotted)
        files += found
        dotted = f"{dotted}.{part}"
    return files


def _child(
    dirs: list[Path], name: str, package: str
) -> tuple[list[tuple[Path, str | None]], list[Path]]:
    """Module ``package.name`` in the package's folders: its files and its own folders."""
    for folder in dirs:
        if (folder / name / "__init__.py").is_file():
            return [(folder / name / "__init__.py", f"{package}.{name}")], [folder / name]
        if (folder / f"{name}.py").is_file():
            return [(folder / f"{name}.py", package)], []
        if (folder / name).is_dir():  # a namespace package
            return [], [folder / name]
    return [], []
