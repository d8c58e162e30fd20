"""A streaming predict's answer: Server-Sent Events, or NDJSON when the client asks for it.

Each chunk is written (and flushed) as the model yields it:

- ``text/event-stream`` (the default): ``data: <chunk JSON>`` per chunk; a failure after the
  first chunk is ``event: error`` with ``data: {"detail", "code", "request_id"}``, then the end;
- ``application/x-ndjson`` (or ``application/jsonl``) in ``Accept``: one chunk JSON per line;
  a failure is a last line ``{"error": {"detail", "code", "request_id"}}``.

A client that disconnects closes the item's stream, which stops its generator. The time to
the first chunk is the router's to wait for; between chunks ``chunk_timeout`` applies.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._core.streams import ItemStream
from .errors import REQUEST_ID_HEADER, ErrorBody, public_error

__all__ = [
    "NDJSON_TYPES",
    "SSE_TYPE",
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


class StreamResponse(Response):
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
        # Not Response.__init__: it would declare a Content-Length for the empty body.
        self.status_code = 200
        self.media_type = ndjson or SSE_TYPE
        self.background = None
        self.init_headers(
            {
                REQUEST_ID_HEADER: request_id,
                "cache-control": "no-cache",
                "x-accel-buffering": "no",  # nginx: pass each event on at once
            }
        )
        self.stream = stream
        self.first = first
        self.request_id = request_id
        self.chunk_timeout = chunk_timeout
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        watcher = asyncio.get_running_loop().create_task(close_on_disconnect(receive, stream))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if self.first is not None:
                await _body(send, self.frame(self.first))
            while True:
                try:
                    chunk = await stream.next(self.chunk_timeout)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    await _body(send, self.error_frame(exc))
                    break
                await _body(send, self.frame(chunk))
            if not stream.closed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke while writing
            pass
        finally:
            watcher.cancel()
            stream.close()


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def close_on_disconnect(receive: Receive, stream: ItemStream) -> None:
    """Close ``stream`` when the client disconnects (its reader stops, its generator too)."""
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
    stream.close()


def chunk_responses(chunk_model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a streaming 200: each content type's schema is the chunk model."""
    ref = {"$ref": f"#/components/schemas/{chunk_model.__name__}"}
    return {
        200: {
            "description": "One event (SSE) or line (NDJSON) per chunk, each a "
            f"{chunk_model.__name__}; a failure after the first chunk ends the stream with "
            "an error event (SSE) or an error line (NDJSON)",
            "content": {SSE_TYPE: {"schema": ref}, NDJSON_TYPES[0]: {"schema": ref}},
        }
    }
