"""``ServiceConfig``: the frozen, validated configuration ``@gpu_service(...)`` records.

It is built once, at decoration time, and every field is checked there: a bad option fails
where it is written, with the value echoed and the fix spelled out. The named defaults and
bounds are in ``_config_values`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ._config_values import (
    DEFAULT_API_KEYS_ENV,
    DEFAULT_CHUNK_TIMEOUT,
    DEFAULT_FILE_MAX_BODY_BYTES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_INPUTS,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_POLICY,
    DEFAULT_ROUTE,
    DEFAULT_SCALEDOWN_WINDOW,
    DEFAULT_SERVER_PORT,
    DEFAULT_TIMEOUT,
    DEFAULT_UPLOAD_TIMEOUT,
    DEFAULT_WAIT_MS,
    DEFAULT_WEB_MAX_INPUTS,
    KNOWN_GPUS,
    MAX_EXIT_GRACE_PERIOD,
    MAX_GPU_COUNT,
    MAX_MODAL_BATCH_SIZE,
    MAX_MODAL_WAIT_MS,
    MODAL_WEB_TIMEOUT,
    RENAMED_OPTIONS,
    SERVER_DRAIN_MARGIN,
    STALL_FACTOR,
    TOPOLOGIES,
    RetryPolicy,
    Topology,
    check,
    is_int,
    is_number,
)
from ._jobs.options import JobOptions
from .exceptions import ConfigError

if TYPE_CHECKING:  # a service's module imports it; the client does not
    from ._weights import WeightsSource

__all__ = [
    "DEFAULT_CHUNK_TIMEOUT",
    "DEFAULT_FILE_MAX_BODY_BYTES",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENT_INPUTS",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_ROUTE",
    "DEFAULT_SCALEDOWN_WINDOW",
    "DEFAULT_SERVER_PORT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_UPLOAD_TIMEOUT",
    "DEFAULT_WAIT_MS",
    "DEFAULT_WEB_MAX_INPUTS",
    "KNOWN_GPUS",
    "MODAL_WEB_TIMEOUT",
    "TOPOLOGIES",
    "RetryPolicy",
    "ServiceConfig",
    "Topology",
    "check_option_names",
    "option_names",
]


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Everything ``@gpu_service`` knows about a service. Built only through the decorator."""

    # -- identity and HTTP ------------------------------------------------------------------
    name: str
    route: str = DEFAULT_ROUTE
    # -- batching and concurrency -----------------------------------------------------------
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    wait_ms: float = DEFAULT_WAIT_MS
    max_concurrent_inputs: int = DEFAULT_MAX_CONCURRENT_INPUTS
    target_concurrent_inputs: int | None = None
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    isolate_failures: bool = True
    load_retries: int = 0
    # -- limits and deadlines ---------------------------------------------------------------
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT
    # File URLs (FileLimits(urls=True)) may point at loopback, private or link-local addresses.
    allow_private_urls: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    stall_timeout: float | Literal["auto"] | None = "auto"
    first_chunk_timeout: float | None = None
    chunk_timeout: float = DEFAULT_CHUNK_TIMEOUT
    # -- Modal GPU class ----------------------------------------------------------------------
    gpu: str | tuple[str, ...] | None = None
    cpu: float | None = None
    memory: int | None = None
    timeout: int = DEFAULT_TIMEOUT
    startup_timeout: int | None = None
    retries: int | RetryPolicy | Literal["auto"] = "auto"
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int | None = None
    scaledown_window: int = DEFAULT_SCALEDOWN_WINDOW
    secrets: tuple[str, ...] = ()
    volumes: Mapping[str, str] = field(default_factory=dict)
    hf_cache_volume: str | None = None
    region: str | tuple[str, ...] | None = None
    cloud: str | None = None
    enable_memory_snapshot: bool = False
    enable_gpu_snapshot: bool = False  # Modal's experimental_options={'enable_gpu_snapshot': ...}
    # What load() reads from self.weights_path; fetched into a Modal Volume before traffic.
    weights: WeightsSource | None = None
    # -- Modal image --------------------------------------------------------------------------
    python_version: str | None = None
    packages: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    local_sources: tuple[str, ...] = ()
    # -- Modal web endpoint -------------------------------------------------------------------
    topology: Topology = "split"
    label: str | None = None
    custom_domains: tuple[str, ...] = ()
    requires_proxy_auth: bool = False
    web_max_inputs: int = DEFAULT_WEB_MAX_INPUTS
    # -- Modal Server (topology="server") -------------------------------------------------------
    port: int = DEFAULT_SERVER_PORT
    exit_grace_period: int | None = None
    routing_region: str | None = None
    sticky_sessions: bool = False
    # -- API keys (see _http/auth.py) --------------------------------------------------------
    auth: Literal["none", "api-key"] = "none"
    api_keys_env: str = DEFAULT_API_KEYS_ENV
    api_keys_secret: str | None = None
    auth_readyz: bool = False
    # -- browsers: CORS for pages on other origins (the apps the kit builds) ------------------
    cors_origins: tuple[str, ...] = ()
    cors_credentials: bool = False
    # -- jobs: submit now, collect later (see _jobs/) -------------------------------------------
    jobs: JobOptions | None = None
    # -- observability ------------------------------------------------------------------------
    metrics: bool = True
    auth_metrics: bool = True
    # -- custom-domain edge (see OriginLock) -------------------------------------------------
    edge_secret_env: str | None = None
    public_hosts: tuple[str, ...] = ()
    public_base_url: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ServiceConfig:
        """Build a config from ``@gpu_service`` keyword options, normalising sequences."""
        check_option_names(options)
        normalised = {k: _normalise(k, v) for k, v in options.items()}
        return cls(**normalised)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 1

    @property
    def retry_policy(self) -> int | RetryPolicy:
        """The GPU class's retries: ``retries="auto"`` is ``DEFAULT_RETRY_POLICY`` in the split
        topology and none when colocated (the class then serves only web requests)."""
        if self.retries == "auto":
            return DEFAULT_RETRY_POLICY if self.topology == "split" else 0
        return self.retries

    @property
    def exit_grace_seconds(self) -> int:
        """topology="server": how long in-flight requests may run on after Modal stops the
        container; default ``request_timeout`` plus a margin, so no deadline is cut."""
        if self.exit_grace_period is not None:
            return self.exit_grace_period
        grace = math.ceil(self.request_timeout) + SERVER_DRAIN_MARGIN
        return min(grace, MAX_EXIT_GRACE_PERIOD)

    @property
    def stall_seconds(self) -> float | None:
        """How long one model call may run before the model counts as stuck; None: never."""
        if self.stall_timeout == "auto":
            return STALL_FACTOR * self.request_timeout
        return self.stall_timeout

    @property
    def first_chunk_seconds(self) -> float:
        """How long a stream may take to its first chunk."""
        return (
            self.request_timeout if self.first_chunk_timeout is None else self.first_chunk_timeout
        )

    @property
    def gpus(self) -> tuple[str, ...]:
        """The GPU choices in order of preference; empty for a CPU service."""
        if self.gpu is None:
            return ()
        return (self.gpu,) if isinstance(self.gpu, str) else self.gpu


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ServiceConfig))


def check_option_names(options: Iterable[str]) -> None:
    """Reject unknown option names, suggesting the right one."""
    known = option_names()
    for name in options:
        if name in known:
            continue
        if name in RENAMED_OPTIONS:
            fix = f"use {RENAMED_OPTIONS[name]}= instead"
        else:
            close = difflib.get_close_matches(name, known, n=1)
            fix = f"did you mean {close[0]}=?" if close else f"known options: {', '.join(known)}"
        raise ConfigError(f"@gpu_service got an unknown option {name!r}: {fix}")


_TUPLE_FIELDS = {
    "secrets",
    "packages",
    "apt_packages",
    "local_sources",
    "custom_domains",
    "public_hosts",
    "cors_origins",
}


def _normalise(name: str, value: Any) -> Any:
    if name == "custom_domains" and isinstance(value, str):
        raise ConfigError(
            f"custom_domains={value!r} is a string; pass a list of hostnames: "
            f"custom_domains=[{value!r}]"
        )
    if name in _TUPLE_FIELDS and isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is a string; pass a list: {name}=[{value!r}]")
    if name == "cors_origins" and isinstance(value, list | tuple):
        # browsers send an origin's scheme and host in lower case
        return tuple(v.lower() if isinstance(v, str) else v for v in value)
    if name in _TUPLE_FIELDS or (name in ("gpu", "region") and isinstance(value, list | tuple)):
        return tuple(value)
    if name in ("env", "volumes") and isinstance(value, Mapping):
        return dict(value)
    if name == "jobs" and isinstance(value, bool):  # jobs=True: the defaults
        return JobOptions() if value else None
    return value


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_HOST_RE = re.compile(
    r"^(\*\.)?(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.IGNORECASE
)
_ROUTE_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_PY_RE = re.compile(r"^3\.(1[0-9])$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _validate(c: ServiceConfig) -> None:
    check(
        isinstance(c.name, str) and bool(_NAME_RE.match(c.name)),
        "name",
        c.name,
        "lowercase letters, digits and '-', at most 63 characters, e.g. 'embeddings-api'",
    )
    _validate_route(c.route)
    _validate_batching(c)
    check(
        is_int(c.max_body_bytes) and c.max_body_bytes > 0,
        "max_body_bytes",
        c.max_body_bytes,
        "a positive int of bytes, e.g. 1_048_576 for 1 MiB",
    )
    check(
        is_number(c.request_timeout) and 0 < c.request_timeout <= MODAL_WEB_TIMEOUT,
        "request_timeout",
        c.request_timeout,
        f"seconds in (0, {MODAL_WEB_TIMEOUT:g}]; Modal cuts web requests at 150 s, "
        "so longer work belongs in a spawned job",
    )
    _validate_uploads(c)
    _validate_stall_and_streams(c)
    _validate_modal_function(c)
    _validate_image(c)
    _validate_web(c)
    _validate_server(c)
    _validate_auth(c)
    _validate_jobs(c)


def _validate_uploads(c: ServiceConfig) -> None:
    check(
        is_number(c.upload_timeout) and c.upload_timeout > 0,
        "upload_timeout",
        c.upload_timeout,
        "seconds > 0 a request's body may take to arrive, e.g. 60",
    )
    check(
        isinstance(c.allow_private_urls, bool),
        "allow_private_urls",
        c.allow_private_urls,
        "True or False",
    )
    for origin in c.cors_origins:
        check(
            isinstance(origin, str) and bool(_ORIGIN_RE.match(origin)),
            "cors_origins",
            c.cors_origins,
            "exact origins like 'https://app.example.com' (scheme, host, optional port; no "
            "path, no '*')",
        )
    check(
        isinstance(c.cors_credentials, bool),
        "cors_credentials",
        c.cors_credentials,
        "True or False",
    )
    check(
        not c.cors_credentials or bool(c.cors_origins),
        "cors_credentials",
        c.cors_credentials,
        "False unless cors_origins lists the origins that may send credentials",
    )


def _validate_jobs(c: ServiceConfig) -> None:
    if c.jobs is None:
        return
    if not isinstance(c.jobs, JobOptions):
        raise ConfigError(
            f"jobs={c.jobs!r} is invalid: expected True, or JobOptions(run_timeout=..., "
            "retention=..., max_pending=...)"
        )
    if c.topology != "split":
        raise ConfigError(
            f"jobs with topology={c.topology!r}: on Modal a job is a spawned call of the GPU "
            "class, which only topology='split' (the default) has; use topology='split', or "
            "drop jobs"
        )


def _validate_auth(c: ServiceConfig) -> None:
    check(c.auth in ("none", "api-key"), "auth", c.auth, "'none' or 'api-key'")
    check(
        isinstance(c.api_keys_env, str) and bool(_ENV_RE.match(c.api_keys_env)),
        "api_keys_env",
        c.api_keys_env,
        "the name of an environment variable, e.g. 'MFK_API_KEYS'",
    )
    if c.api_keys_secret is not None:
        check(
            isinstance(c.api_keys_secret, str) and bool(c.api_keys_secret),
            "api_keys_secret",
            c.api_keys_secret,
            "the name of a Modal Secret that sets the keys variable, e.g. 'mfk-api-keys'",
        )
    for flag in ("auth_readyz", "metrics", "auth_metrics"):
        if getattr(c, flag) not in (True, False):
            raise ConfigError(f"{flag}={getattr(c, flag)!r}: expected a bool")
    if c.auth == "none" and (c.api_keys_secret is not None or c.auth_readyz):
        raise ConfigError(
            "api_keys_secret / auth_readyz are set but auth='none': add auth='api-key' to "
            "check keys, or drop them"
        )


def _validate_stall_and_streams(c: ServiceConfig) -> None:
    check(
        is_int(c.load_retries) and 0 <= c.load_retries <= 10,
        "load_retries",
        c.load_retries,
        "an int from 0 to 10: how often a failed load() is tried again (with backoff)",
    )
    if c.isolate_failures not in (True, False):
        raise ConfigError(f"isolate_failures={c.isolate_failures!r}: expected a bool")
    if c.stall_timeout not in ("auto", None):
        check(
            is_number(c.stall_timeout) and c.stall_timeout > 0,  # type: ignore[operator]
            "stall_timeout",
            c.stall_timeout,
            "seconds > 0 that one model call may take before the model counts as stuck, "
            "'auto' (2 x request_timeout) or None (never)",
        )
    if c.first_chunk_timeout is not None:
        check(
            is_number(c.first_chunk_timeout) and c.first_chunk_timeout > 0,
            "first_chunk_timeout",
            c.first_chunk_timeout,
            "seconds > 0 a stream may take to its first chunk, or None for request_timeout",
        )
    check(
        is_number(c.chunk_timeout) and c.chunk_timeout > 0,
        "chunk_timeout",
        c.chunk_timeout,
        "seconds > 0 allowed between two chunks of a stream",
    )


def _validate_route(route: str) -> None:
    if not isinstance(route, str) or not route.startswith("/"):
        raise ConfigError(
            f"route={route!r} is invalid: a route starts with '/', e.g. route='/{route}'"
            if isinstance(route, str)
            else f"route={route!r} is invalid: expected a path string such as '/embed'"
        )
    check(
        bool(_ROUTE_RE.match(route)),
        "route",
        route,
        "a path of letters, digits, '.', '_', '~', '-' and '/' with no trailing '/', e.g. '/embed'",
    )
    check(
        route not in ("/healthz", "/readyz"),
        "route",
        route,
        "a path other than /healthz and /readyz, which the router serves itself",
    )


def _validate_batching(c: ServiceConfig) -> None:
    check(
        is_int(c.max_batch_size) and 1 <= c.max_batch_size <= MAX_MODAL_BATCH_SIZE,
        "max_batch_size",
        c.max_batch_size,
        f"an int from 1 to {MAX_MODAL_BATCH_SIZE}; use 1 to turn batching off",
    )
    check(
        is_number(c.wait_ms) and 0 <= c.wait_ms <= MAX_MODAL_WAIT_MS,
        "wait_ms",
        c.wait_ms,
        f"milliseconds from 0 to {MAX_MODAL_WAIT_MS}",
    )
    check(
        is_int(c.max_concurrent_inputs) and c.max_concurrent_inputs >= 1,
        "max_concurrent_inputs",
        c.max_concurrent_inputs,
        "an int >= 1",
    )
    if c.target_concurrent_inputs is not None:
        check(
            is_int(c.target_concurrent_inputs)
            and 1 <= c.target_concurrent_inputs <= c.max_concurrent_inputs,
            "target_concurrent_inputs",
            c.target_concurrent_inputs,
            f"an int from 1 to max_concurrent_inputs ({c.max_concurrent_inputs})",
        )
    check(
        is_int(c.max_queue_size) and c.max_queue_size >= c.max_batch_size,
        "max_queue_size",
        c.max_queue_size,
        f"an int >= max_batch_size ({c.max_batch_size})",
    )


def _validate_gpu(gpu: str) -> None:
    if not isinstance(gpu, str):
        raise ConfigError(f"gpu={gpu!r} is invalid: expected a string such as 'A10' or 'H100:2'")
    kind, sep, count = gpu.partition(":")
    if kind.upper() not in KNOWN_GPUS:
        close = difflib.get_close_matches(kind.upper(), KNOWN_GPUS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"gpu={gpu!r} names an unknown GPU type {kind!r}: {hint}"
            f"known types are {', '.join(KNOWN_GPUS)}"
        )
    if sep and not (count.isdigit() and 1 <= int(count) <= MAX_GPU_COUNT):
        raise ConfigError(
            f"gpu={gpu!r} has an invalid count {count!r}: write 'TYPE:N' with N from 1 to "
            f"{MAX_GPU_COUNT}, e.g. '{kind}:2'"
        )


def _validate_modal_function(c: ServiceConfig) -> None:
    if isinstance(c.gpu, tuple):
        check(len(c.gpu) > 0, "gpu", list(c.gpu), "a non-empty list of GPU types, or None")
    for gpu in c.gpus:
        _validate_gpu(gpu)
    if c.cpu is not None:
        check(is_number(c.cpu) and c.cpu > 0, "cpu", c.cpu, "a positive number of cores")
    if c.memory is not None:
        check(is_int(c.memory) and c.memory > 0, "memory", c.memory, "a positive int of MiB")
    check(
        is_int(c.timeout) and 1 <= c.timeout <= 86_400,
        "timeout",
        c.timeout,
        "seconds from 1 to 86400",
    )
    if c.startup_timeout is not None:
        check(
            is_int(c.startup_timeout) and 1 <= c.startup_timeout <= 86_400,
            "startup_timeout",
            c.startup_timeout,
            "seconds from 1 to 86400",
        )
    if not isinstance(c.retries, RetryPolicy) and c.retries != "auto":
        check(
            is_int(c.retries) and 0 <= c.retries <= 10,
            "retries",
            c.retries,
            "'auto', an int from 0 to 10, or RetryPolicy(max_retries=..., ...)",
        )
    for opt in ("min_containers", "buffer_containers"):
        value = getattr(c, opt)
        if value is not None:
            check(is_int(value) and value >= 0, opt, value, "an int >= 0")
    if c.max_containers is not None:
        check(
            is_int(c.max_containers) and c.max_containers >= max(1, c.min_containers),
            "max_containers",
            c.max_containers,
            f"an int >= max(1, min_containers={c.min_containers})",
        )
    check(
        is_int(c.scaledown_window) and 2 <= c.scaledown_window <= 3600,
        "scaledown_window",
        c.scaledown_window,
        "seconds from 2 to 3600",
    )
    _check_strings("secrets", c.secrets)
    check(
        all(isinstance(k, str) and k.startswith("/") for k in c.volumes)
        and all(isinstance(v, str) and v for v in c.volumes.values()),
        "volumes",
        c.volumes,
        "a dict of absolute mount path to Modal Volume name, e.g. {'/weights': 'my-weights'}",
    )
    if c.hf_cache_volume is not None:
        check(
            isinstance(c.hf_cache_volume, str) and bool(c.hf_cache_volume),
            "hf_cache_volume",
            c.hf_cache_volume,
            "the name of a Modal Volume, e.g. 'hf-cache'",
        )
    if c.enable_memory_snapshot not in (True, False):
        raise ConfigError(f"enable_memory_snapshot={c.enable_memory_snapshot!r}: expected a bool")
    _validate_weights(c)


def _validate_weights(c: ServiceConfig) -> None:
    if c.enable_gpu_snapshot not in (True, False):
        raise ConfigError(f"enable_gpu_snapshot={c.enable_gpu_snapshot!r}: expected a bool")
    if c.enable_gpu_snapshot and not c.enable_memory_snapshot:
        raise ConfigError(
            "enable_gpu_snapshot=True snapshots GPU memory on top of a memory snapshot: add "
            "enable_memory_snapshot=True, or drop enable_gpu_snapshot"
        )
    if c.weights is None:
        return
    from ._weights import WEIGHTS_SOURCES

    if not isinstance(c.weights, WEIGHTS_SOURCES):
        hint = (
            f"weights=HuggingFaceWeights({c.weights!r}, revision='<40-hex commit sha>')"
            if isinstance(c.weights, str)
            else "weights=HuggingFaceWeights('owner/name', revision='<40-hex commit sha>') or "
            "weights=LocalWeights('path/to/dir')"
        )
        raise ConfigError(f"weights={c.weights!r} is invalid: expected a weights source, {hint}")


def _validate_image(c: ServiceConfig) -> None:
    if c.python_version is not None:
        check(
            isinstance(c.python_version, str) and bool(_PY_RE.match(c.python_version)),
            "python_version",
            c.python_version,
            "'3.10' or newer as 'MAJOR.MINOR', e.g. '3.11'",
        )
    _check_strings("packages", c.packages)
    _check_strings("apt_packages", c.apt_packages)
    _check_strings("local_sources", c.local_sources)
    check(
        all(isinstance(k, str) and isinstance(v, str) for k, v in c.env.items()),
        "env",
        c.env,
        "a dict of str to str",
    )


def _validate_web(c: ServiceConfig) -> None:
    check(c.topology in TOPOLOGIES, "topology", c.topology, "'split', 'colocated' or 'server'")
    if c.label is not None:
        check(
            isinstance(c.label, str) and bool(_NAME_RE.match(c.label)),
            "label",
            c.label,
            "lowercase letters, digits and '-', at most 63 characters",
        )
    for host in c.custom_domains:
        check(
            isinstance(host, str) and bool(_HOST_RE.match(host)),
            "custom_domains",
            list(c.custom_domains),
            "hostnames such as 'api.example.com' or '*.example.com', without scheme or path",
        )
    if c.requires_proxy_auth not in (True, False):
        raise ConfigError(f"requires_proxy_auth={c.requires_proxy_auth!r}: expected a bool")
    check(
        is_int(c.web_max_inputs) and c.web_max_inputs >= 1,
        "web_max_inputs",
        c.web_max_inputs,
        "an int >= 1",
    )
    _validate_edge(c)


def _validate_server(c: ServiceConfig) -> None:
    """The Modal Server options, and what a Server cannot do (refused with the fix)."""
    check(is_int(c.port) and 1 <= c.port <= 65535, "port", c.port, "a TCP port from 1 to 65535")
    if c.exit_grace_period is not None:
        check(
            is_int(c.exit_grace_period) and 0 <= c.exit_grace_period <= MAX_EXIT_GRACE_PERIOD,
            "exit_grace_period",
            c.exit_grace_period,
            f"seconds from 0 to {MAX_EXIT_GRACE_PERIOD} (Modal's bound)",
        )
    if c.routing_region is not None:
        check(
            isinstance(c.routing_region, str) and bool(c.routing_region),
            "routing_region",
            c.routing_region,
            "a Modal routing region such as 'us-east'",
        )
    if c.sticky_sessions not in (True, False):
        raise ConfigError(f"sticky_sessions={c.sticky_sessions!r}: expected a bool")
    if c.topology == "server":
        _refuse_on_server(c)
        return
    for name, default in (
        ("port", DEFAULT_SERVER_PORT),
        ("exit_grace_period", None),
        ("routing_region", None),
        ("sticky_sessions", False),
    ):
        if getattr(c, name) != default:
            raise ConfigError(
                f"{name}={getattr(c, name)!r} applies to topology='server' only (a Modal "
                f"Server), not topology={c.topology!r}: set topology='server' or drop {name}"
            )


def _refuse_on_server(c: ServiceConfig) -> None:
    if c.retries not in ("auto", 0):
        raise ConfigError(
            f"retries={c.retries!r} with topology='server': a Modal Server takes HTTP requests "
            "straight to its port and has no retries (nor .remote() calls); set retries=0 (or "
            "leave it 'auto'), or topology='split' to retry GPU calls"
        )
    if c.custom_domains:
        raise ConfigError(
            f"custom_domains={list(c.custom_domains)!r} with topology='server': a Modal Server "
            "takes no custom domains; put an edge in front (requires_proxy_auth=True plus "
            "`mfk edge`), or use topology='colocated'"
        )
    if c.label is not None:
        raise ConfigError(
            f"label={c.label!r} with topology='server': Modal names a Server's URL itself (a "
            "*.modal.direct host); drop label, or use topology='colocated'"
        )


def _validate_edge(c: ServiceConfig) -> None:
    if c.edge_secret_env is not None:
        check(
            isinstance(c.edge_secret_env, str) and bool(_ENV_RE.match(c.edge_secret_env)),
            "edge_secret_env",
            c.edge_secret_env,
            "the name of an environment variable holding the edge secret, e.g. 'MFK_EDGE_SECRET'",
        )
    for host in c.public_hosts:
        check(
            isinstance(host, str) and bool(_HOST_RE.match(host)) and not host.startswith("*"),
            "public_hosts",
            list(c.public_hosts),
            "hostnames such as 'api.example.com', without scheme, port, path or wildcard",
        )
    if c.public_hosts and c.edge_secret_env is None:
        raise ConfigError(
            f"public_hosts={list(c.public_hosts)!r} trusts X-Forwarded-Host, which only the "
            "edge may set: add edge_secret_env='MFK_EDGE_SECRET' (the edge sends that secret), "
            "or drop public_hosts and set public_base_url='https://api.example.com'"
        )
    if c.public_base_url is not None:
        parts = urlsplit(c.public_base_url) if isinstance(c.public_base_url, str) else None
        check(
            parts is not None
            and parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and _HOST_RE.match(parts.hostname or "") is not None
            and parts.path in ("", "/")
            and not (parts.query or parts.fragment or parts.username),
            "public_base_url",
            c.public_base_url,
            "a scheme and host such as 'https://api.example.com', with no path, query or user",
        )


def _check_strings(name: str, values: tuple[str, ...]) -> None:
    check(
        all(isinstance(v, str) and v for v in values),
        name,
        list(values),
        "a list of non-empty strings",
    )
