"""Settings that are valid alone but break, bill or work against each other on Modal."""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

from .._server import ModelServer
from .cost import DAYS_PER_MONTH, hours, idle_cost
from .finding import Finding

if TYPE_CHECKING:
    from .._config import ServiceConfig
    from .._modal import ModalDeployment

__all__ = ["settings_findings"]


def settings_findings(built: ModalDeployment, where: tuple[str, ...] = ()) -> list[Finding]:
    """What the config and the file say that would break or bill; ``where`` is the class's
    ``file:line``, where each of them is fixed."""
    config = built.config
    cls = built.server_cls
    found: list[Finding] = []
    if getattr(sys.modules.get(cls.__module__), "app", None) is not built.app:
        found.append(
            Finding(
                "app-not-bound",
                "error",
                "the file does not bind the app, so `modal deploy` finds nothing to deploy",
                f"add `app = {cls.__name__}.modal_app()` at module level",
                where,
            )
        )
    serves_itself = config.topology in ("colocated", "server")
    if serves_itself and config.max_concurrent_inputs < config.max_batch_size:
        found.append(
            Finding(
                "batch-cannot-fill",
                "warning",
                f"topology={config.topology!r} with max_concurrent_inputs="
                f"{config.max_concurrent_inputs} < max_batch_size={config.max_batch_size}: a "
                "container never holds more than "
                f"{config.max_concurrent_inputs} requests, so a batch can never fill",
                f"raise max_concurrent_inputs to at least {config.max_batch_size}",
                where,
            )
        )
    if config.request_timeout > config.timeout and config.topology != "server":
        found.append(
            Finding(
                "request-timeout-above-timeout",
                "warning",
                f"request_timeout={config.request_timeout:g}s is above timeout={config.timeout}s:"
                " Modal stops a GPU input at timeout, before the router's deadline",
                "raise timeout or lower request_timeout",
                where,
            )
        )
    # (A generator predict is stepped in turns with the others, so it is not flagged.)
    one_at_a_time = not (_async_predict(cls) or built.spec.streaming)
    if not config.batched and config.max_concurrent_inputs > 1 and one_at_a_time:
        found.append(
            Finding(
                "sync-predict-one-at-a-time",
                "warning",
                f"predict is sync and max_batch_size=1: a container takes "
                f"{config.max_concurrent_inputs} inputs at once but runs them one at a time",
                "set max_batch_size > 1 (with predict_batch) to batch them, or make predict async",
                where,
            )
        )
    if built.spec.predict.joining and not config.batched:
        found.append(
            Finding(
                "joining-one-at-a-time",
                "warning",
                f"{cls.__name__} defines join, step and leave but max_batch_size=1: one stream "
                "runs at a time, each to its end, and every other stream waits in the queue",
                "set max_batch_size to the streams the model can step at once (e.g. 64)",
                where,
            )
        )
    if config.enable_memory_snapshot and getattr(cls, "to_device", None) is ModelServer.to_device:
        found.append(
            Finding(
                "snapshot-without-to-device",
                "warning",
                f"enable_memory_snapshot=True but {cls.__name__} does not define to_device(): "
                "load() runs before the snapshot, where no GPU is attached",
                "load to CPU in load() and move the weights to the GPU in to_device()",
                where,
            )
        )
    found += _scaling_findings(config, where)
    if config.custom_domains:
        found.append(
            Finding(
                "custom-domains-team-plan",
                "warning",
                "custom_domains needs a Modal Team plan (modal deploy fails without one)",
                "on any plan, put an edge in front instead: requires_proxy_auth=True plus "
                "`mfk edge`",
                where,
            )
        )
        if config.requires_proxy_auth:
            found.append(
                Finding(
                    "proxy-auth-on-custom-domains",
                    "warning",
                    "requires_proxy_auth=True applies on custom_domains too: every client must "
                    "then send Modal-Key and Modal-Secret headers",
                    "give every client of the custom domain a proxy-auth token, or set "
                    "requires_proxy_auth=False",
                    where,
                )
            )
    return found


def _scaling_findings(config: ServiceConfig, where: tuple[str, ...]) -> list[Finding]:
    """GPUs that are billed while idle, or without a bound."""
    if not config.gpus:
        return [
            Finding(
                "no-gpu",
                "warning",
                "gpu is not set: the model runs on CPU-only containers",
                "set gpu='A10' (or another GPU type)",
                where,
            )
        ]
    cost = idle_cost(config)
    gpu = config.gpus[0]
    found: list[Finding] = []
    if config.min_containers > 0:
        found.append(
            Finding(
                "min-containers-billed-idle",
                "warning",
                f"min_containers={config.min_containers} keeps that many {gpu} containers "
                f"running, and billed, while idle: {cost.idle_gpus} GPU(s), "
                f"{hours(cost.idle_gpu_hours_per_day)} GPU-hours a day, "
                f"{hours(cost.idle_gpu_hours_per_month)} a {DAYS_PER_MONTH}-day month",
                "set min_containers=0 to pay only while serving (the first request after a "
                "quiet spell then waits for a cold start)",
                where,
            )
        )
    if config.max_containers is None:
        found.append(
            Finding(
                "unbounded-autoscaling",
                "warning",
                f"max_containers is not set: a burst (or a client retrying in a loop) makes "
                f"Modal start as many {gpu} containers as the load asks for, each billed while it "
                f"serves and {config.scaledown_window}s after (scaledown_window)",
                "set max_containers=N to cap how many GPUs it can hold at once",
                where,
            )
        )
    return found


def _async_predict(cls: type) -> bool:
    fn = getattr(cls, "predict_batch", None) or getattr(cls, "predict", None)
    return inspect.iscoroutinefunction(fn)
