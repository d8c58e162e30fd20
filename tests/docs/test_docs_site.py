"""The docs site and the code in it: every fenced block of every page is run (or, where only a
Modal account could run it, checked) by a named test module; the site's nav and API reference
match the pages and the public modules. `make docs` builds the site with ``--strict``."""

from __future__ import annotations

import importlib
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from .._docs import fenced_blocks
from .._servers import ROOT

DOCS = ROOT / "docs"

# page -> (the test modules under tests/ that run its blocks, how many blocks of each
# language it has).
# A block added to a page fails test_every_page_s_blocks_are_run_by_its_tests until a module
# below runs it and its count here is raised. "" is a fence with no language.
RUN_BY: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "README.md": (("docs/test_readme.py",), {"python": 6, "bash": 9}),
    "CHANGELOG.md": ((), {}),
    "docs/getting-started.md": (("docs/test_getting_started.py",), {"python": 1, "bash": 6}),
    "docs/deploy.md": (
        ("docs/test_deploy_docs.py", "cli/test_check_imports.py"),
        {"python": 6, "console": 5, "": 2},
    ),
    "docs/custom-domain.md": (("docs/test_custom_domain_docs.py",), {"python": 3, "bash": 6}),
    "docs/openai.md": (("docs/test_openai_docs.py",), {"python": 9, "bash": 5, "json": 1}),
    "docs/jobs.md": (("docs/test_jobs_docs.py",), {"python": 3, "bash": 8, "json": 1}),
    "docs/production.md": (
        ("docs/test_production_docs.py", "http/test_metrics.py", "http/test_cors.py"),
        {"python": 3, "bash": 1, "yaml": 1, "promql": 2, "text": 1},
    ),
    "docs/testing.md": (
        ("test_testing_kit.py", "client/test_client.py", "client/test_client_jobs.py"),
        {"python": 11, "bash": 2},
    ),
    "docs/performance.md": (("docs/test_performance_docs.py",), {"": 8}),
}

# The public modules, each documented from its docstrings on a page of docs/api/.
PUBLIC_MODULES = [
    "modal_fastapi_kit",
    "modal_fastapi_kit.exceptions",
    "modal_fastapi_kit.openai",
    "modal_fastapi_kit.testing",
    "modal_fastapi_kit.client",
    "modal_fastapi_kit.webhooks",
    "modal_fastapi_kit.checks",
]


def pages() -> list[str]:
    found = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]
    return [str(p.relative_to(ROOT)) for p in found]


def load_mkdocs_yml() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may hold python-specific tags (!!python/name:...); none matter here.
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    config: dict = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    return config


def nav_files(nav: list) -> list[str]:
    files: list[str] = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            files += nav_files(value) if isinstance(value, list) else [value]
    return files


@pytest.mark.parametrize("page", pages())
def test_every_page_s_blocks_are_run_by_its_tests(page: str):
    counts = Counter(block.lang for block in fenced_blocks(ROOT / page))
    if not counts and page not in RUN_BY:
        return  # no code, nothing to run (the API pages, the pages that include another file)
    assert page in RUN_BY, f"{page} has code blocks {dict(counts)}: add it to RUN_BY"
    modules, expected = RUN_BY[page]
    assert dict(counts) == expected, (
        f"{page}'s blocks changed: run the new ones in {', '.join(modules) or 'a test module'} "
        "and update RUN_BY"
    )
    for module in modules:
        source = (ROOT / "tests" / module).read_text()
        assert Path(page).name in source, f"tests/{module} does not read {page}"


def test_the_registry_names_only_pages_that_exist():
    assert set(RUN_BY) <= set(pages())


def test_the_nav_lists_every_page_once_and_nothing_else():
    config = load_mkdocs_yml()
    listed = nav_files(config["nav"])
    assert len(listed) == len(set(listed))
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk


def test_the_site_is_built_strict_into_an_ignored_folder():
    config = load_mkdocs_yml()
    assert config["strict"] is True
    assert config["site_dir"] == "site"
    assert re.search(r"^/?site/$", (ROOT / ".gitignore").read_text(), flags=re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs: .*\n\t\$\(BIN\)/mkdocs build --strict", makefile, flags=re.M)
    assert re.search(r"^test: .*\bdocs\b", makefile, flags=re.M)


def test_the_home_page_and_the_changelog_are_the_repository_s_files():
    assert (DOCS / "index.md").read_text().strip() == '--8<-- "README.md"'
    assert (DOCS / "changelog.md").read_text().strip() == '--8<-- "CHANGELOG.md"'


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_module_has_an_api_page(module: str):
    importlib.import_module(module)
    references = {
        name
        for page in (DOCS / "api").glob("*.md")
        for name in re.findall(r"^::: (\S+)$", page.read_text(), flags=re.M)
    }
    assert module in references


def test_relative_links_between_pages_point_at_pages():
    """mkdocs checks the links when it builds; this says which one is wrong, and faster."""
    for page in DOCS.rglob("*.md"):
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            assert (page.parent / path).exists(), f"{page.relative_to(ROOT)}: {target}"
