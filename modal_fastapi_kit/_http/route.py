"""``KitRoute``: the route class of every route the kit adds, so its errors keep one shape
wherever the router is mounted.

FastAPI's exception handlers belong to the app, and the kit's router is often included in an
app it does not own. A route class travels with the router: its handler turns what happens
before the endpoint runs into the kit's answers, with the request id:

- a body over the route's limit (``limit_body``) is a 413, whether it says its length or is
  sent in chunks; the body is not read past the limit; a body that has not all arrived
  within the route's ``upload_timeout`` is a 408 ``upload_timeout``;
- on a route with ``File`` fields, a multipart or raw body is read and the endpoint called
  by ``_http/upload_call.py``;
- a body that cannot be parsed (not UTF-8, nested too deeply) is a 400 ``unreadable_body``;
- a ``ServingError`` raised by a dependency (a missing API key: ``Unauthorized``) keeps its
  status and headers;
- a ``RequestValidationError`` becomes FastAPI's 422 body (``{"detail": [errors]}``) plus the
  ``code`` (``validation_failed``) and the ``request_id``; an input that cannot be put in
  JSON (a lone surrogate) is left out of its error instead of failing the answer.

Subclasses (the OpenAI-compatible routes) change only how an error is written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message

from .._core.recorder import Trace
from ..exceptions import ErrorCode, InputError, ServingError
from .direct import direct_call, is_json
from .errors import REQUEST_ID_HEADER, error_response, request_id
from .upload_call import upload_call
from .waiting import TRACE_KEY

__all__ = [
    "KitRoute",
    "RequestCounter",
    "count_requests",
    "limit_body",
    "validation_errors",
]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class KitRoute(APIRoute):
    """An ``APIRoute`` whose failures before the endpoint runs answer the kit's error body."""

    def get_route_handler(self) -> Handler:
        return self.kit_handler(super().get_route_handler())

    def kit_handler(self, fallback: Handler) -> Handler:
        """This route's handler: the body's limits, the direct call (``_http/direct.py``), the
        upload call for a file route's multipart or raw body (``_http/upload_call.py``),
        then ``fallback`` (FastAPI's handler) for what they leave; every failure as the
        kit's error answer, and each answer counted and access-logged."""
        direct = direct_call(self)
        uploads = upload_call(self)
        limit: int | None = getattr(self.endpoint, _LIMIT_ATTR, None)
        seconds: float | None = getattr(self.endpoint, _TIMEOUT_ATTR, None)
        observed = hasattr(self.endpoint, _COUNTER_ATTR)
        counter: RequestCounter | None = getattr(self.endpoint, _COUNTER_ATTR, None)
        path = self.path

        async def handler(request: Request) -> Response:
            logged = observed and access_log.isEnabledFor(logging.INFO)
            if counter is None and not logged:
                return await answer(request)
            began = time.perf_counter()
            trace = None
            if logged:
                trace = request.scope[TRACE_KEY] = Trace()
            response = await answer(request)
            seconds = time.perf_counter() - began
            if counter is not None:
                counter.request(path, response.status_code, seconds)
            if trace is not None:
                _log_access(request, path, response, seconds, trace)
            return response

        async def answer(request: Request) -> Response:
            try:
                if limit is not None:
                    request = _limited(request, limit, seconds)
                if direct is not None and is_json(request):
                    answered = await direct(request)
                    if answered is not None:
                        return answered
                elif uploads is not None:
                    answered = await uploads(request)
                    if answered is not None:
                        return answered
                return await fallback(request)  # from the body read already, if it was
            except ServingError as exc:
                return self.serving_error(exc, request_id(request))
            except RequestValidationError as exc:
                return self.invalid(exc, request_id(request))
            except HTTPException as exc:  # FastAPI's own: an unreadable body, mostly
                return self.serving_error(_from_http(exc), request_id(request))

        return handler

    def serving_error(self, exc: ServingError, rid: str) -> Response:
        return error_response(exc, rid)

    def invalid(self, exc: RequestValidationError, rid: str) -> Response:
        return JSONResponse(
            {
                "detail": validation_errors(exc),
                "code": ErrorCode.VALIDATION_FAILED.value,
                "request_id": rid,
            },
            status_code=422,
            headers={REQUEST_ID_HEADER: rid},
        )


def limit_body(endpoint: Callable[..., Any], max_bytes: int, seconds: float | None = None) -> None:
    """Make a ``KitRoute`` refuse bodies over ``max_bytes`` for ``endpoint`` (413), and
    bodies that have not all arrived ``seconds`` after the request began (408)."""
    setattr(endpoint, _LIMIT_ATTR, max_bytes)
    setattr(endpoint, _TIMEOUT_ATTR, seconds)


class RequestCounter(Protocol):
    def request(self, route: str, status: int, seconds: float) -> None: ...


def count_requests(endpoint: Callable[..., Any], counter: RequestCounter | None) -> None:
    """Make a ``KitRoute`` report each answer of ``endpoint`` (its status, how long) to
    ``counter`` (metrics) and, when the ``modal_fastapi_kit.access`` logger logs INFO, as an
    access-log line."""
    setattr(endpoint, _COUNTER_ATTR, counter)


def _log_access(
    request: Request, route: str, response: Response, seconds: float, trace: Trace
) -> None:
    fields: dict[str, Any] = {
        "method": request.method,
        "route": route,
        "status": response.status_code,
        "request_id": response.headers.get(REQUEST_ID_HEADER),
        "ms": round(1000 * seconds, 2),
        "queue_ms": _ms(trace.queue_seconds),
        "batch_size": trace.batch_size,
        "model_ms": _ms(trace.model_seconds),
        "client": request.client.host if request.client else None,
    }
    access_log.info(
        "%s %s %s %.1f ms rid=%s queue=%s batch=%s model=%s client=%s",
        fields["method"],
        route,
        fields["status"],
        fields["ms"],
        fields["request_id"],
        "-" if fields["queue_ms"] is None else f"{fields['queue_ms']} ms",
        "-" if trace.batch_size is None else trace.batch_size,
        "-" if fields["model_ms"] is None else f"{fields['model_ms']} ms",
        fields["client"] or "-",
        extra={"access": fields},
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 2)


# One line per API request: method, route, status, request id, time, time in queue, batch
# size, model time, client address; the record's ``access`` attribute holds them as a dict
# (for JSON logs).
access_log = logging.getLogger("modal_fastapi_kit.access")

_LIMIT_ATTR = "__mfk_max_body__"

_TIMEOUT_ATTR = "__mfk_upload_timeout__"

_COUNTER_ATTR = "__mfk_requests__"


def _limited(request: Request, limit: int, seconds: float | None = None) -> Request:
    """``request`` with a body reader that refuses more than ``limit`` bytes, and a body that
    is not complete ``seconds`` from now."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)  # before reading a byte of it
    receive = request.receive
    seen = 0
    clock = None if seconds is None else _UploadClock(seconds)

    async def receive_at_most() -> Message:
        nonlocal seen, clock
        message = await (receive() if clock is None else clock.receive(receive, seen))
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
            if clock is not None and not message.get("more_body", False):
                clock.stop()  # the body is complete
                clock = None
        return message

    return Request(request.scope, receive_at_most)


def _too_large(limit: int) -> InputError:
    return InputError(
        f"the request body is over the limit of {limit} bytes",
        status_code=413,
        code=ErrorCode.BODY_TOO_LARGE,
    )


class _UploadClock:
    """Ends the wait for a request's body ``seconds`` after it began: one timer per request
    (not one per read), which cancels the read that is waiting when it fires; that read
    raises the 408."""

    __slots__ = ("expired", "reader", "seconds", "timer")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.reader: asyncio.Task[Any] | None = None
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.reader is not None:
            self.reader.cancel()

    async def receive(self, receive: Callable[[], Awaitable[Message]], seen: int) -> Message:
        if self.expired:
            raise self._too_slow(seen)
        self.reader = reader = asyncio.current_task()
        try:
            return await receive()
        except asyncio.CancelledError:
            if self.expired and reader is not None and _only_ours(reader):
                raise self._too_slow(seen) from None
            raise
        finally:
            self.reader = None

    def stop(self) -> None:
        self.timer.cancel()

    def _too_slow(self, seen: int) -> InputError:
        return InputError(
            f"the request body did not all arrive within {self.seconds:g} s "
            f"(upload_timeout); {seen} bytes came",
            status_code=408,
            code=ErrorCode.UPLOAD_TIMEOUT,
        )


def _only_ours(task: asyncio.Task[Any]) -> bool:
    """Withdraw the clock's cancellation of ``task``; whether nothing else cancelled it."""
    if sys.version_info >= (3, 11):
        return task.uncancel() == 0
    return True  # pragma: no cover


def _from_http(exc: HTTPException) -> ServingError:
    if isinstance(exc.__cause__, ServingError):  # FastAPI wraps what reading the body raised
        return exc.__cause__
    if exc.status_code == 400:
        return InputError(
            "the request body could not be read as JSON: it must be UTF-8 JSON, nested at "
            "most a few hundred levels deep",
            status_code=400,
            code=ErrorCode.UNREADABLE_BODY,
        )
    if 400 <= exc.status_code <= 499:
        return InputError(str(exc.detail), status_code=exc.status_code, code=ErrorCode.REFUSED)
    return ServingError(str(exc.detail), status_code=exc.status_code)


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """The errors of ``exc`` as JSON-safe dicts; an input JSON cannot hold is left out."""
    safe: list[dict[str, Any]] = []
    for error in exc.errors():
        item = {k: v for k, v in error.items() if k not in ("url", "ctx")}
        if "ctx" in error:
            item["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        if not _encodable(item):
            item.pop("input", None)
            if not _encodable(item):
                item = {"type": str(error.get("type")), "loc": [str(p) for p in error["loc"]]}
        safe.append(item)
    return safe


def _encodable(value: Any) -> bool:
    """Whether ``JSONResponse`` can render ``value`` (no NaN, no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return False
    return True
