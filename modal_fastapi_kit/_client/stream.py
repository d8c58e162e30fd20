"""Reading a streamed answer: Server-Sent Events into chunks, and the errors that end them."""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from .._file import File
from ..exceptions import DeadlineExceeded, ErrorCode, ServingError, UpstreamError, error_for
from .answers import read_error_body
from .options import Service

__all__ = ["ChunkReader"]


class ChunkReader:
    """Turns the lines of an SSE answer into response models, one ``feed`` per line.

    ``feed`` returns a chunk at the end of each ``data`` event, None otherwise, and raises
    the kit's error for an ``event: error`` (by its ``code``).
    """

    def __init__(self, service: Service, shown: str, request_id: str) -> None:
        self.service = service
        self.shown = shown
        self.request_id = request_id
        self.count = 0  # chunks so far
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> BaseModel | File | None:
        if line:
            if not line.startswith(":"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)
            return None
        event, data = self._event or "message", "\n".join(self._data)
        self._event, had_data, self._data = None, bool(self._data), []
        if not had_data:
            return None
        if event == "error":
            raise self._error(data)
        chunk = self.service.decode(data, self.shown, self.request_id)
        self.count += 1
        return chunk

    def _error(self, data: str) -> ServingError:
        """The error an ``event: error`` carries (``{"detail", "code", "request_id"}``)."""
        detail, code, said_id = read_error_body(data.encode(), 500)
        return error_for(
            code if code is not None else ErrorCode.PREDICT_FAILED,
            detail,
            request_id=said_id or self.request_id,
        )

    def broken(self, exc: httpx.TransportError) -> ServingError:
        """The error for a stream whose connection failed while it was read."""
        if isinstance(exc, httpx.TimeoutException):
            return DeadlineExceeded(
                f"the stream from {self.shown} sent nothing for longer than the client's "
                f"timeout after {self.count} chunks",
                retry_after=None,
                request_id=self.request_id,
            )
        return UpstreamError(
            f"the stream from {self.shown} broke after {self.count} chunks "
            f"({type(exc).__name__}: {exc})",
            retry_after=None,
            request_id=self.request_id,
        )
