"""Build time, for a service with ``jobs``: the jobs class and the webhook function.

Both are bound at module level in the user's module, where Modal finds them by name:

- ``<Class>_jobs``: a GPU class (the GPU class's gpu, image, secrets, volumes, region,
  memory, retries and ``max_containers``; ``timeout`` its ``run_timeout`` plus a minute) with
  ``@modal.enter`` / ``@modal.exit`` and one plain ``@modal.method`` ``mfk_job(wire, job)``.
  A job is one spawned call of it; a container lost mid-job runs it again (``retries``). It
  takes one job at a time, and none is kept warm (``min_containers`` 0).
  It is not a subclass of the user's class: Modal collects a class's methods through its
  bases (``_find_partial_methods_for_user_cls`` walks the MRO), so a subclass would inherit
  the GPU class's ``@modal.batched`` ``mfk_predict``, and a batched class may have no other
  method. It holds an instance of the user's class instead (``jobs_container.model_of``).
- ``<Class>_webhooks``: a CPU function (the same image, the ``JobOptions.webhook_secret``
  Modal Secret) that delivers one webhook, every attempt, so a slow receiver never delays a
  job. One container holds many deliveries (they wait on the network and their back-off).

What their methods do in a container is in ``jobs_container``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, cast

import modal

from .._core.spec import ServiceSpec
from .._core.state import LoadState
from .._jobs.modal import JOB_METHOD, jobs_class_name, webhook_function_name
from .._jobs.options import MAX_RUN_TIMEOUT, JobOptions
from .._jobs.webhooks import DEFAULT_WEBHOOK_TIMEOUT, retry_delay
from ..exceptions import ConfigError
from . import container, jobs_container
from . import weights as weights_step

__all__ = [
    "JOB_TIMEOUT_MARGIN",
    "WEBHOOK_MAX_INPUTS",
    "check_jobs_deployable",
    "job_timeout",
    "register_jobs",
    "unbind",
    "webhook_timeout",
]

# Seconds the jobs class's timeout adds to run_timeout: the runtime then fails a job that ran
# too long itself (its end record and webhook written) before Modal cuts the input.
JOB_TIMEOUT_MARGIN = 60
WEBHOOK_MAX_INPUTS = 100  # deliveries one webhook container holds at once


def job_timeout(options: JobOptions) -> int:
    """The jobs class's Modal ``timeout``: ``run_timeout`` and a margin, at most 24 h."""
    return min(int(MAX_RUN_TIMEOUT), math.ceil(options.run_timeout) + JOB_TIMEOUT_MARGIN)


def webhook_timeout(options: JobOptions) -> int:
    """Seconds every attempt of one delivery may take, with the waits between them."""
    attempts = options.webhook_attempts
    waits = sum(retry_delay(made, options.webhook_backoff) for made in range(1, attempts))
    total = waits + attempts * DEFAULT_WEBHOOK_TIMEOUT + JOB_TIMEOUT_MARGIN
    return min(int(MAX_RUN_TIMEOUT), math.ceil(total))


def check_jobs_deployable(spec: ServiceSpec) -> None:
    """Refuse a module that already binds a name the jobs objects go to."""
    if spec.config.jobs is None:
        return
    server_cls = spec.server_cls
    module = sys.modules[server_cls.__module__]
    for name in _names(server_cls):
        if name in vars(module):
            raise ConfigError(
                f"{server_cls.__module__} already defines {name!r}; modal_fastapi_kit binds the "
                f"jobs of {server_cls.__name__} to that name: rename yours"
            )


def _names(server_cls: type) -> tuple[str, str]:
    return jobs_class_name(server_cls.__name__), webhook_function_name(server_cls.__name__)


def register_jobs(
    app: modal.App,
    spec: ServiceSpec,
    gpu_class_options: dict[str, Any],
    webhook_options: dict[str, Any],
) -> tuple[modal.Cls, modal.Function[..., Any, Any]]:
    """Register the jobs class (``gpu_class_options``: the GPU class's) and the webhook
    function (``webhook_options``: its image, secrets, region, cloud) on ``app``; bind them in
    the user's module (see the module's docstring)."""
    config, options = spec.config, spec.config.jobs
    assert options is not None
    server_cls = spec.server_cls
    cls_name, function_name = _names(server_cls)
    webhooks = _webhook_function(app, spec, options, function_name, webhook_options)
    jobs_options = {
        **gpu_class_options,
        "timeout": job_timeout(options),
        "startup_timeout": config.startup_timeout or config.timeout,
        "min_containers": None,  # jobs wait for a container; none is kept warm for them
        "buffer_containers": None,
    }
    jobs_cls = cast(modal.Cls, app.cls(**jobs_options)(_jobs_class(spec, webhooks)))
    module = sys.modules[server_cls.__module__]
    setattr(module, cls_name, jobs_cls)
    setattr(module, function_name, webhooks)
    return jobs_cls, webhooks


def unbind(spec: ServiceSpec, objects: tuple[Any, ...]) -> None:
    """Take back the module-level names ``register_jobs`` bound to ``objects``."""
    module = sys.modules[spec.server_cls.__module__]
    for name in _names(spec.server_cls):
        if vars(module).get(name) in objects:
            delattr(module, name)


def _jobs_class(spec: ServiceSpec, webhooks: Any) -> type:
    server_cls, config = spec.server_cls, spec.config
    snapshot = config.enable_memory_snapshot
    app_name = config.name
    name = jobs_class_name(server_cls.__name__)

    async def mfk_enter_snapshot(self: Any) -> None:
        model = jobs_container.model_of(self, spec)
        await weights_step.prepare(model)
        await container.enter_before_snapshot(model)

    async def mfk_enter(self: Any) -> None:
        model = jobs_container.model_of(self, spec)
        if not snapshot:
            await weights_step.prepare(model)
        await container.enter(model, after_snapshot=snapshot)

    async def mfk_exit(self: Any) -> None:
        await container.exit(jobs_container.model_of(self, spec))

    async def mfk_job(self: Any, wire: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        model = jobs_container.model_of(self, spec)
        if container.runtime_of(model).state is LoadState.CREATED:
            # Modal ran no @enter (an async method's .local() does not): load as it would.
            if snapshot:
                await mfk_enter_snapshot(self)
            await mfk_enter(self)
        return await jobs_container.run(
            model,
            wire,
            job,
            store=jobs_container.job_store(app_name),
            webhooks=webhooks,
        )

    namespace: dict[str, Any] = {
        "__module__": server_cls.__module__,
        "__qualname__": name,
        "__doc__": f"The jobs of {server_cls.__qualname__}: one spawned mfk_job call each.",
    }
    if snapshot:
        namespace["mfk_enter_snapshot"] = modal.enter(snap=True)(
            _named(mfk_enter_snapshot, spec, name, "mfk_enter_snapshot")
        )
    namespace["mfk_enter"] = modal.enter()(_named(mfk_enter, spec, name, "mfk_enter"))
    namespace["mfk_exit"] = modal.exit()(_named(mfk_exit, spec, name, "mfk_exit"))
    namespace[JOB_METHOD] = modal.method()(_named(mfk_job, spec, name, JOB_METHOD))
    return type(name, (), namespace)


def _webhook_function(
    app: modal.App,
    spec: ServiceSpec,
    options: JobOptions,
    name: str,
    function_options: dict[str, Any],
) -> modal.Function[..., Any, Any]:
    app_name = spec.config.name

    async def webhooks(job_id: str, url: str, msg_id: str, body: bytes) -> dict[str, Any]:
        return await jobs_container.send(
            job_id, url, msg_id, body, options=options, store=jobs_container.job_store(app_name)
        )

    function: modal.Function[..., Any, Any] = app.function(
        timeout=webhook_timeout(options), **function_options
    )(modal.concurrent(max_inputs=WEBHOOK_MAX_INPUTS)(_named(webhooks, spec, None, name)))
    return function


def _named(fn: Callable[..., Any], spec: ServiceSpec, owner: str | None, name: str) -> Any:
    """A generated function as Modal reads it: ``<owner>.<name>`` (a method of the jobs
    class) or ``<name>``, of the user's module (Modal refuses ``<locals>``)."""
    fn.__name__ = name
    fn.__qualname__ = f"{owner}.{name}" if owner else name
    fn.__module__ = spec.server_cls.__module__
    return fn
