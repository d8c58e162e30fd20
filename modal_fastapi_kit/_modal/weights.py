"""Declared weights on Modal: the Volume, the fetch function, and the container's side.

A service with ``weights=`` gets, on its App:

- the weights Volume (``source.volume``, created if missing) mounted at ``WEIGHTS_MOUNT`` on
  the GPU class (every topology that mounts ``_volumes(config)``);
- a CPU function ``<Class>_fetch_weights`` (bound at module level, as Modal finds it) that
  mounts the same Volume, runs ``fetch_weights`` into it and commits it. ``mfk deploy`` calls
  it once, after ``modal deploy`` and before it prints the endpoint; with the revision's
  marker already in the Volume it returns at once.

In a container, ``prepare`` (run by ``@modal.enter`` before ``load``) finds the revision's
directory; when the marker is not visible it reloads the Volume, and when it is still missing
(the app was deployed with plain ``modal deploy``) it fetches hub weights itself and commits,
so the first container pays for the download instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

import modal

from .._config import ServiceConfig
from .._core.spec import ServiceSpec
from .._weights import (
    SHIPPED_DIGEST_ENV,
    WEIGHTS_PATH_ATTR,
    LocalWeights,
    WeightsSource,
    copy_directory,
    default_downloader,
    fetch_weights,
    is_complete,
    target_dir,
)
from ..exceptions import ConfigError

__all__ = [
    "FETCH_FUNCTION_SUFFIX",
    "FETCH_TIMEOUT",
    "SHIPPED_SOURCE_PATH",
    "WEIGHTS_MOUNT",
    "check_weights_deployable",
    "fetch_function_name",
    "fetch_into_volume",
    "prepare",
    "register_fetch_function",
    "weights_env",
    "weights_mounts",
]

logger = logging.getLogger("modal_fastapi_kit")

WEIGHTS_MOUNT = "/mfk-weights"  # where the weights Volume is mounted, in every container
SHIPPED_SOURCE_PATH = "/mfk-weights-source"  # a LocalWeights directory, in the fetch image
FETCH_FUNCTION_SUFFIX = "_fetch_weights"
FETCH_TIMEOUT = 3600  # seconds: a large checkpoint over a slow link
HUB_REQUIREMENT = "huggingface_hub>=0.23"  # local_dir without symlinks into a cache


def fetch_function_name(server_cls: type) -> str:
    """The module-level name the fetch function is bound to."""
    return f"{server_cls.__name__}{FETCH_FUNCTION_SUFFIX}"


def weights_volume(source: WeightsSource) -> modal.Volume:
    return modal.Volume.from_name(source.volume, create_if_missing=True)


def weights_mounts(config: ServiceConfig) -> dict[str, modal.Volume]:
    """The GPU class's weights mount, if the service declares weights."""
    if config.weights is None:
        return {}
    return {WEIGHTS_MOUNT: weights_volume(config.weights)}


def weights_env(config: ServiceConfig) -> dict[str, str]:
    """Image environment: a LocalWeights digest, computed here, read in the container."""
    if isinstance(config.weights, LocalWeights):
        return {SHIPPED_DIGEST_ENV: config.weights.version}
    return {}


def check_weights_deployable(spec: ServiceSpec, mounted: dict[str, Any]) -> None:
    """Refuse a weights mount that clashes with ``volumes=`` or a module-level name."""
    server_cls, config = spec.server_cls, spec.config
    if config.weights is None:
        return
    if WEIGHTS_MOUNT in mounted:
        raise ConfigError(
            f"volumes mounts a Volume at {WEIGHTS_MOUNT}, where weights= goes: mount it "
            "elsewhere, or drop it and let weights= mount its Volume"
        )
    name = fetch_function_name(server_cls)
    module = sys.modules.get(server_cls.__module__)
    if module is not None and name in vars(module) and not _is_ours(vars(module)[name]):
        raise ConfigError(
            f"{server_cls.__module__} already defines {name!r}; modal_fastapi_kit binds the "
            f"weights fetch function of {server_cls.__name__} to that name: rename yours"
        )


def _is_ours(obj: object) -> bool:
    return isinstance(obj, modal.Function)


def fetch_image(image: modal.Image, config: ServiceConfig) -> modal.Image:
    """The fetch function's image: ``image`` (the service's, with ``fetch_packages``) plus,
    for LocalWeights, the directory shipped to ``SHIPPED_SOURCE_PATH``."""
    if isinstance(config.weights, LocalWeights):
        return image.add_local_dir(str(config.weights.directory), remote_path=SHIPPED_SOURCE_PATH)
    return image


def fetch_packages(config: ServiceConfig, packages: tuple[str, ...]) -> tuple[str, ...]:
    """The service's pip requirements, plus huggingface_hub for hub weights when not listed."""
    from .._requirements import canonicalize_name

    listed = {canonicalize_name(_project(p)) for p in packages}
    hub = config.weights is not None and config.weights.kind == "huggingface"
    if hub and "huggingface-hub" not in listed:
        return (*packages, HUB_REQUIREMENT)
    return packages


def _project(requirement: str) -> str:
    for stop in "<>=!~[;@ ":
        requirement = requirement.split(stop, 1)[0]
    return requirement


def register_fetch_function(
    app: modal.App, spec: ServiceSpec, image: modal.Image, secrets: list[modal.Secret]
) -> modal.Function[..., Any, Any]:
    """Register ``<Class>_fetch_weights`` on the App and bind it in the user's module."""
    server_cls, config = spec.server_cls, spec.config
    assert config.weights is not None
    source = config.weights
    name = fetch_function_name(server_cls)

    def fetch() -> dict[str, Any]:
        return fetch_into_volume(source)

    fetch.__name__ = fetch.__qualname__ = name
    fetch.__module__ = server_cls.__module__
    function: modal.Function[..., Any, Any] = app.function(
        image=image,
        volumes={WEIGHTS_MOUNT: weights_volume(source)},
        secrets=secrets,  # a gated repo's HF_TOKEN comes from the service's secrets
        timeout=FETCH_TIMEOUT,
        region=list(config.region) if isinstance(config.region, tuple) else config.region,
        cloud=config.cloud,
    )(fetch)
    setattr(sys.modules[server_cls.__module__], name, function)
    return function


# -- in a container -------------------------------------------------------------------------


def container_downloader(source: Any, target: Path) -> None:
    """Hub weights from the Hub; a LocalWeights directory from where the image shipped it."""
    if isinstance(source, LocalWeights):
        copy_directory(source, target, origin=SHIPPED_SOURCE_PATH)
    else:
        default_downloader(source, target)


def fetch_into_volume(
    source: WeightsSource,
    *,
    root: Path = Path(WEIGHTS_MOUNT),
    volume: Any = None,
    downloader: Any = container_downloader,
) -> dict[str, Any]:
    """The fetch function's body: fetch (or find) the revision under ``root``, commit if new."""
    result = fetch_weights(source, root, downloader=downloader)
    if result.fetched:
        (volume or weights_volume(source)).commit()
    logger.info("weights %s at %s (fetched: %s)", source.describe(), result.path, result.fetched)
    return result.as_dict()


async def prepare(
    instance: Any,
    *,
    root: Path = Path(WEIGHTS_MOUNT),
    volume: Any = None,
    downloader: Any = container_downloader,
) -> None:
    """Before ``load``: point ``instance.weights_path`` at the revision in the mounted Volume."""
    source = type(instance).service_config().weights
    if source is None:
        return
    path = target_dir(source, root)
    if not is_complete(path):
        volume = volume or weights_volume(source)
        await volume.reload.aio()  # fetched after this container mounted the Volume
    if not is_complete(path):
        if isinstance(source, LocalWeights):
            raise ConfigError(
                f"the weights {source.describe()} are not in Volume {source.volume!r}: deploy "
                f"with `mfk deploy`, which runs {fetch_function_name(type(instance))} first"
            )
        logger.warning(
            "weights %s not in Volume %r yet: fetching them in this container; `mfk deploy` "
            "fetches them before the first request",
            source.describe(),
            source.volume,
        )
        fetch = partial(fetch_into_volume, source, root=root, volume=volume, downloader=downloader)
        await asyncio.to_thread(fetch)
    setattr(instance, WEIGHTS_PATH_ATTR, path)
