"""A streaming predict's answer: Server-Sent Events, or NDJSON when the client asks for it.

Each chunk is written (and flushed) as the model yields it:

- ``text/event-stream`` (the default): ``data: <chunk JSON>`` per chunk; a failure after the
  first chunk is ``event: error`` with ``data: {"detail", "code", "request_id"}``, then the end;
- ``application/x-ndjson`` (or ``application/jsonl``) in ``Accept``: one chunk JSON per line;
  a failure is a last line ``{"error": {"detail", "code", "request_id"}}``.

A client that disconnects closes the item's stream, which stops its generator. The time to
the first chunk is the router's to wait for; between chunks ``chunk_timeout`` applies.

``ChunkStream`` does the writing for every streamed answer of the kit (``StreamResponse``
here, the OpenAI chat stream in ``openai``); its subclasses only frame chunks and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._core.streams import ItemStream
from .errors import REQUEST_ID_HEADER, ErrorBody, public_error

__all__ = [
    "NDJSON_TYPES",
    "SSE_TYPE",
    "ChunkStream",
    "StreamResponse",
    "chunk_responses",
    "close_on_disconnect",
    "wants_ndjson",
]

SSE_TYPE = "text/event-stream"
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl")


def wants_ndjson(accept: str | None) -> str | None:
    """The NDJSON media type the ``Accept`` header asks for, if any."""
    if accept:
        for media_type in NDJSON_TYPES:
            if media_type in accept:
                return media_type
    return None


class ChunkStream(Response, ABC):
    """The base of the kit's streamed answers: a 200 whose body is written as the chunks of
    ``stream`` come (``first``, when the stream had one, then the rest).

    It owns what every stream needs: the headers (the request id, no caching, no proxy
    buffering), closing ``stream`` when the client disconnects (which stops its generator),
    the start and each frame as its own write, the end of the body, a connection that
    breaks while writing, and its ``background`` task once the stream is over. A subclass
    says how a chunk and an error are framed; it may also open and close the body
    (``opening``, ``closing``) and end it early (``done``).

    No ``Response.__init__``: it renders an empty body and declares ``Content-Length: 0``.
    The attributes it would set (``status_code``, ``media_type``, ``background``,
    ``raw_headers``) are set here, and ``__call__`` is this class's own.
    """

    def __init__(
        self,
        stream: ItemStream,
        first: Any,
        *,
        request_id: str,
        chunk_timeout: float,
        media_type: str,
    ) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.raw_headers = [
            (b"content-type", _content_type(media_type).encode("latin-1")),
            (REQUEST_ID_HEADER.encode("latin-1"), request_id.encode("latin-1")),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
        ]
        self.stream = stream
        self.first = first
        self.request_id = request_id
        self.chunk_timeout = chunk_timeout

    @abstractmethod
    def frame(self, chunk: Any) -> bytes:
        """One chunk as written to the client (``b""``: nothing to write for it)."""

    @abstractmethod
    def error_frame(self, error: BaseException) -> bytes:
        """The last frame when the stream fails after its start."""

    def opening(self) -> bytes:
        """What the body starts with, before the first chunk."""
        return b""

    def closing(self) -> bytes:
        """What the body ends with, after the last chunk (not after an error)."""
        return b""

    @property
    def done(self) -> bool:
        """The answer is complete before the stream's end: stop reading it."""
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        watcher = asyncio.get_running_loop().create_task(close_on_disconnect(receive, stream))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            last = await self._write(send, watcher)
            if not watcher.done():  # else the client left: nobody reads the end
                await send({"type": "http.response.body", "body": last, "more_body": False})
        except OSError:  # the connection broke while writing
            pass
        finally:
            watcher.cancel()
            stream.close()
            if self.background is not None:  # after the stream, as Response runs it
                await self.background()

    async def _write(self, send: Send, watcher: asyncio.Task[None]) -> bytes:
        """Write every frame but the last, and return the last."""
        if data := self.opening():
            await _body(send, data)
        chunk = self.first
        while True:
            if chunk is not None and (data := self.frame(chunk)):
                await _body(send, data)
            if self.done:
                break
            try:
                chunk = await self.stream.next(self.chunk_timeout)
            except StopAsyncIteration:
                break
            except Exception as exc:
                return self.error_frame(exc)
        return b"" if watcher.done() else self.closing()


class StreamResponse(ChunkStream):
    """Write ``first`` (when the stream had one) and the rest of ``stream`` as SSE events or
    NDJSON lines."""

    def __init__(
        self,
        stream: ItemStream,
        first: BaseModel | None,
        *,
        request_id: str,
        chunk_timeout: float,
        ndjson: str | None = None,
    ) -> None:
        super().__init__(
            stream,
            first,
            request_id=request_id,
            chunk_timeout=chunk_timeout,
            media_type=ndjson or SSE_TYPE,
        )
        self.ndjson = ndjson is not None

    def frame(self, chunk: BaseModel) -> bytes:
        body: bytes = chunk.__pydantic_serializer__.to_json(chunk)
        return body + b"\n" if self.ndjson else b"data: " + body + b"\n\n"

    def error_frame(self, error: BaseException) -> bytes:
        public = public_error(error, self.request_id)
        body = ErrorBody(
            detail=public.detail, code=public.code, request_id=self.request_id
        ).model_dump_json()
        if self.ndjson:
            return b'{"error":' + body.encode() + b"}\n"
        return b"event: error\ndata: " + body.encode() + b"\n\n"


def _content_type(media_type: str) -> str:
    return media_type + "; charset=utf-8" if media_type.startswith("text/") else media_type


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def close_on_disconnect(receive: Receive, stream: ItemStream) -> None:
    """Close ``stream`` when the client disconnects (its reader stops, its generator too)."""
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
    stream.close()


def chunk_responses(chunk_model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a streaming 200: an NDJSON line is the chunk model; an SSE event is an
    object whose ``data`` holds the chunk model's JSON (``event`` is ``error`` for a failure
    after the first chunk), which is how OpenAPI tools read an event stream."""
    ref = {"$ref": f"#/components/schemas/{chunk_model.__name__}"}
    event = {
        "type": "object",
        "properties": {
            "event": {"type": "string", "description": "absent, or 'error' for the failure"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": ref,
                "description": f"a {chunk_model.__name__}, or the error body after 'error'",
            },
        },
        "required": ["data"],
    }
    return {
        200: {
            "description": "One event (SSE) or line (NDJSON) per chunk, each a "
            f"{chunk_model.__name__}; a failure after the first chunk ends the stream with "
            "an error event (SSE) or an error line (NDJSON)",
            "content": {SSE_TYPE: {"schema": event}, NDJSON_TYPES[0]: {"schema": ref}},
        }
    }
