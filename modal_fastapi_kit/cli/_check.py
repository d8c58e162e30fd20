"""``mfk check FILE.py[:Class]``: the generated Modal deployment as a table, plus warnings.

Every value about the GPU class and the web function is read back from the Modal objects
through their public ``info()``; what ``info()`` does not report (the image steps, autoscaling,
label, custom domains) comes from the config and is marked ``*``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import TYPE_CHECKING, Any

from .._config import RetryPolicy
from .._server import ModelServer
from ..exceptions import ConfigError
from ._loading import UsageError, load_service

if TYPE_CHECKING:
    from .._core.spec import Api
    from .._modal import ModalDeployment

__all__ = ["add_parser", "describe", "run", "warnings"]

Row = tuple[str, str]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="show the Modal deployment generated for a class, and what may bite",
        description="Build the Modal objects for a @gpu_service class (no Modal account "
        "needed), print them as a table and warn about settings that work against each other.",
    )
    parser.add_argument("target", metavar="FILE.py[:Class]", help="file holding the class")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 on warnings")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    server_cls = load_service(args.target)
    from .._modal import deployment

    try:
        built = deployment(server_cls)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    print(f"Modal deployment of {server_cls.__name__} ({args.target})\n")
    print(render(describe(built)))
    found = warnings(built)
    for line in found:
        print(f"warning: {line}")
    if not found:
        print("no warnings")
    return 1 if found and args.strict else 0


def render(sections: list[tuple[str, list[Row]]]) -> str:
    width = max(len(key) for _, rows in sections for key, _ in rows) + 2
    lines: list[str] = []
    for title, rows in sections:
        lines.append(title)
        lines.extend(f"  {key:<{width}}{value}" for key, value in rows)
        lines.append("")
    return "\n".join(lines)


def describe(built: ModalDeployment) -> list[tuple[str, list[Row]]]:
    """The deployment as titled sections of (setting, value) rows."""
    from .._modal.build import LIBRARY, PREDICT_METHOD, STREAM_METHOD, WEB_METHOD

    config = built.config
    split = config.topology == "split"
    gpu_method = (
        WEB_METHOD if not split else STREAM_METHOD if built.spec.streaming else PREDICT_METHOD
    )
    info = getattr(built.gpu_cls(), gpu_method).info()

    image = [
        ("python*", built.python_version),
        ("pip*", ", ".join(built.packages)),
        ("apt*", ", ".join(config.apt_packages) or "-"),
        ("env*", ", ".join(sorted(config.env)) or "-"),
        ("local sources*", ", ".join((LIBRARY, *config.local_sources))),
    ]
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
    return [
        (f"app {built.app.name}", [("image*", "debian slim"), *image]),
        ("GPU class", gpu_class),
        ("web endpoint", web),
        ("* not reported by Modal's info(): from the config and the image steps", []),
    ]


def warnings(built: ModalDeployment) -> list[str]:
    """Settings that are valid alone but work against each other, each with its fix."""
    config = built.config
    cls = built.server_cls
    found: list[str] = []
    if getattr(sys.modules.get(cls.__module__), "app", None) is not built.app:
        found.append(
            f"the file does not bind the app: add `app = {cls.__name__}.modal_app()` at module "
            "level, or `modal deploy` finds nothing to deploy"
        )
    if config.topology == "colocated" and config.max_concurrent_inputs < config.max_batch_size:
        found.append(
            f"topology='colocated' with max_concurrent_inputs={config.max_concurrent_inputs} < "
            f"max_batch_size={config.max_batch_size}: a container never holds more than "
            f"{config.max_concurrent_inputs} requests, so a batch can never fill; raise "
            f"max_concurrent_inputs to at least {config.max_batch_size}"
        )
    if config.request_timeout > config.timeout:
        found.append(
            f"request_timeout={config.request_timeout:g}s is above timeout={config.timeout}s: "
            "Modal stops a GPU input at timeout, before the router's deadline; raise timeout "
            "or lower request_timeout"
        )
    # (A generator predict is stepped in turns with the others, so it is not flagged.)
    one_at_a_time = not (_async_predict(cls) or built.spec.streaming)
    if not config.batched and config.max_concurrent_inputs > 1 and one_at_a_time:
        found.append(
            f"predict is sync and max_batch_size=1: a container takes "
            f"{config.max_concurrent_inputs} inputs at once but runs them one at a time; set "
            "max_batch_size > 1 (with predict_batch) to batch them, or make predict async"
        )
    if config.enable_memory_snapshot and getattr(cls, "to_device", None) is ModelServer.to_device:
        found.append(
            f"enable_memory_snapshot=True but {cls.__name__} does not define to_device(): "
            "load() runs before the snapshot, where no GPU is attached; load to CPU in load() "
            "and move the weights to the GPU in to_device()"
        )
    if not config.gpus:
        found.append("gpu is not set: the model runs on CPU-only containers; set gpu='A10' etc.")
    if config.min_containers > 0 and config.gpus:
        found.append(
            f"min_containers={config.min_containers} keeps that many {config.gpus[0]} "
            "containers running, and billed, while idle"
        )
    if config.custom_domains:
        found.append(
            "custom_domains needs a Modal Team plan (modal deploy fails without one); on any "
            "plan, put an edge in front instead: requires_proxy_auth=True plus `mfk edge`"
        )
        if config.requires_proxy_auth:
            found.append(
                "requires_proxy_auth=True applies on custom_domains too: every client must then "
                "send Modal-Key and Modal-Secret headers"
            )
    return found


_KIT_ROUTES = ("GET /healthz", "GET /readyz", "GET /docs")


def _api(built: ModalDeployment) -> Api:
    from .._http.router import PREDICT_API

    return built.spec.api or PREDICT_API


def _async_predict(cls: type) -> bool:
    fn = getattr(cls, "predict_batch", None) or getattr(cls, "predict", None)
    return inspect.iscoroutinefunction(fn)


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
    if info.batching_info is not None:
        batching = info.batching_info
        return f"@modal.batched: up to {batching.max_batch_size}, wait {batching.wait_ms} ms"
    if config.batched:
        where = "the web app" if config.topology == "colocated" else "the container"
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
