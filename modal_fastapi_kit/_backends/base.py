"""The small protocol every backend implements."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from .._core.recorder import Trace
from .._core.spec import ServiceSpec
from .._core.state import LoadState

if TYPE_CHECKING:
    from .._jobs.service import JobService

__all__ = ["Backend", "LoadState"]


class Backend(Protocol):
    """What the router needs from a backend."""

    @property
    def service_name(self) -> str:
        """The served class's name, as readiness bodies show it."""
        ...

    @property
    def spec(self) -> ServiceSpec:
        """What the served class declared."""
        ...

    @property
    def state(self) -> LoadState: ...

    @property
    def error(self) -> str | None:
        """Why loading failed, in one line, when ``state`` is ``FAILED``."""
        ...

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (queued, or in flight to a remote one)."""
        ...

    async def start(self) -> None:
        """Begin loading. Returns at once; ``state`` reports progress."""

    async def stop(self) -> None:
        """Drain in-flight work, then release the model."""

    def submit(
        self, item: Any, *, deadline: float, trace: Trace | None = None
    ) -> asyncio.Future[Any]:
        """Queue one validated request; ``deadline`` is on the event loop's clock; ``trace``
        (when given) learns where the request's time goes.

        The future resolves to the response model, or to an ``ItemStream`` for a streaming
        service, or fails with the ``ServingError`` for this request. Raises a
        ``ServingError`` when the request cannot be taken. Cancelling the future withdraws
        the request.
        """
        ...

    async def healthy(self) -> bool:
        """Whether the backend can serve now (loaded, and the model's ``health()`` agrees)."""
        ...

    def job_service(self) -> JobService | None:
        """What keeps and runs this service's jobs (made once, by the router); None for a
        service without ``jobs``."""
        ...

    def restart_reason(self) -> tuple[str, str] | None:
        """``(status, why)`` when this process should be restarted (its model is stalled, or
        failed to load for good), else None. ``/healthz`` answers 503 then."""
        ...
