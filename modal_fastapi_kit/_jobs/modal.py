"""``ModalJobs``: jobs on Modal, each a spawned call of the service's jobs class.

The web tier keeps nothing in memory. A job is ``<Class>_jobs().mfk_job.spawn(wire, job)``;
its id is the ``FunctionCall``'s id; Modal keeps its result (7 days) and runs it again when its
container is lost (the service's ``retries``). What Modal does not keep goes in the app's
``modal.Dict`` (``<app name>-jobs``), one plain dict per key, each written by one side:

========================  =================================================  ==================
``job:<id>``              owner, created_at, request_id, jobs_url, webhook   web tier (submit)
``idem:<owner>:<key>``    digest, job_id                                     web tier (submit)
``run:<id>``              started_at, attempts, progress                     jobs container
``end:<id>``              finished_at, state                                 jobs container
``cancel:<id>``           at                                                 web tier (cancel)
``hook:<id>``             the ``WebhookStatus`` after each attempt           webhook function
========================  =================================================  ==================

A job's state, read on every status call (``FunctionCall.get(timeout=0)``, then the records):
``cancel:<id>`` set -> canceled; a result -> succeeded, or failed with its error; pending ->
running once ``run:<id>`` exists, else queued (Modal has no "queued vs running" of its own);
``OutputExpiredError``, or ``finished_at + retention`` passed -> expired. ``max_pending`` is
not enforced here: ``max_containers`` bounds what runs, Modal queues the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .._core.spec import ServiceSpec
from .._core.wire import Wire, decode_outcome
from ..exceptions import DeadlineExceeded, ErrorCode, InputError, PredictError, ServingError
from .options import JobOptions
from .service import (
    Submission,
    idempotency_reused,
    job_expired,
    job_not_found,
    request_digest,
)
from .status import JobError, JobInfo, JobProgress, JobState, WebhookStatus, job_links
from .webhooks import WebhookSigner, webhook_event

__all__ = [
    "JOBS_CLASS_SUFFIX",
    "JOB_METHOD",
    "WEBHOOK_FUNCTION_SUFFIX",
    "JobRecords",
    "ModalJobs",
    "job_meta",
    "jobs_class_name",
    "jobs_dict_name",
    "webhook_function_name",
]

logger = logging.getLogger("modal_fastapi_kit")

JOB_METHOD = "mfk_job"  # the jobs class's one Modal method: (request wire, job meta) -> outcome
JOBS_CLASS_SUFFIX = "_jobs"  # <Class>_jobs: the class whose spawned calls are the jobs
WEBHOOK_FUNCTION_SUFFIX = "_webhooks"  # <Class>_webhooks: the function that sends webhooks


def jobs_class_name(class_name: str) -> str:
    """The module-level name (and Modal name) of the jobs class of ``class_name``."""
    return f"{class_name}{JOBS_CLASS_SUFFIX}"


def webhook_function_name(class_name: str) -> str:
    """The module-level name (and Modal name) of the webhook function of ``class_name``."""
    return f"{class_name}{WEBHOOK_FUNCTION_SUFFIX}"


def jobs_dict_name(app_name: str) -> str:
    """The ``modal.Dict`` that holds an app's job records."""
    return f"{app_name}-jobs"


def job_meta(submission: Submission, created_at: float) -> dict[str, Any]:
    """What the jobs container is told beside the request: what it needs to answer a
    webhook (the ``job:<id>`` record may not be written yet when the job starts)."""
    return {
        "created_at": created_at,
        "request_id": submission.request_id,
        "jobs_url": submission.jobs_url,
        "webhook": submission.webhook,
    }


class JobRecords:
    """The job records in a ``modal.Dict`` (anything with ``get.aio`` / ``put.aio`` /
    ``pop.aio`` as ``modal.Dict`` has them)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def get(self, key: str) -> dict[str, Any] | None:
        value = await self.store.get.aio(key)
        return value if isinstance(value, dict) else None

    async def put(self, key: str, value: dict[str, Any], *, only_new: bool = False) -> bool:
        """Write ``key``; with ``only_new``, only if it is not there (True when written)."""
        return bool(await self.store.put.aio(key, value, skip_if_exists=only_new))

    async def pop(self, key: str) -> None:
        await self.store.pop.aio(key, None)

    async def started(self, job_id: str, at: float) -> dict[str, Any]:
        """Record one more attempt of the job (a lost container's job runs again)."""
        before = await self.get(f"run:{job_id}") or {}
        run = {"started_at": at, "attempts": int(before.get("attempts", 0)) + 1, "progress": None}
        await self.put(f"run:{job_id}", run)
        return run

    async def progressed(self, job_id: str, run: dict[str, Any], progress: JobProgress) -> None:
        run["progress"] = progress.model_dump()
        await self.put(f"run:{job_id}", run)

    async def ended(self, job_id: str, at: float, state: JobState) -> None:
        await self.put(f"end:{job_id}", {"finished_at": at, "state": state.value})

    async def webhook(self, job_id: str, status: WebhookStatus) -> None:
        await self.put(f"hook:{job_id}", status.model_dump())


class _Pending:
    """``FunctionCall.get`` timed out: the call has no result yet."""


class _Gone:
    """``OutputExpiredError``: Modal no longer keeps the call's result."""


PENDING, GONE = _Pending(), _Gone()
_Polled = _Pending | _Gone | ServingError | Wire


class ModalJobs:
    """``JobService`` on Modal (see the module's docstring).

    ``jobs_cls``: the deployed jobs class (``modal.Cls``); ``webhooks``: the webhook function
    (``modal.Function``, spawned with ``(job_id, url, msg_id, body)``); ``store``: the
    ``modal.Dict``; ``map_error``: what a Modal exception is answered as (the backend's
    mapping); ``calls``: ``FunctionCall.from_id``. ``checks_secret``: refuse a
    ``Webhook-URL`` when this process has no webhook secret (the deployed web function has
    the webhook function's secrets; a router elsewhere cannot know them).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        jobs_cls: Any,
        webhooks: Any,
        store: Any,
        map_error: Callable[[BaseException], ServingError],
        calls: Callable[[str], Any] | None = None,
        checks_secret: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        options = spec.config.jobs
        if options is None:
            raise ValueError(f"{spec.name} does not set jobs")
        self.spec = spec
        self.options: JobOptions = options
        self.records = JobRecords(store)
        self.map_error = map_error
        self.clock = clock
        self._jobs_cls = jobs_cls
        self._webhooks = webhooks
        self._calls = calls
        self._obj: Any = None
        self._unsigned = checks_secret and WebhookSigner.from_environment(options) is None

    @property
    def pending(self) -> int:
        return 0  # Modal queues the jobs; this process does not count them

    async def start(self) -> None:
        """Nothing to open: the handles are looked up on first use."""

    async def stop(self) -> None:
        """Nothing to stop: spawned jobs run on in their own containers."""

    # -- submit ----------------------------------------------------------------------------

    async def submit(self, submission: Submission, wire: dict[str, Any]) -> tuple[JobInfo, bool]:
        if submission.webhook is not None and self._unsigned:
            raise InputError(
                "this service has no secret to sign webhooks with: set "
                f"${self.options.webhook_secret_env} in the Modal Secret named by "
                "JobOptions(webhook_secret=...), or submit without Webhook-URL and poll the job",
                status_code=422,
                code=ErrorCode.WEBHOOK_REFUSED,
            )
        key = submission.idempotency_key
        idem_key = f"idem:{submission.owner}:{key}"
        digest = request_digest(wire) if key else ""
        if key:
            known = await self._replay(idem_key, key, digest, submission.owner)
            if known is not None:
                return known, True
        created_at = self.clock()
        call = await self._spawn(wire, job_meta(submission, created_at))
        job_id = str(call.object_id)
        record = {
            "owner": submission.owner,
            "created_at": created_at,
            "request_id": submission.request_id,
            "jobs_url": submission.jobs_url,
            "webhook": submission.webhook,
            "idempotency_key": key,
        }
        try:
            await self.records.put(f"job:{job_id}", record)
            if key and not await self.records.put(
                idem_key, {"digest": digest, "job_id": job_id}, only_new=True
            ):  # the same key, sent twice at once: the other submission made the job
                await call.cancel.aio()
                await self.records.pop(f"job:{job_id}")
                known = await self._replay(idem_key, key, digest, submission.owner)
                if known is not None:
                    return known, True
        except Exception as exc:
            with contextlib.suppress(Exception):  # a job no one can find must not run
                await call.cancel.aio()
            if isinstance(exc, ServingError):
                raise
            raise self.map_error(exc) from exc
        info = JobInfo(
            id=job_id,
            state=JobState.QUEUED,
            created_at=created_at,
            webhook=_pending_webhook(submission.webhook),
            request_id=submission.request_id,
        )
        return info, False

    async def _replay(self, idem_key: str, key: str, digest: str, owner: str) -> JobInfo | None:
        """The job an ``Idempotency-Key`` made before, when the body is the same."""
        try:
            known = await self.records.get(idem_key)
        except Exception as exc:
            raise self.map_error(exc) from exc
        if known is None:
            return None
        if known.get("digest") != digest:
            raise idempotency_reused(key)
        info, _ = await self._look(str(known["job_id"]), owner, 0.0)
        return info

    async def _spawn(self, wire: Wire, meta: dict[str, Any]) -> Any:
        try:
            if self._obj is None:
                self._obj = self._jobs_cls()
            method = getattr(self._obj, JOB_METHOD)
            return await method.spawn.aio(wire, meta)
        except Exception as exc:
            raise self.map_error(exc) from exc

    # -- status, result, cancel ------------------------------------------------------------

    async def status(self, job_id: str, owner: str) -> JobInfo:
        info, _ = await self._look(job_id, owner, 0.0)
        return info

    async def result(
        self, job_id: str, owner: str, wait: float
    ) -> tuple[JobInfo, BaseModel | None]:
        """One ``FunctionCall.get(timeout=wait)``: Modal's own long-poll."""
        info, answer = await self._look(job_id, owner, max(0.0, min(wait, self.options.max_wait)))
        if info.state is JobState.EXPIRED:
            raise job_expired(job_id, self.options.retention)
        return info, answer

    async def cancel(self, job_id: str, owner: str) -> JobInfo:
        info, _ = await self._look(job_id, owner, 0.0)
        if info.state.done:
            return info
        at = self.clock()
        try:
            await self._call(job_id).cancel.aio()
            first = await self.records.put(f"cancel:{job_id}", {"at": at}, only_new=True)
            record = await self.records.get(f"job:{job_id}") or {}
        except Exception as exc:
            raise self.map_error(exc) from exc
        info, _ = await self._look(job_id, owner, 0.0)
        if first and record.get("webhook"):
            await self._notify(info, record)
        return info

    async def _notify(self, info: JobInfo, record: dict[str, Any]) -> None:
        """Spawn the webhook function for a job that ended here (a canceled one)."""
        url = str(record["webhook"])
        msg_id, body = webhook_event(info.status(job_links(str(record["jobs_url"]), info.id)))
        try:
            await self._webhooks.spawn.aio(info.id, url, msg_id, body)
        except Exception:  # the job is canceled all the same; its status says so
            logger.exception("could not start the webhook of canceled job %s", info.id)

    def _call(self, job_id: str) -> Any:
        if self._calls is None:
            import modal

            return modal.FunctionCall.from_id(job_id)
        return self._calls(job_id)

    async def _look(
        self, job_id: str, owner: str, timeout: float
    ) -> tuple[JobInfo, BaseModel | None]:
        """The job as it is now, waiting up to ``timeout`` seconds for its result."""
        try:
            record = await self.records.get(f"job:{job_id}")
            if record is None or record.get("owner") != owner:
                raise job_not_found(job_id)
            canceled = await self.records.get(f"cancel:{job_id}")
            polled: _Polled = PENDING if canceled else await self._poll(job_id, timeout)
            run, end, hook, canceled = await asyncio.gather(
                self.records.get(f"run:{job_id}"),
                self.records.get(f"end:{job_id}"),
                self.records.get(f"hook:{job_id}"),
                self.records.get(f"cancel:{job_id}"),
            )
        except ServingError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from exc
        run, end = run or {}, end or {}
        info = JobInfo(
            id=job_id,
            state=JobState.QUEUED,
            created_at=float(record["created_at"]),
            started_at=run.get("started_at"),
            finished_at=end.get("finished_at"),
            attempts=int(run.get("attempts", 0)),
            progress=JobProgress.model_validate(run["progress"]) if run.get("progress") else None,
            webhook=WebhookStatus.model_validate(hook)
            if hook
            else _pending_webhook(record.get("webhook")),
            request_id=record.get("request_id"),
        )
        answer: BaseModel | None = None
        if canceled:
            info.state, info.finished_at = JobState.CANCELED, float(canceled["at"])
        elif isinstance(polled, _Gone):
            info.state = JobState.EXPIRED
        elif isinstance(polled, _Pending):
            info.state = JobState.RUNNING if run else JobState.QUEUED
        else:
            outcome = (
                polled
                if isinstance(polled, ServingError)
                else decode_outcome(self.spec.response_model, polled)
            )
            if isinstance(outcome, ServingError):
                info.state, info.error = JobState.FAILED, JobError.of(outcome)
            else:
                info.state, answer = JobState.SUCCEEDED, outcome
        if info.finished_at is not None:
            info.expires_at = info.finished_at + self.options.retention
            if info.expires_at <= self.clock():
                info.state, answer = JobState.EXPIRED, None
        return info, answer

    async def _poll(self, job_id: str, timeout: float) -> _Polled:
        """``FunctionCall.get``: the outcome envelope, ``PENDING``, ``GONE``, or the error the
        call ended with. Raises the mapped error when Modal cannot be asked."""
        from modal import exception as modal_errors

        try:
            return await self._call(job_id).get.aio(timeout=timeout)  # type: ignore[no-any-return]
        except modal_errors.OutputExpiredError:  # a modal TimeoutError: before the others
            return GONE
        except modal_errors.FunctionTimeoutError as exc:
            return DeadlineExceeded(
                f"the job ran past its run_timeout ({self.options.run_timeout:g} s)",
                internal=f"Modal: {exc}",
            )
        except TimeoutError:  # the builtin one: no result within the timeout
            return PENDING
        except (
            modal_errors.InternalFailure,
            modal_errors.RemoteError,
            modal_errors.ExecutionError,
        ) as exc:  # how the call itself ended (a cancel ends it as RemoteError)
            return self.map_error(exc)
        except (modal_errors.Error, OSError):
            raise  # Modal could not be asked: _look maps it
        except Exception as exc:  # an exception the container raised, re-raised here
            error = PredictError(
                f"the job raised {type(exc).__name__}; the jobs container's log says why"
            )
            error.__cause__ = exc
            return error


def _pending_webhook(url: Any) -> WebhookStatus | None:
    return WebhookStatus(url=str(url), state="pending") if url else None
