"""Imports the deployed container cannot satisfy, as findings with the fix.

What the source imports (``source``) is compared with what the image installs
(``distributions``); each import the image lacks is grouped under the distribution to add.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .distributions import (
    KNOWN_DISTRIBUTIONS,
    ImagePackages,
    candidates,
    fix_distribution,
    image_packages,
    installed_version,
)
from .finding import Finding
from .source import ImportSite, display_path, find_top, module_file, walk

__all__ = ["import_findings"]


def import_findings(
    service_file: Path,
    packages: Sequence[str],
    local_sources: Sequence[str],
    python_version: str,
) -> list[Finding]:
    """What the service's code imports that the image will not have: local sources that do not
    exist, local modules Modal does not ship, and packages the image does not install, each
    grouped by the distribution to add. Imports only a ``try/except ImportError`` reaches are
    notes; the others fail the container, and are errors."""
    found = walk(service_file, local_sources)
    image = image_packages(packages, python_version)
    by_fix: dict[str, list[ImportSite]] = {}
    for site_ in found.third_party:
        if not candidates(site_.module, site_.names) & image.present:
            by_fix.setdefault(fix_distribution(site_.module, site_.names), []).append(site_)
    problems = [_unknown_source(n) for n in local_sources if find_top(n.split(".")[0]) is None]
    problems += [
        _local_problem(top, sites, local_sources) for top, sites in found.not_shipped.items()
    ]
    problems += [_missing_problem(dist, sites, image) for dist, sites in by_fix.items()]
    return problems


def _where(sites: Sequence[ImportSite]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f"{display_path(s.path)}:{s.line}" for s in sites))


def _places(sites: Sequence[ImportSite], most: int = 3) -> str:
    shown = [
        f"{display_path(s.path)}:{s.line}" + (f" in {s.scope}" if s.scope else "") for s in sites
    ]
    shown = list(dict.fromkeys(shown))
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more


def _missing_problem(dist: str, sites: list[ImportSite], image: ImagePackages) -> Finding:
    names = list(dict.fromkeys(s.module for s in sites))
    modules = names[0] + " is" if len(names) == 1 else ", ".join(names) + " are"
    it = "it" if len(names) == 1 else "them"
    optional = all(s.optional for s in sites)
    version = installed_version(dist)
    known = any(dist in names for names in KNOWN_DISTRIBUTIONS.values())
    here = (
        f" ({dist} {version} is installed here)"
        if version
        else ""
        if known
        else " (a name guessed from the import, as nothing here provides it: check it on PyPI)"
    )
    fix = f'add "{dist}" to packages=[...]{here}'
    why = f"the image does not install {it}"
    left_out = image.left_out_among(
        frozenset().union(*(candidates(s.module, s.names) for s in sites))
    )
    if left_out is not None:
        python = image.python_version
        why = (
            f"the image does not install {it}: packages=[...] lists {left_out!r}, whose marker "
            f"leaves it out on the image's Python {python}"
        )
        fix = (
            f"change that marker so that it holds on Python {python}, or drop it, or set "
            "python_version to a Python it holds on"
        )
    caveat = ""
    if image.unread:
        listed = ", ".join(f'"{u}"' for u in image.unread)
        caveat = f" (unless {listed}, whose dependencies cannot be read here, brings {it})"
    if optional:
        return Finding(
            code="optional-package",
            severity="note",
            message=f"{modules} imported only inside try/except ImportError ({_places(sites)}) "
            f"and {why}, so that fallback is what runs on Modal{caveat}",
            fix=f"if the deployment needs {it}, {fix}",
            where=_where(sites),
        )
    return Finding(
        code="missing-package",
        severity="error",
        message=f"{modules} imported ({_places(sites)}) but {why}, so the container fails with "
        f"ModuleNotFoundError{caveat}",
        fix=fix,
        where=_where(sites),
    )


def _unknown_source(name: str) -> Finding:
    return Finding(
        code="local-source-not-found",
        severity="error",
        message=f"local_sources names {name!r}, which is not importable from here (the working "
        "directory, the service file's folder and sys.path): Modal cannot add it to the image, "
        "so `modal deploy` fails",
        fix="fix the name, or run from the folder that holds it",
    )


def _local_problem(top: str, sites: list[ImportSite], local_sources: Sequence[str]) -> Finding:
    spec = find_top(top)
    origin = module_file(spec) if spec is not None else None
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
    return Finding(
        code="local-module-not-shipped",
        severity="note" if optional else "error",
        message=f"{top}{source} is a local module imported at {_places(sites)}, but Modal ships "
        f"only the service file, modal_fastapi_kit and local_sources, so {outcome}",
        fix=fix,
        where=_where(sites),
    )
