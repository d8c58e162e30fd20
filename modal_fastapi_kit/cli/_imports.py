"""What the service's code imports that the Modal image will not have, found without running it.

The walk reads source with ``ast``: the service file, then every local module it reaches
(``local_sources`` and the packages they hold, and local files Modal does not ship), imports
inside functions included, ``if TYPE_CHECKING:`` blocks skipped. Each third-party import is
mapped to the pip distribution that provides it and compared with what the image installs:
its ``packages``, their dependencies (as installed here), and Modal's own container runtime.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = [
    "KNOWN_DISTRIBUTIONS",
    "ImportProblem",
    "ImportSite",
    "Walk",
    "display_path",
    "image_distributions",
    "import_problems",
    "normalise",
    "requirement_name",
    "walk",
]

# Import names whose pip distribution is named differently, for packages not installed here
# (installed ones are read from their metadata). Any of the listed distributions satisfies it.
KNOWN_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "sklearn": ("scikit-learn",),
    "skimage": ("scikit-image",),
    "PIL": ("pillow",),
    "cv2": (
        "opencv-python",
        "opencv-python-headless",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ),
    "yaml": ("pyyaml",),
    "bs4": ("beautifulsoup4",),
    "attr": ("attrs",),
    "dateutil": ("python-dateutil",),
    "dotenv": ("python-dotenv",),
    "jwt": ("pyjwt",),
    "jose": ("python-jose",),
    "magic": ("python-magic",),
    "multipart": ("python-multipart",),
    "Crypto": ("pycryptodome",),
    "OpenSSL": ("pyopenssl",),
    "docx": ("python-docx",),
    "pptx": ("python-pptx",),
    "fitz": ("pymupdf",),
    "faiss": ("faiss-cpu", "faiss-gpu"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "llama_cpp": ("llama-cpp-python",),
    "whisper": ("openai-whisper",),
    "serial": ("pyserial",),
    "zmq": ("pyzmq",),
    "psycopg2": ("psycopg2-binary", "psycopg2"),
    "MySQLdb": ("mysqlclient",),
    "google.protobuf": ("protobuf",),
    "git": ("gitpython",),
    "Levenshtein": ("levenshtein", "python-levenshtein"),
    "sentencepiece": ("sentencepiece",),
    "tree_sitter": ("tree-sitter",),
    "decord": ("decord", "eva-decord"),
}

LIBRARY = "modal_fastapi_kit"  # shipped as source with every image; its needs are the kit's
# Exceptions whose handler makes the imports in its ``try`` body optional.
_OPTIONAL_HANDLERS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_EXTRA_RE = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME_RE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


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


@dataclass(frozen=True)
class ImportProblem:
    """An import the deployed container cannot satisfy, with where it is and the fix."""

    code: str  # missing-package, optional-package, local-module-not-shipped, local-source-...
    message: str
    where: tuple[str, ...]
    optional: bool = False


@dataclass
class Walk:
    """What a walk found: third-party import sites, and local modules Modal would not ship
    (by top-level name, with the sites that import them from outside)."""

    third_party: list[ImportSite] = field(default_factory=list)
    not_shipped: dict[str, list[ImportSite]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> tuple[str, frozenset[str]] | None:
    """The normalised name and extras of a pip requirement; None for URLs, paths and VCS."""
    text = spec.strip()
    if "://" in text.split("@")[0] or text.startswith((".", "/", "~", "git+")):
        return None
    if text.endswith((".whl", ".tar.gz", ".zip")) and "@" not in text:
        return None
    match = _NAME_RE.match(text)
    if match is None:
        return None
    extras = match.group(2) or ""
    return normalise(match.group(1)), frozenset(
        normalise(e) for e in extras.strip("[]").split(",") if e.strip()
    )


def image_distributions(packages: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """What pip leaves in the image, as normalised distribution names, and the requirements
    whose dependencies could not be read here (not installed, or a URL/path).

    That is ``packages`` and their dependencies (read from the metadata installed here), plus
    Modal's container runtime (the client, synchronicity, the image builder's requirements and
    package tools) and this library, which the image ships as source.
    """
    found: set[str] = {"modal", "synchronicity", "modal-fastapi-kit", *_modal_runtime()}
    unread: list[str] = []
    pending: list[tuple[str, frozenset[str]]] = []
    for spec in packages:
        parsed = requirement_name(spec)
        if parsed is None:
            unread.append(spec)
        else:
            pending.append(parsed)
            if not _installed(parsed[0]):
                unread.append(spec)
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        found.add(name)
        for requirement in _requires(name):
            spec, _, marker = requirement.partition(";")
            wanted = set(_EXTRA_RE.findall(marker))
            if wanted and not {normalise(e) for e in wanted} & extras:
                continue
            parsed = requirement_name(spec)
            if parsed is not None:
                pending.append(parsed)
    return frozenset(found), tuple(unread)


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


def import_problems(
    service_file: Path, packages: Sequence[str], local_sources: Sequence[str]
) -> list[ImportProblem]:
    """Imports that would fail in the deployed container, grouped by the distribution to add."""
    found = walk(service_file, local_sources)
    present, unread = image_distributions(packages)
    by_fix: dict[str, list[ImportSite]] = {}
    for site_ in found.third_party:
        if not _candidates(site_) & present:
            by_fix.setdefault(_fix_distribution(site_), []).append(site_)
    problems = [_unknown_source(n) for n in local_sources if _find_top(n.split(".")[0]) is None]
    problems += [
        _local_problem(top, sites, local_sources) for top, sites in found.not_shipped.items()
    ]
    problems += [_missing_problem(dist, sites, unread) for dist, sites in by_fix.items()]
    return problems


# -- messages -------------------------------------------------------------------------------


def _where(sites: Sequence[ImportSite]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f"{display_path(s.path)}:{s.line}" for s in sites))


def _places(sites: Sequence[ImportSite], most: int = 3) -> str:
    shown = [
        f"{display_path(s.path)}:{s.line}" + (f" in {s.scope}" if s.scope else "") for s in sites
    ]
    shown = list(dict.fromkeys(shown))
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more


def _missing_problem(dist: str, sites: list[ImportSite], unread: Sequence[str]) -> ImportProblem:
    names = list(dict.fromkeys(s.module for s in sites))
    modules = names[0] + " is" if len(names) == 1 else ", ".join(names) + " are"
    it = "it" if len(names) == 1 else "them"
    optional = all(s.optional for s in sites)
    version = _installed(normalise(dist))
    known = any(dist in names for names in KNOWN_DISTRIBUTIONS.values())
    here = (
        f" ({dist} {version} is installed here)"
        if version
        else ""
        if known
        else " (a name guessed from the import, as nothing here provides it: check it on PyPI)"
    )
    fix = f'add "{dist}" to packages=[...]{here}'
    caveat = ""
    if unread:
        listed = ", ".join(f'"{u}"' for u in unread)
        caveat = f" (unless {listed}, whose dependencies cannot be read here, brings it)"
    if optional:
        return ImportProblem(
            code="optional-package",
            message=f"{modules} imported only inside try/except ImportError "
            f"({_places(sites)}) and the image does not install {it}, so that fallback is what "
            f"runs on Modal; if the deployment needs it, {fix}{caveat}",
            where=_where(sites),
            optional=True,
        )
    return ImportProblem(
        code="missing-package",
        message=f"{modules} imported ({_places(sites)}) but the image does not install {it}: "
        f"{fix}, or the container fails with ModuleNotFoundError{caveat}",
        where=_where(sites),
    )


def _unknown_source(name: str) -> ImportProblem:
    return ImportProblem(
        code="local-source-not-found",
        message=f"local_sources names {name!r}, which is not importable from here (the working "
        "directory, the service file's folder and sys.path): Modal cannot add it to the image, "
        "so `modal deploy` fails; fix the name, or run from the folder that holds it",
        where=(),
    )


def _local_problem(
    top: str, sites: list[ImportSite], local_sources: Sequence[str]
) -> ImportProblem:
    spec = _find_top(top)
    origin = _origin(spec) if spec is not None else None
    source = f" ({display_path(origin)})" if origin is not None else ""
    fix = (
        f'add "{top}" to local_sources=[...]'
        if local_sources
        else f'set local_sources=["{top}"] in @gpu_service(...)'
    )
    optional = all(s.optional for s in sites)
    outcome = (
        "that try/except ImportError fallback is what runs on Modal"
        if optional
        else "the container fails with ModuleNotFoundError"
    )
    return ImportProblem(
        code="local-module-not-shipped",
        message=f"{top}{source} is a local module imported at {_places(sites)}, but Modal ships "
        f"only the service file, modal_fastapi_kit and local_sources: {fix}, or {outcome}",
        where=_where(sites),
        optional=optional,
    )


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
def _find_top(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of a top-level module, found on sys.path without importing it."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


def _origin(spec: importlib.machinery.ModuleSpec) -> Path | None:
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
    spec = _find_top(top)
    origin = _origin(spec) if spec is not None else None
    if origin is None or top in _packages_distributions():
        return False
    resolved = origin.resolve()
    if {"site-packages", "dist-packages"} & set(resolved.parts):
        return False
    return not any(resolved.is_relative_to(root) for root in _installed_roots())


def _local_files(module: str, names: tuple[str, ...]) -> list[tuple[Path, str | None]]:
    """The source files importing ``module`` (and ``from module import names``) runs, each
    with the package its relative imports resolve against; empty if not a local source file."""
    parts = module.split(".")
    spec = _find_top(parts[0])
    if spec is None:
        return []
    if spec.submodule_search_locations is None:
        origin = _origin(spec)
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


# -- distributions --------------------------------------------------------------------------


def _dotted(site_: ImportSite) -> list[str]:
    """The module names a site may load, longest first: ``from a.b import c`` -> a.b.c, a.b."""
    names = [f"{site_.module}.{name}" for name in site_.names]
    return sorted({site_.module, *names}, key=len, reverse=True)


def _candidates(site_: ImportSite) -> frozenset[str]:
    """Normalised distributions that may provide what ``site_`` imports."""
    found = {normalise(d) for d in _providers(site_)}
    for module in _dotted(site_):
        parts = module.split(".")
        for size in range(1, len(parts) + 1):
            prefix = ".".join(parts[:size])
            found.add(normalise(prefix))
            found.update(normalise(d) for d in KNOWN_DISTRIBUTIONS.get(prefix, ()))
    return frozenset(found)


def _fix_distribution(site_: ImportSite) -> str:
    """The distribution to add for ``site_``: a known name or one installed here, the most
    specific first (``google.cloud.storage`` -> google-cloud-storage), else a guess."""
    for module in _dotted(site_):
        parts = module.split(".")
        for size in range(len(parts), 0, -1):
            prefix = ".".join(parts[:size])
            if prefix in KNOWN_DISTRIBUTIONS:
                return KNOWN_DISTRIBUTIONS[prefix][0]
            if size > 1 and _installed(normalise(prefix)):
                return normalise(prefix)
    installed = _providers(site_)
    exact = [d for d in installed if normalise(d) == normalise(site_.top)]
    if exact or len(installed) == 1:
        return (exact or installed)[0]
    return normalise(_dotted(site_)[-1])  # not installed here: its full name is the best guess


def _providers(site_: ImportSite) -> list[str]:
    """Installed distributions that provide what ``site_`` imports. For a dotted module only
    those holding its files count: ``google.cloud.storage`` is not protobuf's, though both
    live under the ``google`` namespace."""
    installed = _packages_distributions().get(site_.top, [])
    if "." not in site_.module:
        return installed
    path = site_.module.replace(".", "/")
    return [d for d in installed if _holds(d, path)]


def _holds(dist: str, path: str) -> bool:
    files = _files(dist)
    return files is None or any(f.startswith(path) for f in files)


@cache
def _files(dist: str) -> tuple[str, ...] | None:
    """The paths an installed distribution recorded; None when it recorded none."""
    files = importlib.metadata.files(dist)
    return None if files is None else tuple(f.as_posix() for f in files)


@cache
def _packages_distributions() -> dict[str, list[str]]:
    """Top-level import name -> the installed distributions providing it (read once)."""
    return dict(importlib.metadata.packages_distributions())


@cache
def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def _requires(name: str) -> tuple[str, ...]:
    try:
        return tuple(importlib.metadata.requires(name) or ())
    except importlib.metadata.PackageNotFoundError:
        return ()


@cache
def _modal_runtime() -> frozenset[str]:
    """Distributions every Modal container has: the image builder's requirements and package
    tools, for the configured builder version or else the newest one Modal's client knows."""
    import modal

    builder = Path(modal.__file__).parent / "builder"
    versions = sorted(p.stem for p in builder.glob("[0-9]*.txt") if p.stem.count(".") == 1)
    if not versions:
        return frozenset()
    try:
        from modal.config import config

        chosen = config.get("image_builder_version") or versions[-1]
    except Exception:
        chosen = versions[-1]
    path = builder / f"{chosen}.txt"
    if not path.is_file():
        path = builder / f"{versions[-1]}.txt"
    names = set()
    for line in path.read_text().splitlines():
        parsed = requirement_name(line.split("#")[0].split(";")[0])
        if parsed is not None:
            names.add(parsed[0])
    try:
        tools = json.loads((builder / "base-images.json").read_text())["package_tools"][chosen]
        names.update(normalise(tool) for tool in str(tools).split())
    except (OSError, KeyError, ValueError):
        pass
    return frozenset(names)
