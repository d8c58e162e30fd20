"""The package's imports, read from its source (every import: at the top, under
``TYPE_CHECKING`` and inside functions): no circle, and the arrows point down."""

from __future__ import annotations

import ast
from pathlib import Path

import modal_fastapi_kit

PACKAGE = Path(modal_fastapi_kit.__file__).parent
ROOT = "modal_fastapi_kit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith(ROOT)}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if not target.startswith(ROOT):
                    continue
                for alias in node.names:  # `from . import cli`: the submodule itself
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_source():
    graph = imports()
    assert "modal_fastapi_kit._protocol" in graph["modal_fastapi_kit.client"] | {
        m for d in graph["modal_fastapi_kit.client"] for m in graph[d]
    }
    assert "modal_fastapi_kit.exceptions" in graph["modal_fastapi_kit._protocol"]
    # a circle is found when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert cycles(imports()) == []


def test_the_edge_renderers_stand_alone():
    graph = imports()
    edge = {m: deps for m, deps in graph.items() if m.startswith(f"{ROOT}._edge")}
    assert edge
    reached = {d for deps in edge.values() for d in deps}
    assert not {d for d in reached if d.startswith(f"{ROOT}._http")}


def test_the_client_and_the_shared_modules_import_nothing_of_the_server():
    graph = imports()
    below = {f"{ROOT}.client", f"{ROOT}._protocol", f"{ROOT}.exceptions"}
    below |= {m for m in graph if m.startswith(f"{ROOT}._client")}
    seen: set[str] = set()
    todo = list(below)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    # _weights: the weight sources a config names, on the standard library alone; _file: the
    # File type, on pydantic alone; _jobs.status and _jobs.options: a job's status document
    # and the options a config names, on pydantic alone.
    allowed = below | {
        f"{ROOT}._core",
        f"{ROOT}._core.spec",
        f"{ROOT}._config",
        f"{ROOT}._config_values",
        f"{ROOT}._weights",
        f"{ROOT}._file",
        f"{ROOT}._jobs",
        f"{ROOT}._jobs.options",
        f"{ROOT}._jobs.status",
    }
    assert seen <= allowed, seen - allowed
    assert graph[f"{ROOT}._file"] <= {f"{ROOT}.exceptions"}
    for module in ("_config_values", "_jobs.options", "_jobs.status"):
        assert graph[f"{ROOT}.{module}"] <= {f"{ROOT}.exceptions", f"{ROOT}._jobs"}
    assert graph[f"{ROOT}._weights"] <= {f"{ROOT}.exceptions"}
