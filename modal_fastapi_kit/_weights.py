"""Weights a service names up front, and the fetch that puts them in place before traffic.

A source says what the weights are; ``fetch_weights`` puts them under a root directory (on
Modal: the weights Volume; on this machine: a local cache) at
``<root>/<kind>/<name>/<revision>/``, writing a completion marker last:

- the marker is there: nothing is fetched (a second deploy with the same revision);
- another revision: another directory, fetched beside the first;
- the directory is there without its marker (a fetch that died half-way): it is emptied and
  fetched again.

Sources, all frozen and checked when built (so at decoration time):

- ``HuggingFaceWeights(repo_id, revision=<commit sha>, allow_patterns=..., ignore_patterns=...)``:
  a Hugging Face Hub repository at a pinned commit, fetched with
  ``huggingface_hub.snapshot_download``.
- ``LocalWeights(directory)``: a directory on the machine that deploys. ``mfk serve`` loads
  from it in place; on Modal it is copied into the Volume under a digest of its files.

This module imports neither modal nor huggingface_hub: the Modal side is ``_modal/weights.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from .exceptions import ConfigError

__all__ = [
    "DEFAULT_WEIGHTS_VOLUME",
    "LOCAL_CACHE_ENV",
    "MARKER",
    "SHIPPED_DIGEST_ENV",
    "WEIGHTS_PATH_ATTR",
    "WEIGHTS_SOURCES",
    "Downloader",
    "FetchResult",
    "HuggingFaceWeights",
    "LocalWeights",
    "WeightsSource",
    "copy_directory",
    "default_downloader",
    "directory_digest",
    "fetch_weights",
    "hub_download",
    "is_complete",
    "local_cache_root",
    "local_weights_path",
    "target_dir",
]

DEFAULT_WEIGHTS_VOLUME = "mfk-weights"
MARKER = ".mfk-complete"  # written last, as JSON: what was fetched, and when
# The instance attribute ModelServer.weights_path reads; the Modal container sets it.
WEIGHTS_PATH_ATTR = "_mfk_weights_path"
LOCAL_CACHE_ENV = "MFK_WEIGHTS_CACHE"  # where `mfk serve` keeps fetched hub weights
# Set in the Modal image of a service with LocalWeights: the digest of the deployed files.
SHIPPED_DIGEST_ENV = "MFK_WEIGHTS_DIGEST"

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# A Hub repo id: "name" or "owner/name"; letters, digits, '-', '_', '.'; no '--' or '..'.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _patterns(owner: str, name: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(
            f"{owner}({name}={value!r}) is a string; pass a list of glob patterns: "
            f"{name}=[{value!r}]"
        )
    if not isinstance(value, Iterable) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(
            f"{owner}({name}={value!r}) is invalid: expected a list of non-empty glob "
            "patterns, e.g. ['*.safetensors', '*.json']"
        )
    return tuple(value)


def _check_volume(owner: str, volume: object) -> None:
    if not (isinstance(volume, str) and _VOLUME_RE.match(volume)):
        raise ConfigError(
            f"{owner}(volume={volume!r}) is invalid: expected the name of a Modal Volume "
            f"(letters, digits, '.', '_', '-'), e.g. volume={DEFAULT_WEIGHTS_VOLUME!r}"
        )


@dataclass(frozen=True)
class HuggingFaceWeights:
    """A Hugging Face Hub repository at a pinned commit.

    ``revision`` must be a full 40-character commit sha (find it on the repo's "Files and
    versions" page, or ``huggingface_hub.HfApi().model_info(repo_id).sha``): a branch such as
    ``"main"`` moves, and the service would load other weights than those it was tested with.
    ``allow_patterns`` / ``ignore_patterns`` are glob lists passed to ``snapshot_download``.
    ``volume`` names the Modal Volume the weights land in (shared by services that name it).
    """

    repo_id: str
    revision: str
    allow_patterns: Sequence[str] | None = None
    ignore_patterns: Sequence[str] | None = None
    repo_type: Literal["model", "dataset", "space"] = "model"
    volume: str = DEFAULT_WEIGHTS_VOLUME

    kind: ClassVar[str] = "huggingface"

    def __post_init__(self) -> None:
        owner = "HuggingFaceWeights"
        if not (isinstance(self.repo_id, str) and _REPO_RE.match(self.repo_id)) or any(
            bad in self.repo_id for bad in ("--", "..")
        ):
            raise ConfigError(
                f"{owner}(repo_id={self.repo_id!r}) is not a Hugging Face repo id: write "
                "'owner/name' (letters, digits, '-', '_', '.'), e.g. "
                "'sentence-transformers/all-MiniLM-L6-v2'"
            )
        if not (isinstance(self.revision, str) and _SHA_RE.match(self.revision)):
            raise ConfigError(
                f"{owner}(revision={self.revision!r}) is not pinned: pass the full 40-character "
                "commit sha (lowercase hex) of the revision to serve, not a branch or tag; find "
                f"it with `huggingface_hub.HfApi().model_info({self.repo_id!r}).sha`"
            )
        object.__setattr__(
            self, "allow_patterns", _patterns(owner, "allow_patterns", self.allow_patterns)
        )
        object.__setattr__(
            self, "ignore_patterns", _patterns(owner, "ignore_patterns", self.ignore_patterns)
        )
        if self.repo_type not in ("model", "dataset", "space"):
            raise ConfigError(
                f"{owner}(repo_type={self.repo_type!r}) is invalid: expected 'model', "
                "'dataset' or 'space'"
            )
        _check_volume(owner, self.volume)

    @property
    def name(self) -> str:
        return self.repo_id

    @property
    def version(self) -> str:
        return self.revision

    def describe(self) -> str:
        return f"huggingface {self.repo_id}@{self.revision[:12]}"


@dataclass(frozen=True)
class LocalWeights:
    """A directory on the machine that deploys (or serves locally).

    ``mfk serve`` and ``testing.serve`` load from the directory in place. On Modal, the
    generated fetch function copies it into the weights Volume under
    ``local/<name>/<digest>/``, where ``digest`` covers every file's path and bytes: changed
    files land in a new directory. ``name`` defaults to the directory's name.

    In a Modal container the directory is not there: the digest computed where the app was
    built travels in the image's environment (``MFK_WEIGHTS_DIGEST``) instead.
    """

    directory: str | os.PathLike[str]
    name: str = ""
    volume: str = DEFAULT_WEIGHTS_VOLUME

    kind: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        owner = "LocalWeights"
        if not isinstance(self.directory, str | os.PathLike):
            raise ConfigError(
                f"{owner}(directory={self.directory!r}) is invalid: expected a path to a "
                "directory of weight files"
            )
        path = Path(self.directory).expanduser().resolve()
        if SHIPPED_DIGEST_ENV not in os.environ:
            if not path.is_dir():
                raise ConfigError(
                    f"{owner}(directory={str(self.directory)!r}) is not a directory on this "
                    "machine: pass the folder that holds the weight files (config.json, "
                    "*.safetensors, ...)"
                )
            if not any(p.is_file() for p in path.rglob("*")):
                raise ConfigError(
                    f"{owner}(directory={str(path)!r}) holds no files: put the weight files there"
                )
        name = self.name or path.name
        if not (isinstance(name, str) and _REPO_RE.match(name)):
            raise ConfigError(
                f"{owner}(name={name!r}) is invalid: expected letters, digits, '-', '_', '.' "
                "(one optional '/'), e.g. name='minilm'"
            )
        _check_volume(owner, self.volume)
        object.__setattr__(self, "directory", str(path))
        object.__setattr__(self, "name", name)

    @functools.cached_property
    def version(self) -> str:
        """The digest of the directory's files (computed once, when first needed)."""
        return os.environ.get(SHIPPED_DIGEST_ENV) or directory_digest(Path(self.directory))

    def describe(self) -> str:
        return f"local {self.directory} (digest {self.version[:12]})"


WeightsSource = HuggingFaceWeights | LocalWeights
WEIGHTS_SOURCES = (HuggingFaceWeights, LocalWeights)

# (source, target directory) -> None: fills the target with the source's files.
Downloader = Callable[[Any, Path], None]


@dataclass(frozen=True)
class FetchResult:
    path: Path
    fetched: bool  # False: the marker was there, nothing was fetched

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "fetched": self.fetched}


def directory_digest(path: Path) -> str:
    """A sha256 over every file's relative path and bytes, in sorted order (40 hex chars)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:40]


def target_dir(source: WeightsSource, root: Path) -> Path:
    """``<root>/<kind>/<name>/<revision>``: where the source's files land under ``root``."""
    return root / source.kind / source.name / source.version


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def fetch_weights(
    source: WeightsSource, root: Path, *, downloader: Downloader | None = None
) -> FetchResult:
    """Put the source's files under ``root`` (see the module docstring), once per revision."""
    target = target_dir(source, root)
    if is_complete(target):
        return FetchResult(target, fetched=False)
    if target.exists():  # a fetch that did not finish: start again from nothing
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (downloader or default_downloader)(source, target)
    marker = {"source": source.describe(), "version": source.version, "fetched_at": time.time()}
    temporary = target / (MARKER + ".tmp")
    temporary.write_text(json.dumps(marker))
    temporary.replace(target / MARKER)
    return FetchResult(target, fetched=True)


def default_downloader(source: Any, target: Path) -> None:
    if isinstance(source, HuggingFaceWeights):
        hub_download(source, target)
    else:
        copy_directory(source, target)


def hub_download(source: HuggingFaceWeights, target: Path) -> None:  # pragma: no cover
    """Download the pinned snapshot from the Hub (never run by this project's tests)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ConfigError(
            "HuggingFaceWeights needs huggingface_hub: pip install 'huggingface_hub>=0.23'"
        ) from exc
    snapshot_download(
        source.repo_id,
        repo_type=source.repo_type,
        revision=source.revision,
        allow_patterns=list(source.allow_patterns) if source.allow_patterns else None,
        ignore_patterns=list(source.ignore_patterns) if source.ignore_patterns else None,
        local_dir=target,
    )


def copy_directory(source: Any, target: Path, *, origin: str | None = None) -> None:
    """Copy a ``LocalWeights`` directory (or ``origin``, where it was shipped) into target."""
    shutil.copytree(origin or source.directory, target, dirs_exist_ok=True)


def local_cache_root() -> Path:
    """Where fetched weights are kept on this machine: ``$MFK_WEIGHTS_CACHE`` or
    ``~/.cache/modal_fastapi_kit/weights``."""
    found = os.environ.get(LOCAL_CACHE_ENV)
    if found:
        return Path(found)
    return Path.home() / ".cache" / "modal_fastapi_kit" / "weights"


def local_weights_path(source: WeightsSource) -> Path:
    """The weights on this machine: a local directory in place; hub weights fetched (once)
    into the local cache."""
    if isinstance(source, LocalWeights):
        return Path(source.directory)
    return fetch_weights(source, local_cache_root()).path
