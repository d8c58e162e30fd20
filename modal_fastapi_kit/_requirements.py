"""pip requirements as pip reads them inside the Modal image, not on this machine.

Requirements are parsed with ``packaging`` and their markers evaluated for the image: its
Python (``python_version`` and ``python_full_version``) on Modal's containers (CPython on
Debian, x86_64). A requirement whose marker does not hold there is one pip skips, so it
installs nothing. ``_modal.build`` (which of its pins a listed package replaces) and
``mfk check`` (what the image installs) both read requirements here.

Also what every Modal container holds before ``packages``: the requirements and package tools
of Modal's image builder, read from the files the installed Modal SDK ships
(``modal/builder/<version>.txt`` and ``base-images.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "CONTAINER_PLATFORM",
    "ImageEnvironment",
    "applies",
    "builder_requirements_path",
    "builder_version",
    "canonicalize_name",
    "image_environment",
    "installed_names",
    "modal_runtime",
    "parse_requirement",
    "requirement_name",
]

# The marker values of every Modal container: CPython on Debian, x86_64.
CONTAINER_PLATFORM: Mapping[str, str] = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "platform_release": "",
    "platform_version": "",
}
_SERIES_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
_COMMENT_RE = re.compile(r"(^|\s)#.*$")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".zip")


@dataclass(frozen=True)
class ImageEnvironment:
    """The marker environment of the image: its Python on Modal's container platform."""

    python_version: str  # "3.12"
    python_full_version: str  # "3.12.10"

    def markers(self) -> dict[str, str]:
        """Every marker variable but ``extra``, as ``packaging.markers`` names them."""
        return {
            **CONTAINER_PLATFORM,
            "python_version": self.python_version,
            "python_full_version": self.python_full_version,
            "implementation_version": self.python_full_version,
        }


def parse_requirement(spec: str) -> Requirement | None:
    """``spec`` as pip reads a requirement line; None for what names no distribution without
    fetching it: a URL, a path or an archive file, a VCS link, a pip option."""
    text = spec.strip()
    if text.lower().endswith(_ARCHIVES) and "@" not in text:
        return None  # pip takes "pkg-1.0.whl" for a file, not for a name
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def requirement_name(spec: str) -> tuple[str, frozenset[str]] | None:
    """The canonical name and extras of a requirement; None where ``parse_requirement`` is."""
    requirement = parse_requirement(spec)
    if requirement is None:
        return None
    extras = frozenset(canonicalize_name(extra) for extra in requirement.extras)
    return canonicalize_name(requirement.name), extras


def applies(
    requirement: Requirement, environment: ImageEnvironment, extras: Iterable[str] = ()
) -> bool:
    """Whether pip installs ``requirement`` in ``environment``: it has no marker, or its marker
    holds there with no extra or with one of ``extras`` (those asked of the distribution that
    requires it)."""
    marker = requirement.marker
    if marker is None:
        return True
    markers = environment.markers()
    return any(marker.evaluate({**markers, "extra": extra}) for extra in ("", *extras))


def installed_names(specs: Iterable[str], environment: ImageEnvironment) -> frozenset[str]:
    """The canonical names of the distributions ``specs`` make pip install in
    ``environment``: those whose markers hold there (specs naming no distribution left out)."""
    parsed = (parse_requirement(spec) for spec in specs)
    return frozenset(
        canonicalize_name(r.name) for r in parsed if r is not None and applies(r, environment)
    )


def image_environment(python_version: str) -> ImageEnvironment:
    """The marker environment of an image running Python ``python_version`` ("3.12").

    ``python_full_version`` is the micro version Modal's builder pins for that series; builders
    that pin none take the latest release, of which the newest pinned one is a lower bound; with
    no pin known at all it is ``X.Y.0``.
    """
    match = _SERIES_RE.match(python_version)
    if match is None:
        raise ValueError(f"not a Python version: {python_version!r}")
    major, minor, micro = match.groups()
    series = f"{major}.{minor}"
    if micro is not None:
        return ImageEnvironment(series, f"{series}.{micro}")
    try:
        pinned = _pinned_python(series, builder_version())
    except OSError:  # a Modal SDK without its builder files
        pinned = None
    return ImageEnvironment(series, pinned or f"{series}.0")


# -- Modal's image builder --------------------------------------------------------------------


def builder_version() -> str:
    """The image builder version deploys use: the one configured locally
    (``MODAL_IMAGE_BUILDER_VERSION`` or ``image_builder_version`` in ``~/.modal.toml``), else
    the newest one the installed Modal SDK ships requirements for. (A workspace may pin an
    older one in Modal's dashboard; that setting cannot be read without an account.)"""
    from modal.config import config

    configured = config.get("image_builder_version")
    if configured:
        return str(configured)
    return _newest_builder_version()


@cache
def _newest_builder_version() -> str:
    versions = sorted(
        path.stem for path in _builder_dir().glob("[0-9]*.txt") if path.stem.count(".") == 1
    )
    if not versions:
        raise FileNotFoundError(f"no image builder requirements in {_builder_dir()}")
    return versions[-1]


def builder_requirements_path(version: str, python_version: str) -> Path:
    """The requirements file Modal installs into a container for its own runtime, as Modal
    picks it (``2023.12`` has a separate file for Python 3.12)."""
    suffix = ".312" if version == "2023.12" and python_version.startswith("3.12") else ""
    return _builder_dir() / f"{version}{suffix}.txt"


def modal_runtime(python_version: str) -> frozenset[str]:
    """Canonical names of the distributions every Modal container of that Python holds: the
    builder's requirements whose markers hold there, and its package tools (pip, uv, ...)."""
    return _modal_runtime(image_environment(python_version), builder_version())


@cache
def _modal_runtime(environment: ImageEnvironment, version: str) -> frozenset[str]:
    path = builder_requirements_path(version, environment.python_version)
    if not path.is_file():
        path = builder_requirements_path(_newest_builder_version(), environment.python_version)
    lines = (_COMMENT_RE.sub("", line).strip() for line in path.read_text().splitlines())
    names = set(installed_names((line for line in lines if line), environment))
    tools = _base_images().get("package_tools", {}).get(version, "")
    names.update(canonicalize_name(tool) for tool in str(tools).split())
    return frozenset(names)


def _pinned_python(series: str, version: str) -> str | None:
    pinned: dict[str, list[str]] = _base_images().get("python", {})
    for choice in (version, *sorted(pinned, reverse=True)):
        found = [str(v) for v in pinned.get(choice, []) if str(v).rpartition(".")[0] == series]
        if found:
            return found[-1]
    return None


@cache
def _base_images() -> dict[str, Any]:
    """Modal's ``base-images.json``: per builder version, the Python micro versions it pins
    (``python``) and the package tools it installs (``package_tools``)."""
    try:
        data = json.loads((_builder_dir() / "base-images.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _builder_dir() -> Path:
    import modal

    return Path(modal.__file__).parent / "builder"
