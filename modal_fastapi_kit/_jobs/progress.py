"""What ``ModelServer.progress(fraction, message)`` reports to, and how a canceled job stops.

A model call made for jobs runs with a ``JobCall`` in the ``CURRENT`` context variable (the
inference thread runs each call in the caller's context, so a sync ``predict`` sees it too).
``report`` hands the progress to the runner (for every job of the call: a batch of jobs
shares its reports), and raises ``JobCanceled`` once every one of those jobs was canceled, so
that a sync ``predict`` stops at its next report. Outside a job, ``report`` does nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence

from ..exceptions import JobCanceled
from .status import JobProgress

__all__ = ["CURRENT", "MAX_MESSAGE", "JobCall", "report"]

MAX_MESSAGE = 200  # characters of a progress message that are kept


class JobCall:
    """The jobs one model call runs for. ``on_progress(job_id, progress)`` may be called from
    the inference thread: it must only record (the runner writes it out on its loop)."""

    __slots__ = ("canceled", "ids", "on_progress")

    def __init__(self, ids: Sequence[str], on_progress: Callable[[str, JobProgress], None]) -> None:
        self.ids = tuple(ids)
        self.on_progress = on_progress
        self.canceled: set[str] = set()

    def cancel(self, job_id: str) -> None:
        """Mark ``job_id`` canceled; the call stops at its next report once all are."""
        if job_id in self.ids:
            self.canceled.add(job_id)

    @property
    def all_canceled(self) -> bool:
        return bool(self.ids) and self.canceled.issuperset(self.ids)

    def report(self, fraction: float, message: str | None) -> None:
        if not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"progress({fraction!r}): the fraction done is a number from 0.0 to 1.0, e.g. "
                "self.progress(done / total, f'{done} of {total}')"
            )
        if self.all_canceled:
            raise JobCanceled(f"job {', '.join(self.ids)} was canceled")
        text = None if message is None else str(message)[:MAX_MESSAGE]
        progress = JobProgress(fraction=float(fraction), message=text)
        for job_id in self.ids:
            if job_id not in self.canceled:
                self.on_progress(job_id, progress)


CURRENT: contextvars.ContextVar[JobCall | None] = contextvars.ContextVar(
    "modal_fastapi_kit.job", default=None
)


def report(fraction: float, message: str | None = None) -> None:
    """Report progress for the jobs of the running call; nothing outside a job."""
    call = CURRENT.get()
    if call is not None:
        call.report(fraction, message)
