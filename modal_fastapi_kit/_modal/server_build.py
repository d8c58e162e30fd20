"""Build time for ``topology="server"``: the ``@app.server`` options and the Modal Server.

A Modal Server (``App.server``, modal 1.5.1+) is a class whose ``@modal.enter`` starts an HTTP
server on ``port`` and whose ``@modal.exit`` stops it; Modal routes HTTP straight to that port.
The class Modal imports (``getattr(module, "X")``, as for the other topologies) is the user's
class, carrying the ``mfk_enter`` / ``mfk_exit`` markers that ``build.deployment`` attaches;
their bodies are in ``server_container``.

How the kit's options become the Server's (documented in docs/deploy.md):

- ``max_concurrency`` = ``max_concurrent_inputs``: requests one container holds at once, the
  same bound as ``@modal.concurrent`` in the colocated topology. Modal answers 429 above it;
  below it the kit's own queue bound (``max_queue_size``) answers 503 with ``Retry-After``.
- ``target_concurrency`` = ``target_concurrent_inputs`` (``None``: Modal's autoscaler default).
- ``startup_timeout`` = ``startup_timeout``, else ``timeout``: the enter hook loads the model
  before the port opens, so the whole load must fit in it (Modal's own default is 30 s).
- ``exit_grace_period`` = ``ServiceConfig.exit_grace_seconds`` (``request_timeout`` + 5 s by
  default): in-flight requests finish their deadline before the container stops.
- ``unauthenticated`` = not ``requires_proxy_auth``: the kit's API keys work as in colocated.
- ``routing_region`` = ``routing_region`` (Modal's default ``us-east``); ``compute_region`` =
  ``region``; no retries (a Server has none; ``_config`` refuses ``retries`` > 0).
"""

from __future__ import annotations

from typing import Any

import modal

from .._config import ServiceConfig
from .._core.spec import ServiceSpec

__all__ = ["DEFAULT_ROUTING_REGION", "register_server", "server_options", "startup_seconds"]

DEFAULT_ROUTING_REGION = "us-east"  # App.server's own default


def startup_seconds(config: ServiceConfig) -> int:
    """The Server's startup timeout: the load runs before the port opens, so it must fit."""
    return config.startup_timeout if config.startup_timeout is not None else config.timeout


def server_options(
    config: ServiceConfig, image: modal.Image, shared: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of ``App.server`` for ``config``; ``shared``: the options it
    takes as the GPU class does (``gpu``, ``secrets``, ``volumes``, ``compute_region``)."""
    return {
        **shared,
        "image": image,
        "cpu": config.cpu,
        "memory": config.memory,
        "port": config.port,
        "max_concurrency": config.max_concurrent_inputs,
        "target_concurrency": config.target_concurrent_inputs,
        "min_containers": config.min_containers,
        "max_containers": config.max_containers,
        "buffer_containers": config.buffer_containers,
        "scaledown_window": config.scaledown_window,
        "startup_timeout": startup_seconds(config),
        "exit_grace_period": config.exit_grace_seconds,
        "routing_region": config.routing_region or DEFAULT_ROUTING_REGION,
        "cloud": config.cloud,
        "unauthenticated": not config.requires_proxy_auth,
        "enable_memory_snapshot": config.enable_memory_snapshot,
    }


def register_server(
    app: modal.App, image: modal.Image, spec: ServiceSpec, shared: dict[str, Any]
) -> modal.Server:
    """Register the user's class, already carrying its markers, as a Modal Server."""
    return app.server(**server_options(spec.config, image, shared))(spec.server_cls)
