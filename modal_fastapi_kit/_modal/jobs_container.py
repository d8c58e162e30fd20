"""What the jobs class and the webhook function do in their containers (built in ``jobs``).

- ``model_of``: the jobs class holds one instance of the user's class per container; its
  lifecycle runs through ``container`` (``enter`` / ``exit``) as the GPU class's does.
- ``run`` (``mfk_job``): one job. Its id is ``modal.current_function_call_id()``. It counts an
  attempt in ``run:<id>``, runs the request through the container's ``ModelRuntime`` with the
  job's ``run_timeout`` as the call's stall bound, inside a ``JobCall`` whose progress reports
  are written to ``run:<id>`` at most once a second, writes ``end:<id>``, spawns the webhook
  function when the job has a webhook, and answers the outcome envelope (``_core.wire``).
  When Modal cancels the input (its task is cancelled), the ``JobCall`` is marked canceled,
  so a sync ``predict`` stops at its next ``progress()``; the web tier wrote ``cancel:<id>``
  and sends that webhook.
- ``send`` (the webhook function): ``deliver``, writing ``hook:<id>`` after every attempt;
  a slow or failing receiver holds only this function, never a job.

A record that cannot be written is logged and the job goes on: its result is Modal's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.runtime import ModelRuntime
from .._core.spec import ServiceSpec
from .._core.wire import Wire, decode_request, encode_outcome
from .._file import files_in
from .._jobs.modal import JobRecords, jobs_dict_name
from .._jobs.options import JobOptions
from .._jobs.progress import CURRENT, JobCall
from .._jobs.service import public_job_error
from .._jobs.status import (
    JobError,
    JobInfo,
    JobProgress,
    JobState,
    WebhookStatus,
    job_links,
)
from .._jobs.webhooks import WebhookSigner, deliver, webhook_event
from ..exceptions import PredictError, ServingError
from . import container

__all__ = ["PROGRESS_EVERY", "job_store", "model_of", "run", "send", "spawn_webhook"]

logger = logging.getLogger("modal_fastapi_kit")

PROGRESS_EVERY = 1.0  # seconds between two writes of a job's progress
_MODEL = "_mfk_model"


def model_of(jobs_instance: Any, spec: ServiceSpec) -> Any:
    """The instance of the user's class this jobs container serves, built on first use."""
    model = vars(jobs_instance).get(_MODEL)
    if model is None:
        model = spec.server_cls()
        setattr(jobs_instance, _MODEL, model)
    return model


def job_store(app_name: str) -> Any:
    """The app's ``modal.Dict`` of job records."""
    import modal

    return modal.Dict.from_name(jobs_dict_name(app_name), create_if_missing=True)


async def spawn_webhook(function: Any, job_id: str, url: str, msg_id: str, body: bytes) -> None:
    """Start the webhook function for one event; it runs in its own container."""
    await function.spawn.aio(job_id, url, msg_id, body)


def _job_id() -> str:
    import modal

    job_id = modal.current_function_call_id()
    if not job_id:
        raise RuntimeError(
            "mfk_job runs a job spawned by the service's job routes (Modal gives it its call "
            "id); submit jobs with POST <route>/jobs instead of calling it directly"
        )
    return job_id


async def run(model: Any, wire: Wire, meta: dict[str, Any], *, store: Any, webhooks: Any) -> Wire:
    """Run one job (see the module's docstring) and answer its outcome envelope."""
    job_id = _job_id()
    runtime = container.runtime_of(model)
    options = runtime.config.jobs
    assert options is not None  # the jobs class is built only for a service with jobs
    records = JobRecords(store)
    started = time.time()
    attempt = await _safely(records.started(job_id, started), f"job {job_id}: run record")
    run = attempt or {"started_at": started, "attempts": 1, "progress": None}
    reporter = _Reporter(records, job_id, run)
    request = decode_request(runtime.spec.request_model, wire)
    if isinstance(request, ServingError):
        outcome: Any = request
    else:
        try:
            outcome = await _run_model(runtime, request, job_id, reporter, options)
        finally:
            for file in files_in(request):
                file.close()
    if isinstance(outcome, ServingError):
        outcome = public_job_error(job_id, outcome, time.time() - started, options.run_timeout)
    envelope, outcome = _envelope(outcome)
    finished = time.time()
    state = JobState.FAILED if isinstance(outcome, ServingError) else JobState.SUCCEEDED
    await reporter.flush()
    await _safely(records.ended(job_id, finished, state), f"job {job_id}: end record")
    url = meta.get("webhook")
    if url:
        info = JobInfo(
            id=job_id,
            state=state,
            created_at=float(meta["created_at"]),
            started_at=float(run["started_at"]),
            finished_at=finished,
            expires_at=finished + options.retention,
            attempts=int(run["attempts"]),
            progress=reporter.written,
            error=JobError.of(outcome) if isinstance(outcome, ServingError) else None,
            webhook=WebhookStatus(url=str(url), state="pending"),
            request_id=meta.get("request_id"),
        )
        msg_id, body = webhook_event(info.status(job_links(str(meta["jobs_url"]), job_id)))
        await _safely(
            spawn_webhook(webhooks, job_id, str(url), msg_id, body), f"job {job_id}: webhook"
        )
    return envelope


async def _run_model(
    runtime: ModelRuntime, request: Any, job_id: str, reporter: _Reporter, options: JobOptions
) -> Any:
    call = JobCall([job_id], reporter.record)
    token = CURRENT.set(call)  # a sync predict sees it too: the thread runs in this context
    writer = asyncio.get_running_loop().create_task(reporter.write_every(PROGRESS_EVERY))
    try:
        [outcome] = await runtime.run_batch([request], bound=options.run_timeout)
    except asyncio.CancelledError:  # Modal cancelled the input: stop the model at its next report
        call.cancel(job_id)
        raise
    finally:
        CURRENT.reset(token)
        writer.cancel()
    return outcome


def _envelope(outcome: Any) -> tuple[Wire, Any]:
    """``encode_outcome``, or the job's error when its answer cannot be sent."""
    try:
        return encode_outcome(outcome), outcome
    except Exception as exc:
        logger.exception("could not send a job's answer to the web tier")
        error = PredictError(
            f"the answer could not be sent ({type(exc).__name__}); the log says why"
        )
        error.__cause__ = exc
        return encode_outcome(error), error


class _Reporter:
    """A job's latest progress: recorded from any thread, written from the loop."""

    def __init__(self, records: JobRecords, job_id: str, run: dict[str, Any]) -> None:
        self.records, self.job_id, self.run = records, job_id, run
        self.latest: JobProgress | None = None
        self.written: JobProgress | None = None

    def record(self, job_id: str, progress: JobProgress) -> None:
        self.latest = progress  # one assignment: safe from the inference thread

    async def write_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.flush()

    async def flush(self) -> None:
        latest = self.latest
        if latest is not None and latest is not self.written:
            self.written = latest
            await _safely(
                self.records.progressed(self.job_id, self.run, latest),
                f"job {self.job_id}: progress",
            )


async def _safely(step: Awaitable[Any], what: str) -> Any:
    """Await ``step``; log (and answer None) when it fails: a record is not worth a job."""
    try:
        return await step
    except Exception:
        logger.exception("%s could not be written", what)
        return None


async def send(
    job_id: str,
    url: str,
    msg_id: str,
    body: bytes,
    *,
    options: JobOptions,
    store: Any,
    signer: Callable[[JobOptions], WebhookSigner | None] = WebhookSigner.from_environment,
) -> dict[str, Any]:
    """Deliver one event (the webhook function's body); its last ``WebhookStatus``."""
    records = JobRecords(store)

    async def recorded(status: WebhookStatus) -> None:
        await _safely(records.webhook(job_id, status), f"job {job_id}: webhook record")

    signs = signer(options)
    if signs is None:
        status = WebhookStatus(
            url=url,
            state="failed",
            last_error=f"no webhook secret: set ${options.webhook_secret_env} in the Modal "
            "Secret named by JobOptions(webhook_secret=...)",
        )
        await recorded(status)
    else:
        status = await deliver(url, msg_id, body, signs, options, on_attempt=recorded)
    if status.state != "delivered":
        logger.warning("the webhook of job %s was not delivered: %s", job_id, status.last_error)
    return status.model_dump()
