"""``mfk check FILE.py[:Class]``: the generated Modal deployment as a table, what an idle
deployment holds in GPU-hours, and what would break or bill on Modal.

Every value about the GPU class and the web function is read back from the Modal objects
through their public ``info()``; what ``info()`` does not report (the image steps, autoscaling,
label, custom domains) comes from the config and is marked ``*``. Imports the image cannot
satisfy are found by reading the source (``_imports.py``), never by running more of it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._config import RetryPolicy
from .._server import ModelServer
from ..exceptions import ConfigError
from ._imports import import_problems
from ._loading import UsageError, load_service

if TYPE_CHECKING:
    from .._config import ServiceConfig
    from .._core.spec import Api
    from .._modal import ModalDeployment

__all__ = [
    "Finding",
    "IdleCost",
    "add_parser",
    "describe",
    "findings",
    "gpu_count",
    "idle_cost",
    "report",
    "run",
]

Row = tuple[str, str]
Severity = Literal["warning", "note"]
HOURS_PER_DAY = 24
DAYS_PER_MONTH = 30


@dataclass(frozen=True)
class Finding:
    """Something that would break or bill on Modal: a stable code, the message with its fix,
    and where it comes from (``file:line``). Notes do not fail ``--strict``."""

    code: str
    message: str
    where: tuple[str, ...] = ()
    severity: Severity = "warning"


@dataclass(frozen=True)
class IdleCost:
    """GPU-hours the GPU class holds with no traffic, and after a burst. No prices."""

    gpus: tuple[str, ...]
    gpus_per_container: int  # the largest count among the gpu choices
    min_containers: int
    buffer_containers: int
    max_containers: int | None
    scaledown_window: int

    @property
    def idle_gpus(self) -> int:
        """GPUs held with no traffic at all: ``min_containers`` x GPUs per container."""
        return self.min_containers * self.gpus_per_container

    @property
    def idle_gpu_hours_per_day(self) -> float:
        return float(self.idle_gpus * HOURS_PER_DAY)

    @property
    def idle_gpu_hours_per_month(self) -> float:
        return float(self.idle_gpus * HOURS_PER_DAY * DAYS_PER_MONTH)

    @property
    def buffer_gpus_while_active(self) -> int:
        """Idle GPUs Modal keeps above demand while inputs arrive (``buffer_containers``)."""
        return self.buffer_containers * self.gpus_per_container

    @property
    def burst_tail_gpu_hours_per_container(self) -> float:
        """What each container above ``min_containers`` holds after its last input."""
        return self.scaledown_window / 3600 * self.gpus_per_container

    @property
    def burst_tail_gpu_hours_at_max(self) -> float | None:
        """The tail of a burst that scaled to ``max_containers``; None when unbounded."""
        if self.max_containers is None:
            return None
        above = self.max_containers - self.min_containers
        return above * self.burst_tail_gpu_hours_per_container

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu": list(self.gpus),
            "gpus_per_container": self.gpus_per_container,
            "min_containers": self.min_containers,
            "buffer_containers": self.buffer_containers,
            "max_containers": self.max_containers,
            "scaledown_window_s": self.scaledown_window,
            "idle_gpus": self.idle_gpus,
            "idle_gpu_hours_per_day": _round(self.idle_gpu_hours_per_day),
            "idle_gpu_hours_per_month": _round(self.idle_gpu_hours_per_month),
            "days_per_month": DAYS_PER_MONTH,
            "buffer_gpus_while_active": self.buffer_gpus_while_active,
            "burst_tail_gpu_hours_per_container": _round(self.burst_tail_gpu_hours_per_container),
            "burst_tail_gpu_hours_at_max": None
            if self.burst_tail_gpu_hours_at_max is None
            else _round(self.burst_tail_gpu_hours_at_max),
        }


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="show the Modal deployment generated for a class, and what may bite",
        description="Build the Modal objects for a @gpu_service class (no Modal account "
        "needed), print them as a table with the GPU-hours an idle deployment holds, and warn "
        "about imports the image lacks, unbounded GPU autoscaling and settings that work "
        "against each other.",
    )
    parser.add_argument("target", metavar="FILE.py[:Class]", help="file holding the class")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 on warnings (notes do not count)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (deployment, idle_cost, warnings) instead of the table",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # With --json, stdout carries the JSON alone: what the file prints on import goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        server_cls = load_service(args.target)
        from .._modal import deployment

        try:
            built = deployment(server_cls)
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
        found = findings(built)
    if args.json:
        print(json.dumps(report(built, args.target, found), indent=2))
    else:
        print(f"Modal deployment of {server_cls.__name__} ({args.target})\n")
        print(render(describe(built)))
        print(render([_idle_section(idle_cost(built.config))]))
        for finding in found:
            print(f"{finding.severity}: {finding.message}")
        if not _failing(found):
            print("no warnings")
    return 1 if _failing(found) and args.strict else 0


def report(built: ModalDeployment, target: str, found: list[Finding]) -> dict[str, Any]:
    """The ``--json`` object: the deployment table, the idle cost and the findings."""
    sections = [
        {
            "section": title,
            "rows": [
                {"setting": key.rstrip("*"), "value": value, "from_info": not key.endswith("*")}
                for key, value in rows
            ],
        }
        for title, rows in describe(built)
        if rows
    ]
    return {
        "service": built.server_cls.__name__,
        "target": target,
        "app": built.app.name,
        "deployment": sections,
        "idle_cost": idle_cost(built.config).as_dict(),
        "warnings": [
            {"code": f.code, "severity": f.severity, "message": f.message, "where": list(f.where)}
            for f in found
        ],
        "counts": {
            "warning": sum(f.severity == "warning" for f in found),
            "note": sum(f.severity == "note" for f in found),
        },
    }


def _failing(found: list[Finding]) -> bool:
    return any(f.severity == "warning" for f in found)


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


def findings(built: ModalDeployment) -> list[Finding]:
    """Imports the image lacks, then settings that bill or work against each other."""
    module = sys.modules.get(built.server_cls.__module__)
    source = getattr(module, "__file__", None)
    found: list[Finding] = []
    if source is not None:
        config = built.config
        for problem in import_problems(Path(source), built.packages, config.local_sources):
            severity: Severity = "note" if problem.optional else "warning"
            at = problem.where or _class_line(built.server_cls)
            found.append(Finding(problem.code, problem.message, at, severity))
    where = _class_line(built.server_cls)
    found += [Finding(code, message, where) for code, message in _config_findings(built)]
    return found


def idle_cost(config: ServiceConfig) -> IdleCost:
    """The GPU-hours the config's autoscaling holds; zero GPUs for a CPU-only service."""
    return IdleCost(
        gpus=config.gpus,
        gpus_per_container=max((gpu_count(g) for g in config.gpus), default=0),
        min_containers=config.min_containers,
        buffer_containers=config.buffer_containers or 0,
        max_containers=config.max_containers,
        scaledown_window=config.scaledown_window,
    )


def gpu_count(gpu: str) -> int:
    """GPUs per container in a Modal gpu string: ``"A10"`` -> 1, ``"H100:2"`` -> 2."""
    _, sep, count = gpu.partition(":")
    return int(count) if sep and count.isdigit() else 1


def _config_findings(built: ModalDeployment) -> list[tuple[str, str]]:
    """Settings that are valid alone but bill or work against each other, as (code, message
    with its fix)."""
    config = built.config
    cls = built.server_cls
    found: list[tuple[str, str]] = []
    if getattr(sys.modules.get(cls.__module__), "app", None) is not built.app:
        found.append(
            (
                "app-not-bound",
                f"the file does not bind the app: add `app = {cls.__name__}.modal_app()` at "
                "module level, or `modal deploy` finds nothing to deploy",
            )
        )
    if config.topology == "colocated" and config.max_concurrent_inputs < config.max_batch_size:
        found.append(
            (
                "batch-cannot-fill",
                f"topology='colocated' with max_concurrent_inputs={config.max_concurrent_inputs}"
                f" < max_batch_size={config.max_batch_size}: a container never holds more than "
                f"{config.max_concurrent_inputs} requests, so a batch can never fill; raise "
                f"max_concurrent_inputs to at least {config.max_batch_size}",
            )
        )
    if config.request_timeout > config.timeout:
        found.append(
            (
                "request-timeout-above-timeout",
                f"request_timeout={config.request_timeout:g}s is above timeout={config.timeout}s:"
                " Modal stops a GPU input at timeout, before the router's deadline; raise "
                "timeout or lower request_timeout",
            )
        )
    # (A generator predict is stepped in turns with the others, so it is not flagged.)
    one_at_a_time = not (_async_predict(cls) or built.spec.streaming)
    if not config.batched and config.max_concurrent_inputs > 1 and one_at_a_time:
        found.append(
            (
                "sync-predict-one-at-a-time",
                f"predict is sync and max_batch_size=1: a container takes "
                f"{config.max_concurrent_inputs} inputs at once but runs them one at a time; set "
                "max_batch_size > 1 (with predict_batch) to batch them, or make predict async",
            )
        )
    if config.enable_memory_snapshot and getattr(cls, "to_device", None) is ModelServer.to_device:
        found.append(
            (
                "snapshot-without-to-device",
                f"enable_memory_snapshot=True but {cls.__name__} does not define to_device(): "
                "load() runs before the snapshot, where no GPU is attached; load to CPU in "
                "load() and move the weights to the GPU in to_device()",
            )
        )
    found += _scaling_findings(config)
    if config.custom_domains:
        found.append(
            (
                "custom-domains-team-plan",
                "custom_domains needs a Modal Team plan (modal deploy fails without one); on any "
                "plan, put an edge in front instead: requires_proxy_auth=True plus `mfk edge`",
            )
        )
        if config.requires_proxy_auth:
            found.append(
                (
                    "proxy-auth-on-custom-domains",
                    "requires_proxy_auth=True applies on custom_domains too: every client must "
                    "then send Modal-Key and Modal-Secret headers",
                )
            )
    return found


def _scaling_findings(config: ServiceConfig) -> list[tuple[str, str]]:
    """GPUs that are billed while idle, or without a bound."""
    if not config.gpus:
        return [
            (
                "no-gpu",
                "gpu is not set: the model runs on CPU-only containers; set gpu='A10' etc.",
            )
        ]
    cost = idle_cost(config)
    gpu = config.gpus[0]
    found: list[tuple[str, str]] = []
    if config.min_containers > 0:
        found.append(
            (
                "min-containers-billed-idle",
                f"min_containers={config.min_containers} keeps that many {gpu} containers "
                f"running, and billed, while idle: {cost.idle_gpus} GPU(s), "
                f"{_hours(cost.idle_gpu_hours_per_day)} GPU-hours a day, "
                f"{_hours(cost.idle_gpu_hours_per_month)} a {DAYS_PER_MONTH}-day month; set "
                "min_containers=0 to pay only while serving (first request waits for a cold start)",
            )
        )
    if config.max_containers is None:
        found.append(
            (
                "unbounded-autoscaling",
                f"max_containers is not set: a burst (or a client retrying in a loop) makes "
                f"Modal start as many {gpu} containers as the load asks for, each billed while it "
                f"serves and {config.scaledown_window}s after (scaledown_window); set "
                "max_containers=N to cap how many GPUs it can hold at once",
            )
        )
    return found


def _class_line(cls: type) -> tuple[str, ...]:
    """``file:line`` of the decorated class, for findings about its options."""
    from ._imports import display_path

    try:
        source = inspect.getsourcefile(cls)
        _, line = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return ()
    return (f"{display_path(Path(source))}:{line}",) if source else ()


def _idle_section(cost: IdleCost) -> tuple[str, list[Row]]:
    title = f"idle cost (GPU-hours, from the config; no prices; a month is {DAYS_PER_MONTH} days)"
    if not cost.gpus:
        return title, [("gpu", "none: CPU containers only, no GPU-hours")]
    per = cost.gpus_per_container
    largest = " (the largest choice)" if len(cost.gpus) > 1 else ""
    idle = (
        f"{cost.min_containers} container(s) x {per} = {cost.idle_gpus} GPU(s): "
        f"{_hours(cost.idle_gpu_hours_per_day)} GPU-h a day, "
        f"{_hours(cost.idle_gpu_hours_per_month)} GPU-h a month (min_containers)"
        if cost.min_containers
        else "nothing (min_containers=0; a request after a quiet spell waits for a cold start)"
    )
    serving = (
        f"+{cost.buffer_gpus_while_active} idle GPU(s) above demand "
        f"(buffer_containers={cost.buffer_containers})"
        if cost.buffer_containers
        else "no idle containers above demand (buffer_containers unset)"
    )
    tail = (
        f"{_hours(cost.burst_tail_gpu_hours_per_container)} GPU-h per container above "
        f"min_containers ({cost.scaledown_window}s scaledown_window x {per} GPU(s)); "
    )
    at_max = cost.burst_tail_gpu_hours_at_max
    if at_max is None:
        tail += "no max_containers, so no bound"
    else:
        tail += f"{_hours(at_max)} GPU-h after scaling to max_containers={cost.max_containers}"
    return title, [
        ("gpus per container", f"{per}{largest}: {', '.join(cost.gpus)}"),
        ("held while idle", idle),
        ("while serving", serving),
        ("after a burst", tail),
    ]


def _hours(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _round(value: float) -> float:
    return round(value, 4)


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
