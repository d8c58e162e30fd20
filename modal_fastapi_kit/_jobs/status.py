"""A job's state and the status document a client reads.

The service answers ``JobStatus`` from the submit, status and cancel routes (and the result
route while the job is not done); the typed client parses it. Only pydantic and the kit's
exceptions are imported here, so a client pays for nothing else.

States::

    queued ──> running ──> succeeded | failed
       │          │
       └──────────┴──> canceled            (a finished job, after its retention: expired)

``succeeded``, ``failed``, ``canceled`` and ``expired`` are terminal: a job reaches one of
the first three once, and a client never sees it leave it except for ``expired``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

from ..exceptions import ERROR_CODES, ErrorCode, ServingError, error_for

__all__ = [
    "TERMINAL",
    "JobError",
    "JobInfo",
    "JobLinks",
    "JobProgress",
    "JobState",
    "JobStatus",
    "WebhookState",
    "WebhookStatus",
    "job_links",
]


class JobState(str, enum.Enum):
    """Where a job is; see the module's docstring."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    def __str__(self) -> str:
        return self.value

    @property
    def done(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED, JobState.EXPIRED})


class JobProgress(BaseModel):
    """What the model last reported (``self.progress(fraction, message)`` in ``predict``)."""

    fraction: float = Field(ge=0.0, le=1.0)
    message: str | None = None


class JobError(BaseModel):
    """Why a job failed: the error a synchronous request would have been answered with."""

    detail: str
    code: ErrorCode
    status: int

    @classmethod
    def of(cls, error: ServingError) -> JobError:
        return cls(detail=error.detail, code=error.code, status=error.status_code)

    def exception(self, request_id: str | None = None) -> ServingError:
        """The kit's exception for this error, as a client raises it."""
        status = self.status if ERROR_CODES[self.code].status is None else None
        return error_for(self.code, self.detail, status_code=status, request_id=request_id)


WebhookState = Literal["pending", "delivered", "failed"]


class WebhookStatus(BaseModel):
    """The call that tells ``url`` the job ended: ``pending`` until it is delivered (a 2xx)
    or its attempts are spent (``failed``: the result is still there to be read)."""

    url: str
    state: WebhookState
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None


class JobLinks(BaseModel):
    """Where to follow the job: the absolute URLs of its status, result and cancel routes
    (under the router's prefix; public ones behind an edge the service trusts)."""

    status: str
    result: str
    cancel: str


def job_links(jobs_url: str, job_id: str) -> JobLinks:
    """The links of job ``job_id`` of the service whose submit route is at ``jobs_url``."""
    own = f"{jobs_url.rstrip('/')}/{job_id}"
    return JobLinks(status=own, result=f"{own}/result", cancel=f"{own}/cancel")


class JobStatus(BaseModel):
    """A job as the status route answers it."""

    id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    attempts: int = 0  # how often it started running (more than once after a restart)
    progress: JobProgress | None = None
    error: JobError | None = None
    webhook: WebhookStatus | None = None
    request_id: str | None = None  # the submission's X-Request-ID, for the server's log
    links: JobLinks

    @property
    def done(self) -> bool:
        return self.state.done


@dataclass(slots=True)
class JobInfo:
    """A job as a store knows it (times in seconds since the epoch); ``status`` makes the
    document a client reads."""

    id: str
    state: JobState
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    attempts: int = 0
    progress: JobProgress | None = None
    error: JobError | None = None
    webhook: WebhookStatus | None = None
    request_id: str | None = None

    def status(self, links: JobLinks) -> JobStatus:
        return JobStatus(
            id=self.id,
            state=self.state,
            created_at=_when(self.created_at),
            started_at=_maybe(self.started_at),
            finished_at=_maybe(self.finished_at),
            expires_at=_maybe(self.expires_at),
            attempts=self.attempts,
            progress=self.progress,
            error=self.error,
            webhook=self.webhook,
            request_id=self.request_id,
            links=links,
        )


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _maybe(seconds: float | None) -> datetime | None:
    return None if seconds is None else _when(seconds)
