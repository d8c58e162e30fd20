"""The small protocol every backend implements."""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Protocol

__all__ = ["Backend", "LoadState"]


class LoadState(str, enum.Enum):
    """Where a backend is in its life; ``/readyz`` is 200 only in ``READY``."""

    CREATED = "created"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class Backend(Protocol):
    """What the router needs from a backend."""

    @property
    def state(self) -> LoadState: ...

    @property
    def error(self) -> str | None:
        """Why loading failed, in one line, when ``state`` is ``FAILED``."""
        ...

    async def start(self) -> None:
        """Begin loading. Returns at once; ``state`` reports progress."""

    async def stop(self) -> None:
        """Drain in-flight work, then release the model."""

    def submit(self, item: Any, *, deadline: float) -> asyncio.Future[Any]:
        """Queue one validated request; ``deadline`` is on the event loop's clock.

        Raises a ``ServingError`` when the request cannot be taken. Cancelling the returned
        future withdraws the request.
        """
        ...

    async def healthy(self) -> bool:
        """Whether the backend can serve now (loaded, and the model's ``health()`` agrees)."""
        ...
