"""Which pip distribution provides an import, and which distributions the image installs.

An import is mapped to the distributions that may provide it: those installed here that hold
its files (their metadata), its own name, and a table for names that differ (``sklearn`` is
``scikit-learn``). The image holds its ``packages``, their dependencies as installed here, and
Modal's container runtime; every requirement is evaluated for the image's Python and platform,
so one whose marker does not hold there installs nothing.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from .._requirements import (
    applies,
    canonicalize_name,
    image_environment,
    modal_runtime,
    parse_requirement,
)

__all__ = [
    "KNOWN_DISTRIBUTIONS",
    "ImagePackages",
    "candidates",
    "fix_distribution",
    "image_packages",
    "installed_version",
    "packages_distributions",
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


@dataclass(frozen=True)
class ImagePackages:
    """What pip leaves in the image, as canonical distribution names, and what could not be
    known: the requirements whose dependencies cannot be read here (not installed, or a URL or
    path), and the listed ones whose marker leaves them out of the image's Python."""

    python_version: str
    present: frozenset[str]
    unread: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()

    def left_out_among(self, distributions: frozenset[str]) -> str | None:
        """The listed requirement its marker left out that names one of ``distributions``."""
        for spec in self.left_out:
            requirement = parse_requirement(spec)
            if requirement is not None and canonicalize_name(requirement.name) in distributions:
                return spec
        return None


def image_packages(packages: Sequence[str], python_version: str) -> ImagePackages:
    """What the image installs for ``packages`` on Python ``python_version``.

    That is ``packages`` whose markers hold in the image and their dependencies (read from the
    metadata installed here, each marker evaluated for the image with the extras asked of its
    distribution), plus Modal's container runtime (the client, synchronicity, the image
    builder's requirements and package tools) and this library, which the image ships as
    source.
    """
    environment = image_environment(python_version)
    found: set[str] = {"modal", "synchronicity", "modal-fastapi-kit"}
    found |= modal_runtime(python_version)
    unread: list[str] = []
    left_out: list[str] = []
    pending: list[tuple[str, frozenset[str]]] = []
    for spec in packages:
        requirement = parse_requirement(spec)
        if requirement is None:
            unread.append(spec)
            continue
        if not applies(requirement, environment):
            left_out.append(spec)
            continue
        listed = canonicalize_name(requirement.name)
        pending.append((listed, frozenset(canonicalize_name(e) for e in requirement.extras)))
        if installed_version(listed) is None:
            unread.append(spec)
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        found.add(name)
        for line in _requires(name):
            dependency = parse_requirement(line)
            if dependency is not None and applies(dependency, environment, extras):
                wanted = frozenset(canonicalize_name(e) for e in dependency.extras)
                pending.append((canonicalize_name(dependency.name), wanted))
    return ImagePackages(python_version, frozenset(found), tuple(unread), tuple(left_out))


def _dotted(module: str, names: tuple[str, ...]) -> list[str]:
    """The module names an import may load, longest first: ``from a.b import c`` -> a.b.c,
    a.b."""
    return sorted({module, *(f"{module}.{name}" for name in names)}, key=len, reverse=True)


def candidates(module: str, names: tuple[str, ...] = ()) -> frozenset[str]:
    """Canonical names of the distributions that may provide what ``from module import
    names`` (or ``import module``) loads."""
    found = {canonicalize_name(d) for d in _providers(module)}
    for dotted in _dotted(module, names):
        parts = dotted.split(".")
        for size in range(1, len(parts) + 1):
            prefix = ".".join(parts[:size])
            found.add(canonicalize_name(prefix))
            found.update(canonicalize_name(d) for d in KNOWN_DISTRIBUTIONS.get(prefix, ()))
    return frozenset(found)


def fix_distribution(module: str, names: tuple[str, ...] = ()) -> str:
    """The distribution to add for an import: a known name or one installed here, the most
    specific first (``google.cloud.storage`` -> google-cloud-storage), else a guess."""
    for dotted in _dotted(module, names):
        parts = dotted.split(".")
        for size in range(len(parts), 0, -1):
            prefix = ".".join(parts[:size])
            if prefix in KNOWN_DISTRIBUTIONS:
                return KNOWN_DISTRIBUTIONS[prefix][0]
            if size > 1 and installed_version(canonicalize_name(prefix)):
                return canonicalize_name(prefix)
    installed = _providers(module)
    top = canonicalize_name(module.split(".")[0])
    exact = [d for d in installed if canonicalize_name(d) == top]
    if exact or len(installed) == 1:
        return (exact or installed)[0]
    # Not installed here: its full name is the best guess.
    return canonicalize_name(_dotted(module, names)[-1])


def _providers(module: str) -> list[str]:
    """Installed distributions that provide ``module``. For a dotted module only those holding
    its files count: ``google.cloud.storage`` is not protobuf's, though both live under the
    ``google`` namespace."""
    installed = packages_distributions().get(module.split(".")[0], [])
    if "." not in module:
        return installed
    path = module.replace(".", "/")
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
def packages_distributions() -> dict[str, list[str]]:
    """Top-level import name -> the installed distributions providing it (read once)."""
    return dict(importlib.metadata.packages_distributions())


@cache
def installed_version(name: str) -> str | None:
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
