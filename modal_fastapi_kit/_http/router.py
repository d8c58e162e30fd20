"""The FastAPI ``APIRouter`` a ModelServer is served through.

Routes: ``POST <route>`` (predict), ``GET /healthz`` (liveness), ``GET /readyz`` (readiness).
The router's lifespan starts and stops the backend, so it works both as the root of an app
and inside ``app.include_router(router, prefix=...)`` of an app that already exists.

What a client sees:

=============================================  =======================================
validation fails                               422 with field errors (FastAPI's format)
body over ``max_body_bytes``                   413
the model cannot handle the input              the ``InputError``'s 4xx and message
model not loaded / shutting down / stalled     503 with ``Retry-After``
queue full                                     503 with ``Retry-After``
deadline (``request_timeout``) passed          504
``predict`` raised (for this item)             500 with a request id, no traceback
a stream fails after its first chunk           ``event: error`` with the request id
=============================================  =======================================
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import Receive

from .._backends.base import Backend
from .._core.spec import ServiceSpec
from .._errors import DeadlineExceeded, ServingError
from .errors import REQUEST_ID_HEADER, ErrorBody, error_response, failure_response, request_id
from .health import HealthBody, liveness, readiness, register_service
from .streaming import SSE_TYPE, StreamResponse, chunk_responses, wants_ndjson

__all__ = ["ServiceRouter", "build_router"]

_JSON = "application/json"

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    422: {"description": "Validation failed, or the model cannot handle the input"},
    500: {"model": ErrorBody, "description": "predict raised; quote the request id"},
    503: {"model": ErrorBody, "description": "Not ready, stalled or queue full; see Retry-After"},
    504: {"model": ErrorBody, "description": "The request's deadline passed"},
}


class ServiceRouter(APIRouter):
    """An ``APIRouter`` that also exposes the backend it serves (for progress and tests)."""

    def __init__(self, backend: Backend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend


class _EventStream(Response):
    """Marks a route's 200 as ``text/event-stream`` in OpenAPI; never instantiated."""

    media_type = SSE_TYPE


def build_router(spec: ServiceSpec, backend: Backend) -> ServiceRouter:
    """The router for a decorated ModelServer subclass, served by ``backend``."""
    config = spec.config
    tags: list[str | Any] = [spec.name]

    async def healthz(request: Request) -> Response:
        """Liveness: 200 while the process can make progress; 503 when the model is stuck."""
        return await liveness(request, backend)

    async def readyz(request: Request) -> Response:
        """Readiness: 200 once the model has loaded and its health() agrees, else 503."""
        return await readiness(request, backend)

    predict = _stream_endpoint(spec, backend) if spec.streaming else _endpoint(spec, backend)
    names = {kind: f"{config.name}.{kind}" for kind in ("predict", "healthz", "readyz")}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        register_service(app, backend, names)
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    router = ServiceRouter(backend, lifespan=lifespan)
    # A stream documents its 200 as SSE and NDJSON of the chunk model; FastAPI never writes
    # the answer itself (the endpoints return a Response), so response_class only says so.
    streamed: dict[str, Any] = {
        "response_class": _EventStream,
        "responses": {**_ERROR_RESPONSES, **chunk_responses(spec.response_model)},
    }
    router.add_api_route(
        config.route,
        predict,
        methods=["POST"],
        name=names["predict"],
        summary=f"{spec.name}: predict" + (" (streamed)" if spec.streaming else ""),
        tags=tags,
        response_model=spec.response_model,
        max_body_size=config.max_body_bytes,
        **(streamed if spec.streaming else {"responses": _ERROR_RESPONSES}),
    )
    router.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        name=names["healthz"],
        summary=f"{spec.name}: liveness",
        tags=tags,
        response_model=HealthBody,
        responses={503: {"model": HealthBody, "description": "The model is stuck"}},
    )
    router.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        name=names["readyz"],
        summary=f"{spec.name}: readiness",
        tags=tags,
        response_model=HealthBody,
        responses={
            503: {"model": HealthBody, "description": "Loading, failed, stalled or unhealthy"}
        },
    )
    return router


def _endpoint(spec: ServiceSpec, backend: Backend) -> Any:
    late = _late("a result", "request_timeout", spec.config.request_timeout)

    async def predict(request: Request, item: Any) -> Response:
        rid = request_id(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.config.request_timeout
        answer, result = await _answer(backend, request, item, rid, deadline, late)
        if answer is not None:
            return answer
        body: bytes = result.__pydantic_serializer__.to_json(result)
        return Response(body, media_type=_JSON, headers={REQUEST_ID_HEADER: rid})

    _annotate(predict, spec.request_model)
    return predict


def _stream_endpoint(spec: ServiceSpec, backend: Backend) -> Any:
    config = spec.config
    late = _late("a first chunk", "first_chunk_timeout", config.first_chunk_seconds)

    async def predict(request: Request, item: Any) -> Response:
        rid = request_id(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.first_chunk_seconds
        answer, stream = await _answer(backend, request, item, rid, deadline, late)
        if answer is not None:
            return answer
        watcher = loop.create_task(_wait_for_disconnect(request.receive))
        watcher.add_done_callback(lambda w: w.cancelled() or stream.close())
        try:
            first = await stream.next(max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            first = None
        except DeadlineExceeded:
            stream.close()
            return error_response(late, rid)
        except Exception as exc:
            stream.close()
            return failure_response(exc, rid)
        finally:
            watcher.cancel()
        if stream.closed:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return StreamResponse(
            stream,
            first,
            request_id=rid,
            chunk_timeout=config.chunk_timeout,
            ndjson=wants_ndjson(request.headers.get("accept")),
        )

    _annotate(predict, spec.request_model)
    return predict


async def _answer(
    backend: Backend,
    request: Request,
    item: Any,
    rid: str,
    deadline: float,
    late: DeadlineExceeded,
) -> tuple[Response | None, Any]:
    """Submit ``item`` and wait for its outcome until ``deadline``, watching the client.

    ``(None, result)`` on success; otherwise ``(response, None)`` with the error answer: the
    backend refused it, the client left (499, never read), the deadline passed (``late``), or
    the request failed.
    """
    loop = asyncio.get_running_loop()
    try:
        future = backend.submit(item, deadline=deadline)
    except ServingError as exc:
        return error_response(exc, rid), None
    waited = await _wait(loop, request.receive, future, deadline)
    if waited == "gone":
        return Response(status_code=499), None  # the client is gone; nobody reads this
    if waited == "late":
        return error_response(late, rid), None
    error = future.exception()
    if error is not None:
        return failure_response(error, rid), None
    return None, future.result()


def _late(what: str, option: str, seconds: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"no {what.removeprefix('a ')} within {option}={seconds:g}s")


async def _wait(
    loop: asyncio.AbstractEventLoop, receive: Receive, future: asyncio.Future[Any], deadline: float
) -> str | None:
    """Wait for ``future`` until ``deadline``, watching for the client to leave.

    None when the future is done; else the future is cancelled (which withdraws a queued
    item) and the answer says why: ``"gone"`` (the client left) or ``"late"`` (deadline).
    """
    watcher = loop.create_task(_wait_for_disconnect(receive))
    try:
        await _first_done(loop, future, watcher, deadline)
    finally:
        watcher.cancel()
    if future.done():
        return None
    future.cancel()
    return "gone" if watcher.done() and not watcher.cancelled() else "late"


async def _first_done(
    loop: asyncio.AbstractEventLoop,
    first: asyncio.Future[Any],
    second: asyncio.Future[Any],
    deadline: float,
) -> None:
    """Return when either future is done or the loop's clock reaches ``deadline``.

    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` with a timeout, minus the sets and
    the bookkeeping it needs for any number of futures: this runs once per request.
    """
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    first.add_done_callback(wake)
    second.add_done_callback(wake)
    timer = loop.call_at(deadline, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        first.remove_done_callback(wake)
        second.remove_done_callback(wake)


async def _wait_for_disconnect(receive: Receive) -> None:
    # The body has been read; the next message the server sends is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


def _annotate(endpoint: Any, request_model: type[BaseModel]) -> None:
    """Give ``endpoint`` the signature FastAPI reads: ``item`` is the request model."""
    signature = inspect.signature(endpoint)
    params = [
        p.replace(annotation=request_model) if p.name == "item" else p.replace(annotation=Request)
        for p in signature.parameters.values()
    ]
    endpoint.__signature__ = signature.replace(parameters=params, return_annotation=Response)
