"""The Modal deployment of a ``@gpu_service`` class: Image, App, GPU class, web endpoint.

The only module that imports ``modal`` at import time; ``X.modal_app()`` imports it.

How Modal finds what is generated here, in the container (modal 1.6): it imports the user's
module, which runs ``app = X.modal_app()`` again, then looks objects up by module-level name.

- The GPU class is ``getattr(module, "X")``: the user's class itself. ``deployment`` attaches the
  Modal markers to that class as ``mfk_*`` attributes (``@modal.enter``, then
  ``@modal.batched`` / ``@modal.method``, or ``@modal.asgi_app`` when colocated), so the class
  Modal finds carries them and ``X.router()`` keeps working locally.
- The split topology's web function is ``getattr(module, "X_web")``: ``deployment`` binds it in
  the user's module under that name.

The tiers exchange JSON-compatible dicts, never pickled pydantic objects, so a caller that
imports the user's module under another name can still call the deployed class.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import modal
from pydantic import BaseModel

from ._config import RetryPolicy, ServiceConfig
from ._errors import ConfigError, PredictError
from ._heap import freeze_loaded_heap
from ._server import ModelServer, batch_function

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "ENTER_METHOD",
    "HF_CACHE_PATH",
    "PREDICT_METHOD",
    "SNAPSHOT_METHOD",
    "WEB_METHOD",
    "ModalDeployment",
    "credentials_configured",
    "deployment",
]

PREDICT_METHOD = "mfk_predict"  # the GPU class's Modal method (split topology)
WEB_METHOD = "mfk_web"  # the GPU class's asgi_app method (colocated topology)
ENTER_METHOD = "mfk_enter"  # @modal.enter(): load (unless snapshotted), to_device, warmup
SNAPSHOT_METHOD = "mfk_enter_snapshot"  # @modal.enter(snap=True): load, before the snapshot
WEB_FUNCTION_SUFFIX = "_web"
HF_CACHE_PATH = "/root/.cache/huggingface"
LIBRARY = "modal_fastapi_kit"
# What the library imports in the container, pinned to the versions installed here.
RUNTIME_DISTRIBUTIONS = ("fastapi", "pydantic")

_CACHE_ATTR = "__mfk_modal_deployment__"

Wire = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ModalDeployment:
    """The Modal objects generated for one class, plus what went into its image."""

    server_cls: type[ModelServer[Any, Any]]
    app: modal.App
    image: modal.Image
    gpu_cls: modal.Cls
    web_function: modal.Function[..., Any, Any] | None  # split topology only
    web_function_name: str | None
    python_version: str
    packages: tuple[str, ...]
    label: str

    @property
    def config(self) -> ServiceConfig:
        return self.server_cls.config()

    @property
    def url_shape(self) -> str:
        """The endpoint URL once deployed; Modal fills in the workspace."""
        return f"https://<workspace>--{self.label}.modal.run"


def deployment(server_cls: type[ModelServer[Any, Any]]) -> ModalDeployment:
    """Build (once per class and process) the Modal objects for a decorated class."""
    found = vars(server_cls).get(_CACHE_ATTR)
    if isinstance(found, ModalDeployment):
        return found
    config = server_cls.config()
    _check_deployable(server_cls, config)
    python_version, packages = image_spec(config)
    image = build_image(config, python_version, packages)
    app = modal.App(config.name)
    label = config.label or config.name
    markers = _markers(server_cls, config, label)
    for name, marker in markers.items():
        setattr(server_cls, name, marker)
    try:
        gpu_cls = _register_gpu_class(app, image, server_cls, config)
        web_function = None
        if config.topology == "split":
            web_function = _register_web_function(app, image, server_cls, config, gpu_cls, label)
    except Exception as exc:
        for name in markers:  # leave the class as it was
            delattr(server_cls, name)
        if isinstance(exc, modal.exception.InvalidError):
            raise ConfigError(
                f"Modal rejected the deployment of {server_cls.__qualname__}: {exc}"
            ) from exc
        raise
    built = ModalDeployment(
        server_cls=server_cls,
        app=app,
        image=image,
        gpu_cls=gpu_cls,
        web_function=web_function,
        web_function_name=web_function_name(server_cls) if web_function is not None else None,
        python_version=python_version,
        packages=packages,
        label=label,
    )
    setattr(server_cls, _CACHE_ATTR, built)
    return built


def web_function_name(server_cls: type) -> str:
    """The module-level name the split topology's web function is bound to."""
    return f"{server_cls.__name__}{WEB_FUNCTION_SUFFIX}"


def credentials_configured() -> bool:
    """Whether this process has Modal credentials (env vars or ``~/.modal.toml``)."""
    from modal.config import config

    tokens = config.get("token_id") and config.get("token_secret")
    oauth = config.get("oauth_refresh_token")
    return bool(tokens or oauth)


# -- image ----------------------------------------------------------------------------------


def image_spec(config: ServiceConfig) -> tuple[str, tuple[str, ...]]:
    """The image's Python version and pip requirements: the runtime pins, then the user's.

    A package the user lists replaces the library's pin for it.
    """
    python_version = config.python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    mine = {_requirement_name(spec) for spec in config.packages}
    pins = tuple(
        f"{dist}=={importlib.metadata.version(dist)}"
        for dist in RUNTIME_DISTRIBUTIONS
        if _requirement_name(dist) not in mine
    )
    return python_version, pins + tuple(config.packages)


def build_image(
    config: ServiceConfig, python_version: str, packages: tuple[str, ...]
) -> modal.Image:
    """Debian slim + apt + pip + env, then this library and ``local_sources`` (last, as Modal
    requires for ``add_local_*`` steps)."""
    image = modal.Image.debian_slim(python_version=python_version)
    if config.apt_packages:
        image = image.apt_install(*config.apt_packages)
    image = image.pip_install(*packages)
    env = dict(config.env)
    if config.hf_cache_volume is not None:
        env.setdefault("HF_HOME", HF_CACHE_PATH)
    if env:
        image = image.env(env)
    return image.add_local_python_source(LIBRARY, *config.local_sources)


def _requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    name = match.group(1) if match else spec
    return re.sub(r"[-_.]+", "-", name).lower()


# -- GPU class ------------------------------------------------------------------------------


def _check_deployable(server_cls: type, config: ServiceConfig) -> None:
    """Refuse, before anything is built, what Modal could not import or would reject."""
    if "<locals>" in server_cls.__qualname__:
        raise ConfigError(
            f"{server_cls.__qualname__} is defined inside a function; Modal imports classes by "
            "their module-level name: define the class at module level"
        )
    for name in (PREDICT_METHOD, WEB_METHOD, ENTER_METHOD, SNAPSHOT_METHOD):
        if name in vars(server_cls):
            raise ConfigError(
                f"{server_cls.__qualname__} defines {name!r}, a name modal_fastapi_kit generates "
                "for its Modal class: rename that attribute"
            )
    module = sys.modules.get(server_cls.__module__)
    if module is None:
        raise ConfigError(
            f"{server_cls.__qualname__} comes from {server_cls.__module__!r}, which is not an "
            "imported module; Modal imports the class from its file: define it in a .py file"
        )
    web_name = web_function_name(server_cls)
    if config.topology == "split" and web_name in vars(module):
        raise ConfigError(
            f"{server_cls.__module__} already defines {web_name!r}; modal_fastapi_kit binds the "
            f"web function of {server_cls.__name__} to that name: rename yours"
        )
    if config.topology == "colocated" and config.retries:
        raise ConfigError(
            f"retries={config.retries!r} with topology='colocated': the GPU class then serves "
            "only web requests, which are not safe to retry (Modal rejects retries on web "
            "endpoints); set retries=0, or topology='split' to retry GPU calls"
        )


def _gpu_class_options(config: ServiceConfig, image: modal.Image) -> dict[str, Any]:
    gpus = config.gpus
    return {
        "image": image,
        "gpu": None if not gpus else gpus[0] if len(gpus) == 1 else list(gpus),
        "cpu": config.cpu,
        "memory": config.memory,
        "timeout": config.timeout,
        "startup_timeout": config.startup_timeout,
        "retries": _retries(config.retries),
        "min_containers": config.min_containers,
        "max_containers": config.max_containers,
        "buffer_containers": config.buffer_containers,
        "scaledown_window": config.scaledown_window,
        "secrets": _secrets(config),
        "volumes": _volumes(config),
        "region": _region(config),
        "cloud": config.cloud,
        "enable_memory_snapshot": config.enable_memory_snapshot,
    }


def _register_gpu_class(
    app: modal.App, image: modal.Image, server_cls: type, config: ServiceConfig
) -> modal.Cls:
    target: Any = server_cls
    if config.topology == "colocated" or not config.batched:
        # Batched classes take no @modal.concurrent: one batch at a time per container.
        target = modal.concurrent(
            max_inputs=config.max_concurrent_inputs,
            target_inputs=config.target_concurrent_inputs,
        )(server_cls)
    return cast(modal.Cls, app.cls(**_gpu_class_options(config, image))(target))


def _retries(retries: int | RetryPolicy) -> int | modal.Retries | None:
    if isinstance(retries, RetryPolicy):
        return modal.Retries(
            max_retries=retries.max_retries,
            backoff_coefficient=retries.backoff_coefficient,
            initial_delay=retries.initial_delay,
            max_delay=retries.max_delay,
        )
    return retries or None


def _secrets(config: ServiceConfig) -> list[modal.Secret]:
    return [modal.Secret.from_name(name) for name in config.secrets]


def _volumes(config: ServiceConfig) -> dict[str | Any, Any]:
    volumes: dict[str | Any, Any] = {
        path: modal.Volume.from_name(name) for path, name in config.volumes.items()
    }
    if config.hf_cache_volume is not None:
        if HF_CACHE_PATH in volumes:
            raise ConfigError(
                f"volumes mounts {config.volumes[HF_CACHE_PATH]!r} at {HF_CACHE_PATH}, where "
                f"hf_cache_volume={config.hf_cache_volume!r} goes: drop one of them"
            )
        volumes[HF_CACHE_PATH] = modal.Volume.from_name(
            config.hf_cache_volume, create_if_missing=True
        )
    return volumes


def _region(config: ServiceConfig) -> str | list[str] | None:
    return list(config.region) if isinstance(config.region, tuple) else config.region


def _markers(server_cls: type, config: ServiceConfig, label: str) -> dict[str, Any]:
    """The Modal-marked methods to set on the user's class, by attribute name."""
    markers: dict[str, Any] = {}
    snapshot = config.enable_memory_snapshot

    def mfk_enter_snapshot(self: ModelServer[Any, Any]) -> None:
        _resolve(self.load())

    def mfk_enter(self: ModelServer[Any, Any]) -> None:
        if not snapshot:
            _resolve(self.load())
        _resolve(self.to_device())
        _resolve(self.warmup())
        freeze_loaded_heap()  # the container is ours: see _heap.py

    if snapshot:
        markers[SNAPSHOT_METHOD] = modal.enter(snap=True)(
            _named(mfk_enter_snapshot, server_cls, SNAPSHOT_METHOD)
        )
    markers[ENTER_METHOD] = modal.enter()(_named(mfk_enter, server_cls, ENTER_METHOD))
    if config.topology == "colocated":
        markers[WEB_METHOD] = _web_method(server_cls, config, label)
    else:
        markers[PREDICT_METHOD] = _predict_method(server_cls, config)
    return markers


def _named(fn: Callable[..., Any], owner: type, name: str, *, method: bool = True) -> Any:
    """Give a generated function the names Modal reads: a method of ``owner`` (or a function
    of its module) called ``name``. Modal refuses ``<locals>`` in a qualified name."""
    fn.__name__ = name
    fn.__qualname__ = f"{owner.__qualname__}.{name}" if method else name
    fn.__module__ = owner.__module__
    return fn


def _predict_method(server_cls: type, config: ServiceConfig) -> Any:
    request_model: type[BaseModel] = server_cls.request_model  # type: ignore[attr-defined]
    response_model: type[BaseModel] = server_cls.response_model  # type: ignore[attr-defined]
    name = server_cls.__name__

    def inputs(items: list[Wire]) -> list[BaseModel]:
        return [request_model.model_validate(item) for item in items]

    def outputs(results: list[Any], expected: int) -> list[Wire]:
        if len(results) != expected:
            raise PredictError(
                f"{name}.predict_batch returned {len(results)} results for {expected} items; "
                "return one result per item, in order"
            )
        return [_to_wire(response_model, result) for result in results]

    if config.batched:
        if _is_async_predict(server_cls):

            async def mfk_predict(self: ModelServer[Any, Any], items: list[Wire]) -> list[Wire]:
                with _as_predict_error(name):
                    run = batch_function(self)[0]
                    return outputs(await cast(Awaitable[list[Any]], run(inputs(items))), len(items))

        else:

            def mfk_predict(self: ModelServer[Any, Any], items: list[Wire]) -> list[Wire]:  # type: ignore[misc]
                with _as_predict_error(name):
                    run = batch_function(self)[0]
                    return outputs(cast(list[Any], run(inputs(items))), len(items))

        return modal.batched(max_batch_size=config.max_batch_size, wait_ms=round(config.wait_ms))(
            _named(mfk_predict, server_cls, PREDICT_METHOD)
        )

    if _is_async_predict(server_cls):

        async def mfk_predict_one(self: ModelServer[Any, Any], item: Wire) -> Wire:
            with _as_predict_error(name):
                run = batch_function(self)[0]
                return outputs(await cast(Awaitable[list[Any]], run(inputs([item]))), 1)[0]

    else:
        # @modal.concurrent runs sync methods on several threads; the model is entered by one
        # at a time, as ModelServer promises.
        lock = threading.Lock()

        def mfk_predict_one(self: ModelServer[Any, Any], item: Wire) -> Wire:  # type: ignore[misc]
            with _as_predict_error(name):
                run = batch_function(self)[0]
                with lock:
                    results = cast(list[Any], run(inputs([item])))
                return outputs(results, 1)[0]

    return modal.method()(_named(mfk_predict_one, server_cls, PREDICT_METHOD))


def _web_method(server_cls: type, config: ServiceConfig, label: str) -> Any:
    def mfk_web(self: ModelServer[Any, Any]) -> FastAPI:
        from ._backends.local import LocalBackend
        from ._router import build_app, build_router

        backend = LocalBackend(type(self), config, server=self)
        return build_app(type(self), build_router(type(self), backend))

    return modal.asgi_app(
        label=label,
        custom_domains=list(config.custom_domains) or None,
        requires_proxy_auth=config.requires_proxy_auth,
    )(_named(mfk_web, server_cls, WEB_METHOD))


def _is_async_predict(server_cls: type) -> bool:
    fn = getattr(server_cls, "predict_batch", None) or getattr(server_cls, "predict", None)
    return inspect.iscoroutinefunction(fn)


def _to_wire(model: type[BaseModel], result: Any) -> Wire:
    if not isinstance(result, model):
        result = model.model_validate(result)
    wire: Wire = result.model_dump(mode="json")
    return wire


@contextmanager
def _as_predict_error(name: str) -> Iterator[None]:
    """Re-raise what user code raised as ``PredictError``, a type every caller can unpickle."""
    try:
        yield
    except PredictError:
        raise
    except Exception as exc:
        raise PredictError(f"{name}.predict raised {type(exc).__name__}: {exc}") from exc


def _resolve(value: Any) -> Any:
    """Finish an async hook from a sync Modal lifecycle method."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(max_workers=1) as pool:  # a loop runs here: finish on another thread
        return pool.submit(asyncio.run, wait()).result()


# -- web function (split topology) ----------------------------------------------------------


def _register_web_function(
    app: modal.App,
    image: modal.Image,
    server_cls: type[ModelServer[Any, Any]],
    config: ServiceConfig,
    gpu_cls: modal.Cls,
    label: str,
) -> modal.Function[..., Any, Any]:
    name = web_function_name(server_cls)
    module = sys.modules[server_cls.__module__]

    def web() -> FastAPI:
        from ._backends.remote import ModalBackend
        from ._router import build_app, build_router

        backend = ModalBackend(server_cls, config, handle=gpu_cls)
        return build_app(server_cls, build_router(server_cls, backend))

    endpoint = modal.asgi_app(
        label=label,
        custom_domains=list(config.custom_domains) or None,
        requires_proxy_auth=config.requires_proxy_auth,
    )(_named(web, server_cls, name, method=False))
    function: modal.Function[..., Any, Any] = app.function(
        image=image,
        secrets=_secrets(config),
        scaledown_window=config.scaledown_window,
        region=_region(config),
        cloud=config.cloud,
    )(modal.concurrent(max_inputs=config.web_max_inputs)(endpoint))
    setattr(module, name, function)
    return function
