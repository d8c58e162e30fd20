"""The generated Modal deployment as titled sections of (setting, value) rows.

Every value about the GPU class and the web function is read back from the Modal objects
through their public ``info()``; a setting ``info()`` does not report (the image steps,
autoscaling, label, custom domains) comes from the config, and its name ends with ``*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._config import RetryPolicy

if TYPE_CHECKING:
    from .._core.spec import Api
    from .._modal import ModalDeployment

__all__ = ["NOT_FROM_INFO", "Row", "Table", "describe"]

Row = tuple[str, str]  # (setting, value); the setting ends with "*" when not from info()
Table = list[tuple[str, list[Row]]]  # (section title, rows)
NOT_FROM_INFO = "* not reported by Modal's info(): from the config and the image steps"


def describe(built: ModalDeployment) -> Table:
    """The deployment as titled sections of (setting, value) rows."""
    from .._modal.build import PREDICT_METHOD, STREAM_METHOD, WEB_METHOD

    config = built.config
    if built.server is not None:
        return _describe_server(built)
    split = config.topology == "split"
    gpu_method = (
        WEB_METHOD if not split else STREAM_METHOD if built.spec.streaming else PREDICT_METHOD
    )
    assert built.gpu_cls is not None
    info = getattr(built.gpu_cls(), gpu_method).info()

    image = _image(built)
    gpu_class = [
        ("class", f"{built.server_cls.__name__} (methods: {', '.join(info.method_names or [])})"),
        ("gpu", _gpus(info.gpus)),
        (
            "cpu / memory",
            f"{_or_default(info.cpu, ' cores')} / {_or_default(info.memory_mib, ' MiB')}",
        ),
        ("timeout", f"{info.timeout}s, startup {info.startup_timeout}s"),
        ("retries", _retries(info.max_retries, config.retry_policy)),
        ("batching", _batching(built, info)),
        ("concurrency", _concurrency(info.concurrency_info, split and config.batched)),
        ("autoscaling*", _autoscaling(built)),
        ("memory snapshot*", _snapshot(built)),
        ("volumes", _volumes(info.volumes)),
        ("weights*", _weights(built)),
        ("secrets*", ", ".join(config.secrets) or "-"),
        ("region / cloud", f"{', '.join(info.regions or []) or 'any'} / {info.cloud or 'any'}"),
    ]
    web = [("topology", _topology(split, built.spec.streaming))]
    if split:
        assert built.web_function is not None
        web_info = built.web_function.info()
        web += [
            ("function", f"{built.web_function_name} (CPU, @modal.asgi_app)"),
            ("concurrency", _concurrency(web_info.concurrency_info, False)),
            ("proxy auth", _proxy_auth(web_info.web_info)),
        ]
    else:
        web += [
            ("function", f"{built.server_cls.__name__}.{WEB_METHOD} (on the GPU class)"),
            ("proxy auth", _proxy_auth((info.method_details or {}).get(WEB_METHOD))),
        ]
    web += [
        ("label*", built.label),
        ("custom domains*", ", ".join(config.custom_domains) or "-"),
        ("URL", f"{built.url_shape}  (`modal serve` adds -dev to the label)"),
        ("routes", ", ".join([*_api(built).route_paths(built.spec), *_KIT_ROUTES])),
    ]
    table: Table = [
        (f"app {built.app.name}", [("image*", "debian slim"), *image]),
        ("GPU class", gpu_class),
        ("web endpoint", web),
    ]
    if built.jobs_cls is not None:
        table.append(("jobs", _jobs(built)))
    return [*table, (NOT_FROM_INFO, [])]


def _jobs(built: ModalDeployment) -> list[Row]:
    """The jobs class and the webhook function, read back through ``info()``."""
    from .._jobs.modal import JOB_METHOD, jobs_class_name, jobs_dict_name, webhook_function_name

    assert built.jobs_cls is not None and built.webhook_function is not None
    options = built.config.jobs
    assert options is not None
    info = getattr(built.jobs_cls(), JOB_METHOD).info()
    hooks = built.webhook_function.info()
    name = built.server_cls.__name__
    return [
        ("class", f"{jobs_class_name(name)} (methods: {', '.join(info.method_names or [])})"),
        ("gpu", _gpus(info.gpus)),
        ("timeout", f"{info.timeout}s (run_timeout {options.run_timeout:g}s and a margin)"),
        ("retries", _retries(info.max_retries, built.config.retry_policy)),
        ("retention*", f"{options.retention:g}s (Modal keeps a call's result 7 days)"),
        ("records*", f"modal.Dict {jobs_dict_name(built.config.name)!r}"),
        ("webhooks", f"{webhook_function_name(name)} (CPU), timeout {hooks.timeout}s"),
        ("webhook secret*", _webhook_secret(options.webhook_secret, options.webhook_secret_env)),
    ]


def _webhook_secret(secret: str | None, variable: str) -> str:
    if secret is not None:
        return f"Modal Secret {secret!r} (sets ${variable})"
    return f"none named: ${variable} must come from one of secrets=[...], or webhooks are refused"


_KIT_ROUTES = ("GET /healthz", "GET /readyz", "GET /docs")

# What a Modal Server does not have, beside the other topologies.
SERVER_LACKS = (
    "no retries (a failed request is the client's to retry), no .remote() calls, "
    "no jobs through spawn"
)


def _image(built: ModalDeployment) -> list[Row]:
    from .._modal.build import LIBRARY

    config = built.config
    return [
        ("python*", built.python_version),
        ("pip*", ", ".join(built.packages)),
        ("apt*", ", ".join(config.apt_packages) or "-"),
        ("env*", ", ".join(sorted(config.env)) or "-"),
        ("local sources*", ", ".join((LIBRARY, *config.local_sources))),
    ]


def _describe_server(built: ModalDeployment) -> Table:
    """topology="server": the Modal Server, read back through ``Server.info()``."""
    assert built.server is not None
    config = built.config
    info = built.server.info()
    c = config
    target = "Modal's default" if c.target_concurrent_inputs is None else c.target_concurrent_inputs
    server = [
        ("class", f"{built.server_cls.__name__} (@app.server: enter loads, then serves)"),
        ("gpu", _gpus(info.gpus)),
        (
            "cpu / memory",
            f"{_or_default(info.cpu, ' cores')} / {_or_default(info.memory_mib, ' MiB')}",
        ),
        ("port", str(info.port)),
        ("startup timeout", f"{info.startup_timeout}s (the load runs before the port opens)"),
        ("exit grace period", f"{info.exit_grace_period}s (in-flight requests finish)"),
        (
            "concurrency*",
            f"up to {c.max_concurrent_inputs} requests per container (Modal answers 429 above),"
            f" autoscaler targets {target}",
        ),
        ("batching", _batching(built, None)),
        ("autoscaling*", _autoscaling(built)),
        ("memory snapshot*", _snapshot(built)),
        ("volumes", _volumes(info.volumes)),
        ("weights*", _weights(built)),
        ("secrets*", ", ".join(config.secrets) or "-"),
        (
            "region / cloud",
            f"{', '.join(info.compute_regions or []) or 'any'} / {info.cloud or 'any'}",
        ),
    ]
    web = [
        ("topology", "server: a Modal Server; Modal routes HTTP straight to the container's port"),
        ("routing region", info.routing_region or "-"),
        ("proxy auth", _proxy_auth(info)),
        ("sticky sessions*", "on (clients send Modal-Session-ID)" if c.sticky_sessions else "off"),
        ("lacks", SERVER_LACKS),
        ("URL", f"{built.url_shape}  (modal deploy prints it)"),
        ("routes", ", ".join([*_api(built).route_paths(built.spec), *_KIT_ROUTES])),
    ]
    return [
        (f"app {built.app.name}", [("image*", "debian slim"), *_image(built)]),
        ("Modal Server", server),
        ("web endpoint", web),
        (NOT_FROM_INFO, []),
    ]


def _api(built: ModalDeployment) -> Api:
    from .._http.router import PREDICT_API

    return built.spec.api or PREDICT_API


def _gpus(gpus: list[tuple[str, int]]) -> str:
    if not gpus:
        return "none (CPU only)"
    names = [f"{kind}:{count}" if count > 1 else kind for kind, count in gpus]
    return names[0] if len(names) == 1 else f"{' > '.join(names)} (first available)"


def _or_default(value: object, unit: str) -> str:
    return "Modal default" if value is None else f"{value}{unit}"


def _retries(max_retries: int | None, policy: int | RetryPolicy) -> str:
    if not max_retries:
        return "none"
    if isinstance(policy, RetryPolicy):
        return (
            f"{max_retries} (backoff x{policy.backoff_coefficient:g}, "
            f"{policy.initial_delay:g}s to {policy.max_delay:g}s)"
        )
    return f"{max_retries} (Modal's fixed 1s delay)"


def _batching(built: ModalDeployment, info: Any) -> str:
    config = built.config
    if info is not None and info.batching_info is not None:
        batching = info.batching_info
        return f"@modal.batched: up to {batching.max_batch_size}, wait {batching.wait_ms} ms"
    if config.batched:
        where = "the container" if config.topology == "split" else "the web app"
        why = " (Modal cannot batch generators)" if built.spec.streaming else ""
        return (
            f"modal_fastapi_kit's batcher in {where}{why}: up to {config.max_batch_size}, "
            f"wait {config.wait_ms:g} ms"
        )
    return "off (one input per call)"


def _concurrency(info: Any, batched: bool) -> str:
    if info is None:
        return "one batch at a time per container" if batched else "1 input per container"
    target = f", autoscaler targets {info.target_inputs}" if info.target_inputs else ""
    return f"up to {info.max_inputs} inputs per container{target}"


def _autoscaling(built: ModalDeployment) -> str:
    c = built.config
    most = "no max" if c.max_containers is None else f"max {c.max_containers}"
    buffer = "" if c.buffer_containers is None else f", buffer {c.buffer_containers}"
    return f"min {c.min_containers}, {most}{buffer}, scale down after {c.scaledown_window}s idle"


def _snapshot(built: ModalDeployment) -> str:
    if not built.config.enable_memory_snapshot:
        return "off"
    return "on: load() before the snapshot, to_device() and warmup() after each restore"


def _weights(built: ModalDeployment) -> str:
    """The declared weights: source, pinned revision, where they land, who fetches them."""
    from pathlib import PurePosixPath

    from .._modal.weights import WEIGHTS_MOUNT
    from .._weights import target_dir

    source = built.config.weights
    if source is None:
        return "-"
    where = target_dir(source, PurePosixPath(WEIGHTS_MOUNT))  # type: ignore[arg-type]
    return (
        f"{source.describe()} -> {where} on Volume {source.volume}; fetched by "
        f"{built.fetch_function_name} (`mfk deploy` runs it before reporting the endpoint)"
    )


def _volumes(mounts: dict[str, Any]) -> str:
    if not mounts:
        return "-"
    return ", ".join(f"{path} <- {mount.name or '?'}" for path, mount in sorted(mounts.items()))


def _proxy_auth(web_info: Any) -> str:
    if web_info is None:
        return "?"
    if web_info.unauthenticated:
        return "off (anyone with the URL can call it)"
    return "on (callers send Modal-Key / Modal-Secret; the raw URL answers 401 otherwise)"


def _topology(split: bool, streaming: bool) -> str:
    if split:
        call = ".remote_gen.aio" if streaming else ".remote.aio"
        return f"split: CPU web function -> GPU class via {call} (/healthz wakes no GPU)"
    return "colocated: the GPU class serves the router itself"
