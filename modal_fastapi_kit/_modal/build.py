"""Build time: the Image, the App, the GPU class's options and its Modal-marked methods.

How Modal finds what is generated here, in the container (modal 1.6): it imports the user's
module, which runs ``app = X.modal_app()`` again, then looks objects up by module-level name.

- The GPU class is ``getattr(module, "X")``: the user's class itself. ``deployment`` attaches the
  Modal markers to that class as ``mfk_*`` attributes (``@modal.enter`` / ``@modal.exit``, then
  ``@modal.batched`` / ``@modal.method`` for predict, a generator ``@modal.method`` for a
  streaming class, or ``@modal.asgi_app`` when colocated), so the class Modal finds carries
  them and ``X.router()`` keeps working locally. Their bodies are in ``container``.
- The split topology's web function is ``getattr(module, "X_web")``: ``deployment`` binds it in
  the user's module under that name.
- The server topology registers the same class, with only the enter/exit markers, as a Modal
  Server (``App.server``): see ``server_build``.
- With ``jobs``, the jobs class ``X_jobs`` and the webhook function ``X_webhooks`` are
  bound in the module as well: see ``jobs``.

Every generated method is ``async``: Modal then runs all of them on the container's one event
loop, where the runtime's async hooks live (see ``container``).
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import modal

from .._config import RetryPolicy, ServiceConfig
from .._core.spec import ServiceSpec, service_spec
from .._core.wire import PREDICT_METHOD, STREAM_METHOD, Wire
from .._requirements import canonicalize_name, image_environment, installed_names
from ..exceptions import ConfigError
from . import container, server_build, server_container
from . import jobs as jobs_step
from . import weights as weights_step

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "ENTER_METHOD",
    "EXIT_METHOD",
    "HF_CACHE_PATH",
    "PREDICT_METHOD",
    "SNAPSHOT_METHOD",
    "STREAM_METHOD",
    "WEB_METHOD",
    "ModalDeployment",
    "credentials_configured",
    "deployment",
]

WEB_METHOD = "mfk_web"  # the GPU class's asgi_app method (colocated topology)
ENTER_METHOD = "mfk_enter"  # @modal.enter(): load (unless snapshotted), to_device, warmup
SNAPSHOT_METHOD = "mfk_enter_snapshot"  # @modal.enter(snap=True): load, before the snapshot
EXIT_METHOD = "mfk_exit"  # @modal.exit(): unload
RESERVED_METHODS = (
    PREDICT_METHOD,
    STREAM_METHOD,
    WEB_METHOD,
    ENTER_METHOD,
    SNAPSHOT_METHOD,
    EXIT_METHOD,
)
WEB_FUNCTION_SUFFIX = "_web"
HF_CACHE_PATH = "/root/.cache/huggingface"
LIBRARY = "modal_fastapi_kit"
# What the library imports in the container, pinned to the versions installed here
# (packaging: building the deployment reads the requirements, in the container too).
# python-multipart: Starlette parses multipart bodies (file uploads) with it.
# standardwebhooks: the job routes, which every router imports, check webhooks with it.
# httpx: what downloads a file given as a URL, and what sends a job's webhook.
RUNTIME_DISTRIBUTIONS = (
    "fastapi",
    "pydantic",
    "prometheus-client",
    "packaging",
    "python-multipart",
    "standardwebhooks",
    "httpx",
)
SERVER_DISTRIBUTIONS = ("uvicorn",)  # topology="server": the container serves HTTP itself

_CACHE_ATTR = "__mfk_modal_deployment__"


@dataclass(frozen=True, kw_only=True)
class ModalDeployment:
    """The Modal objects generated for one class, plus what went into its image."""

    spec: ServiceSpec
    app: modal.App
    image: modal.Image
    gpu_cls: modal.Cls | None  # None for topology="server"
    web_function: modal.Function[..., Any, Any] | None  # split topology only
    web_function_name: str | None
    python_version: str
    packages: tuple[str, ...]
    label: str
    server: modal.Server | None = None  # topology="server" only
    fetch_function: modal.Function[..., Any, Any] | None = None  # with weights= only
    fetch_function_name: str | None = None
    jobs_cls: modal.Cls | None = None  # with jobs= only: X_jobs
    webhook_function: modal.Function[..., Any, Any] | None = None  # with jobs= only: X_webhooks

    @property
    def server_cls(self) -> type:
        return self.spec.server_cls

    @property
    def config(self) -> ServiceConfig:
        return self.spec.config

    @property
    def url_shape(self) -> str:
        """The endpoint URL once deployed; Modal fills in the workspace."""
        if self.server is not None:  # Modal names a Server's host itself (a *.modal.direct one)
            return f"https://<host Modal assigns>.modal.direct  ({self.server_cls.__name__})"
        return f"https://<workspace>--{self.label}.modal.run"


def deployment(server_cls: type) -> ModalDeployment:
    """Build (once per class and process) the Modal objects for a decorated class."""
    found = vars(server_cls).get(_CACHE_ATTR)
    if isinstance(found, ModalDeployment):
        return found
    spec = service_spec(server_cls)
    config = spec.config
    _check_deployable(spec)
    python_version, packages = image_spec(config)
    image = build_image(config, python_version, packages)
    app = modal.App(config.name)
    label = config.label or config.name
    markers = _markers(spec, label)
    for name, marker in markers.items():
        setattr(server_cls, name, marker)
    jobs: tuple[modal.Cls, modal.Function[..., Any, Any]] | None = None
    try:
        gpu_cls: modal.Cls | None = None
        server: modal.Server | None = None
        web_function = None
        if config.topology == "server":
            shared = {
                "gpu": _gpu_option(config),
                "secrets": _secrets(config, checks_keys=True),
                "volumes": _volumes(config),
                "compute_region": _region(config),
            }
            server = server_build.register_server(app, image, spec, shared)
        else:
            gpu_cls = _register_gpu_class(app, image, spec)
        if config.jobs is not None:
            jobs = jobs_step.register_jobs(
                app,
                spec,
                _gpu_class_options(config, image),
                {
                    "image": image,
                    "secrets": _secrets(config, checks_keys=False, signs_webhooks=True),
                    "region": _region(config),
                    "cloud": config.cloud,
                },
            )
        if config.topology == "split":
            assert gpu_cls is not None
            web_function = _register_web_function(app, image, spec, gpu_cls, label, jobs)
        fetch_function = _register_fetch_function(app, image, spec, python_version, packages)
    except Exception as exc:
        for name in markers:  # leave the class as it was
            delattr(server_cls, name)
        if jobs is not None:
            jobs_step.unbind(spec, jobs)
        if isinstance(exc, modal.exception.InvalidError):
            raise ConfigError(
                f"Modal rejected the deployment of {server_cls.__qualname__}: {exc}"
            ) from exc
        raise
    built = ModalDeployment(
        spec=spec,
        app=app,
        image=image,
        gpu_cls=gpu_cls,
        web_function=web_function,
        web_function_name=web_function_name(server_cls) if web_function is not None else None,
        python_version=python_version,
        packages=packages,
        label=label,
        server=server,
        fetch_function=fetch_function,
        fetch_function_name=(
            weights_step.fetch_function_name(server_cls) if fetch_function is not None else None
        ),
        jobs_cls=jobs[0] if jobs is not None else None,
        webhook_function=jobs[1] if jobs is not None else None,
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

    A package the user lists replaces the library's pin for it, unless its marker leaves it
    out of the image (``"fastapi>=1; python_version < '3.11'"`` on 3.12 keeps the pin).
    """
    python_version = config.python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    mine = installed_names(config.packages, image_environment(python_version))
    runtime = RUNTIME_DISTRIBUTIONS + (SERVER_DISTRIBUTIONS if config.topology == "server" else ())
    pins = tuple(
        f"{dist}=={importlib.metadata.version(dist)}"
        for dist in runtime
        if canonicalize_name(dist) not in mine
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
    env.update(weights_step.weights_env(config))
    if env:
        image = image.env(env)
    return image.add_local_python_source(LIBRARY, *config.local_sources)


# -- GPU class ------------------------------------------------------------------------------


def _check_deployable(spec: ServiceSpec) -> None:
    """Refuse, before anything is built, what Modal could not import or would reject."""
    server_cls, config = spec.server_cls, spec.config
    if "<locals>" in server_cls.__qualname__:
        raise ConfigError(
            f"{server_cls.__qualname__} is defined inside a function; Modal imports classes by "
            "their module-level name: define the class at module level"
        )
    for name in RESERVED_METHODS:
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
    jobs_step.check_jobs_deployable(spec)
    mounted = dict.fromkeys(config.volumes)
    if config.hf_cache_volume is not None:
        mounted[HF_CACHE_PATH] = None
    weights_step.check_weights_deployable(spec, mounted)
    if config.topology == "colocated" and config.retry_policy:
        raise ConfigError(
            f"retries={config.retries!r} with topology='colocated': the GPU class then serves "
            "only web requests, which are not safe to retry (Modal rejects retries on web "
            "endpoints); set retries=0, or topology='split' to retry GPU calls"
        )


def _gpu_option(config: ServiceConfig) -> str | list[str] | None:
    gpus = config.gpus
    return None if not gpus else gpus[0] if len(gpus) == 1 else list(gpus)


def _gpu_class_options(config: ServiceConfig, image: modal.Image) -> dict[str, Any]:
    return {
        "image": image,
        "gpu": _gpu_option(config),
        "cpu": config.cpu,
        "memory": config.memory,
        "timeout": config.timeout,
        "startup_timeout": config.startup_timeout,
        "retries": _retries(config.retry_policy),
        "min_containers": config.min_containers,
        "max_containers": config.max_containers,
        "buffer_containers": config.buffer_containers,
        "scaledown_window": config.scaledown_window,
        # Colocated, the GPU class serves the router, so it checks the API keys too.
        "secrets": _secrets(config, checks_keys=config.topology == "colocated"),
        "volumes": _volumes(config),
        "region": _region(config),
        "cloud": config.cloud,
        "enable_memory_snapshot": config.enable_memory_snapshot,
        # GPU memory snapshots: an experimental Modal option, passed through as Modal documents.
        "experimental_options": {"enable_gpu_snapshot": True}
        if config.enable_gpu_snapshot
        else None,
    }


def _register_gpu_class(app: modal.App, image: modal.Image, spec: ServiceSpec) -> modal.Cls:
    config = spec.config
    target: Any = spec.server_cls
    if config.topology == "colocated" or not config.batched or spec.streaming:
        # Batched classes take no @modal.concurrent: one batch at a time per container.
        target = modal.concurrent(
            max_inputs=config.max_concurrent_inputs,
            target_inputs=config.target_concurrent_inputs,
        )(target)
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


def _secrets(
    config: ServiceConfig, *, checks_keys: bool, signs_webhooks: bool = False
) -> list[modal.Secret]:
    """The Modal Secrets of a function; the API keys' one where the router checks keys, and
    ``JobOptions.webhook_secret`` where webhooks are signed (or their secret checked)."""
    names = list(config.secrets)
    if checks_keys and config.api_keys_secret and config.api_keys_secret not in names:
        names.append(config.api_keys_secret)
    secret = config.jobs.webhook_secret if config.jobs is not None and signs_webhooks else None
    if secret and secret not in names:
        names.append(secret)
    return [modal.Secret.from_name(name) for name in names]


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
    volumes.update(weights_step.weights_mounts(config))
    return volumes


def _region(config: ServiceConfig) -> str | list[str] | None:
    return list(config.region) if isinstance(config.region, tuple) else config.region


def _markers(spec: ServiceSpec, label: str) -> dict[str, Any]:
    """The Modal-marked methods to set on the user's class, by attribute name."""
    server_cls, config = spec.server_cls, spec.config
    snapshot = config.enable_memory_snapshot
    markers: dict[str, Any] = {}

    async def mfk_enter_snapshot(self: Any) -> None:
        await weights_step.prepare(self)  # weights_path, before load()
        await container.enter_before_snapshot(self)

    serves = config.topology == "server"  # enter loads, then serves on the port; exit drains

    async def mfk_enter(self: Any) -> None:
        if not snapshot:
            await weights_step.prepare(self)  # weights_path, before load()
        if serves:
            await server_container.enter(self, after_snapshot=snapshot)
        else:
            await container.enter(self, after_snapshot=snapshot)

    async def mfk_exit(self: Any) -> None:
        await (server_container.exit(self) if serves else container.exit(self))

    if snapshot:
        markers[SNAPSHOT_METHOD] = modal.enter(snap=True)(
            _named(mfk_enter_snapshot, server_cls, SNAPSHOT_METHOD)
        )
    markers[ENTER_METHOD] = modal.enter()(_named(mfk_enter, server_cls, ENTER_METHOD))
    markers[EXIT_METHOD] = modal.exit()(_named(mfk_exit, server_cls, EXIT_METHOD))
    if config.topology == "server":
        pass  # a Server takes no Modal methods: HTTP goes straight to its port
    elif config.topology == "colocated":
        markers[WEB_METHOD] = _web_method(spec, label)
    elif spec.streaming:
        markers[STREAM_METHOD] = _stream_method(spec)
    else:
        markers[PREDICT_METHOD] = _predict_method(spec)
    return markers


def _named(fn: Callable[..., Any], owner: type, name: str, *, method: bool = True) -> Any:
    """Give a generated function the names Modal reads: a method of ``owner`` (or a function
    of its module) called ``name``. Modal refuses ``<locals>`` in a qualified name."""
    fn.__name__ = name
    fn.__qualname__ = f"{owner.__qualname__}.{name}" if method else name
    fn.__module__ = owner.__module__
    return fn


def _predict_method(spec: ServiceSpec) -> Any:
    config = spec.config
    if config.batched:

        async def mfk_predict(self: Any, items: list[Wire]) -> list[Wire]:
            return await container.predict(self, items)

        return modal.batched(max_batch_size=config.max_batch_size, wait_ms=round(config.wait_ms))(
            _named(mfk_predict, spec.server_cls, PREDICT_METHOD)
        )

    async def mfk_predict_one(self: Any, item: Wire) -> Wire:
        return (await container.predict(self, [item]))[0]

    return modal.method()(_named(mfk_predict_one, spec.server_cls, PREDICT_METHOD))


def _stream_method(spec: ServiceSpec) -> Any:
    # Modal cannot batch a generator: the container's own batcher does (see container.stream).
    async def mfk_stream(self: Any, item: Wire) -> AsyncIterator[Wire]:
        async for envelope in container.stream(self, item):
            yield envelope

    return modal.method()(_named(mfk_stream, spec.server_cls, STREAM_METHOD))


def _web_method(spec: ServiceSpec, label: str) -> Any:
    config = spec.config

    def mfk_web(self: Any) -> FastAPI:
        return container.web(self)

    return modal.asgi_app(
        label=label,
        custom_domains=list(config.custom_domains) or None,
        requires_proxy_auth=config.requires_proxy_auth,
    )(_named(mfk_web, spec.server_cls, WEB_METHOD))


def _register_fetch_function(
    app: modal.App,
    image: modal.Image,
    spec: ServiceSpec,
    python_version: str,
    packages: tuple[str, ...],
) -> modal.Function[..., Any, Any] | None:
    """The weights fetch function (see ``weights``), when the service declares weights."""
    config = spec.config
    if config.weights is None:
        return None
    fetch_packages = weights_step.fetch_packages(config, packages)
    if fetch_packages != packages:
        image = build_image(config, python_version, fetch_packages)
    return weights_step.register_fetch_function(
        app,
        spec,
        weights_step.fetch_image(image, config),
        _secrets(config, checks_keys=False),
    )


# -- web function (split topology) ----------------------------------------------------------


def _register_web_function(
    app: modal.App,
    image: modal.Image,
    spec: ServiceSpec,
    gpu_cls: modal.Cls,
    label: str,
    jobs: tuple[modal.Cls, modal.Function[..., Any, Any]] | None = None,
) -> modal.Function[..., Any, Any]:
    server_cls, config = spec.server_cls, spec.config
    name = web_function_name(server_cls)
    module = sys.modules[server_cls.__module__]
    jobs_cls, webhooks = jobs if jobs is not None else (None, None)

    def web() -> FastAPI:
        from .._assembly import service_app, service_router
        from .._backends.modal import ModalBackend

        backend = ModalBackend(spec, handle=gpu_cls, jobs_handle=jobs_cls, webhook_handle=webhooks)
        return service_app(spec, service_router(spec, backend))

    endpoint = modal.asgi_app(
        label=label,
        custom_domains=list(config.custom_domains) or None,
        requires_proxy_auth=config.requires_proxy_auth,
    )(_named(web, server_cls, name, method=False))
    function: modal.Function[..., Any, Any] = app.function(
        image=image,
        secrets=_secrets(config, checks_keys=True, signs_webhooks=True),
        scaledown_window=config.scaledown_window,
        region=_region(config),
        cloud=config.cloud,
    )(modal.concurrent(max_inputs=config.web_max_inputs)(endpoint))
    setattr(module, name, function)
    return function
