"""``JobService``: what the job routes ask of whoever keeps and runs the jobs.

``LocalJobs`` (``_jobs/local.py``: a SQLite file and the model in this process) and
``ModalJobs`` (``_jobs/modal.py``: spawned calls of the GPU class and a ``modal.Dict``)
implement it; the routes (``_http/jobs.py``) know nothing else. Every method that names a
job takes the ``owner`` of the request (``owner_of`` its API key): a job is visible only to
the key that submitted it, and to any other it does not exist (404).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from ..exceptions import (
    DeadlineExceeded,
    ErrorCode,
    InputError,
    ModelStalled,
    PredictError,
    QueueFullError,
    ServingError,
)
from .status import JobInfo

logger = logging.getLogger("modal_fastapi_kit")

__all__ = [
    "JobService",
    "Submission",
    "idempotency_reused",
    "job_canceled",
    "job_expired",
    "job_not_found",
    "owner_of",
    "public_job_error",
    "request_digest",
    "too_many_jobs",
]


@dataclass(frozen=True, slots=True)
class Submission:
    """One submitted job: who sent it, and how (its request goes beside it, in wire form)."""

    owner: str  # owner_of(the API key it came with); "" on a service without keys
    request_id: str
    jobs_url: str  # the submit route's URL; a job's own is jobs_url + "/" + its id
    idempotency_key: str | None = None
    webhook: str | None = None  # an https URL, checked by the route


class JobService(Protocol):
    """Keeps and runs one service's jobs."""

    @property
    def pending(self) -> int:
        """Jobs queued or running now (as far as this process knows)."""
        ...

    async def start(self) -> None:
        """Open the store and start running jobs (after a restart: those left unfinished)."""

    async def stop(self) -> None:
        """Stop taking jobs; a running job is left to run again after a restart."""

    async def submit(self, submission: Submission, wire: dict[str, Any]) -> tuple[JobInfo, bool]:
        """Queue a job for ``submission`` (``wire``: its request as ``_core.wire`` encodes
        it); ``(job, replayed)``, where ``replayed`` says the ``Idempotency-Key`` named a job
        submitted before with the same body. Raises ``too_many_jobs`` (503) past
        ``max_pending`` and ``idempotency_reused`` (422) for the same key with another body."""
        ...

    async def status(self, job_id: str, owner: str) -> JobInfo:
        """The job; ``job_not_found`` (404) for an id that is not ``owner``'s."""
        ...

    async def result(
        self, job_id: str, owner: str, wait: float
    ) -> tuple[JobInfo, BaseModel | None]:
        """The job, waiting up to ``wait`` seconds for it to end, and its response model when
        it succeeded (else None: the job says why). ``job_expired`` (410) once its result is
        gone, ``job_not_found`` as ``status``."""
        ...

    async def cancel(self, job_id: str, owner: str) -> JobInfo:
        """Cancel the job (a queued one never runs, a running one is stopped) and answer it;
        a job already ended is answered as it is."""
        ...


def public_job_error(
    job_id: str, error: ServingError, ran: float, run_timeout: float
) -> ServingError:
    """What a job's status (and its webhook) says of ``error``, wherever the job ran: a model
    failure is logged with the job's id and not shown; a model call stuck past the job's own
    ``run_timeout`` (``ran`` seconds into the job) is the job's ``deadline``."""
    if isinstance(error, ModelStalled) and ran >= run_timeout:
        return DeadlineExceeded(f"the job ran past its run_timeout ({run_timeout:g} s)")
    if isinstance(error, PredictError):
        logger.error("job %s failed: %s", job_id, error, exc_info=error.__cause__)
        return PredictError("predict failed; quote the job id when reporting it")
    if error.internal is not None:
        logger.warning("job %s: %s (%s)", job_id, error, error.internal)
    return error


def owner_of(api_key: str | None) -> str:
    """Who a job belongs to: a digest of the API key it was submitted with, never the key."""
    if not api_key:
        return ""
    return hashlib.sha256(b"mfk-job-owner:" + api_key.encode()).hexdigest()[:32]


def request_digest(wire: dict[str, Any]) -> str:
    """A digest of a request's wire form (its JSON and its files' bytes): two submissions
    with one ``Idempotency-Key`` must carry the same one."""
    digest = hashlib.sha256()
    files = wire.get("files", []) if wire.keys() == {"request", "files"} else []
    body = wire["request"] if files or wire.keys() == {"request", "files"} else wire
    digest.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for data, content_type, filename in files:
        digest.update(b"\0file\0" + str(content_type).encode() + b"\0" + str(filename).encode())
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def job_not_found(job_id: str) -> InputError:
    shown = job_id if len(job_id) <= 80 else job_id[:80] + "..."
    return InputError(
        f"no job {shown!r} here: check the id, and send the API key that submitted it",
        status_code=404,
        code=ErrorCode.JOB_NOT_FOUND,
    )


def job_expired(job_id: str, retention: float) -> InputError:
    return InputError(
        f"job {job_id!r} ended more than its retention ({retention:g} s) ago; its result is "
        "gone: submit it again",
        status_code=410,
        code=ErrorCode.JOB_EXPIRED,
    )


def job_canceled(job_id: str) -> InputError:
    return InputError(
        f"job {job_id!r} was canceled, so it has no result; submit it again to run it",
        status_code=409,
        code=ErrorCode.JOB_CANCELED,
    )


def idempotency_reused(key: str) -> InputError:
    return InputError(
        f"the Idempotency-Key {key[:80]!r} was sent before with a different body; use a new "
        "key for a new job, or send the same body to get the job it made",
        status_code=422,
        code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
    )


def too_many_jobs(max_pending: int) -> QueueFullError:
    return QueueFullError(
        f"{max_pending} jobs are queued or running (max_pending); retry later",
        code=ErrorCode.TOO_MANY_JOBS,
        retry_after=5,
    )
