"""The FastAPI ``APIRouter`` a ModelServer is served through.

Routes: ``POST <route>`` (predict), ``GET /healthz`` (liveness), ``GET /readyz`` (readiness).
The router's lifespan starts and stops the backend, so it works both as the root of an app
and inside ``app.include_router(router, prefix=...)`` of an app that already exists.

What a client sees:

======================================  =======================================
validation fails                        422 with field errors (FastAPI's format)
body over ``max_body_bytes``            413
model not loaded / shutting down        503 with ``Retry-After``
queue full                              503 with ``Retry-After``
deadline (``request_timeout``) passed   504
``predict`` raised                      500 with a request id, no traceback
======================================  =======================================
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.types import Receive

from ._backends import Backend, LoadState
from ._errors import DeadlineExceeded, PredictError, ServingError
from ._origin_lock import apply_origin_lock
from ._server import ModelServer

__all__ = ["ErrorBody", "ServiceRouter", "build_app", "build_router"]

logger = logging.getLogger("modal_fastapi_kit")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON = "application/json"


class ErrorBody(BaseModel):
    """The body of every error this router answers, except FastAPI's own 422."""

    detail: str
    request_id: str | None = None


class HealthBody(BaseModel):
    status: str
    detail: str | None = None


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    500: {"model": ErrorBody, "description": "predict raised; quote the request id"},
    503: {"model": ErrorBody, "description": "Not ready or queue full; see Retry-After"},
    504: {"model": ErrorBody, "description": "The request's deadline passed"},
}


class ServiceRouter(APIRouter):
    """An ``APIRouter`` that also exposes the backend it serves (for progress and tests)."""

    def __init__(self, backend: Backend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend


def build_router(server_cls: type[ModelServer[Any, Any]], backend: Backend) -> ServiceRouter:
    """Build the router for a decorated ModelServer subclass, served by ``backend``."""
    config = server_cls.config()
    response_model = server_cls.response_model

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    router = ServiceRouter(backend, lifespan=lifespan)

    async def predict(request: Request, item: Any) -> Response:
        request_id = _request_id(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.request_timeout
        try:
            future = backend.submit(item, deadline=deadline)
        except ServingError as exc:
            return error_response(exc, request_id)
        watcher = loop.create_task(_wait_for_disconnect(request.receive))
        try:
            await _first_done(loop, future, watcher, deadline)
        finally:
            watcher.cancel()
        if not future.done():
            future.cancel()  # withdraws the item if it is still queued
            if watcher.done() and not watcher.cancelled():
                return Response(status_code=499)  # the client is gone; nobody reads this
            return error_response(
                DeadlineExceeded(f"no result within request_timeout={config.request_timeout}s"),
                request_id,
            )
        error = future.exception()
        if error is not None:
            return _failure_response(error, request_id)
        try:
            body = _dump(response_model, future.result())
        except ValidationError as exc:
            return _failure_response(
                PredictError(
                    f"{server_cls.__name__} returned a value that does not match "
                    f"{response_model.__name__}: {exc.error_count()} validation errors"
                ),
                request_id,
            )
        return Response(body, media_type=_JSON, headers={REQUEST_ID_HEADER: request_id})

    _annotate(predict, server_cls.request_model)
    router.add_api_route(
        config.route,
        predict,
        methods=["POST"],
        name=f"{config.name}.predict",
        summary=f"Run {server_cls.__name__}",
        response_model=response_model,
        responses=_ERROR_RESPONSES,
        max_body_size=config.max_body_bytes,
    )

    async def healthz() -> Response:
        """Liveness: 200 while the process serves, whatever the model's state."""
        return JSONResponse({"status": "ok"})

    async def readyz() -> Response:
        """Readiness: 200 once the model has loaded and its health() agrees, else 503."""
        if await backend.healthy():
            return JSONResponse({"status": "ready"})
        state = backend.state
        detail = backend.error if state is LoadState.FAILED else None
        status = state.value if state is not LoadState.READY else "unhealthy"
        return JSONResponse(
            HealthBody(status=status, detail=detail).model_dump(exclude_none=True),
            status_code=503,
            headers={"retry-after": "5"},
        )

    router.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        name=f"{config.name}.healthz",
        tags=["health"],
        response_model=HealthBody,
    )
    router.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        name=f"{config.name}.readyz",
        tags=["health"],
        response_model=HealthBody,
        responses={503: {"model": HealthBody, "description": "Loading, failed or unhealthy"}},
    )
    return router


def build_app(server_cls: type[ModelServer[Any, Any]], router: APIRouter) -> FastAPI:
    """A FastAPI app serving ``router`` at the root, with ``/docs`` and the origin lock."""
    config = server_cls.config()
    app = FastAPI(title=config.name, summary=(server_cls.__doc__ or "").strip())
    app.include_router(router)
    apply_origin_lock(app, config)
    return app


def error_response(exc: ServingError, request_id: str | None) -> JSONResponse:
    headers = {}
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    body = ErrorBody(detail=exc.detail, request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=headers)


def _failure_response(error: BaseException, request_id: str) -> JSONResponse:
    if not isinstance(error, ServingError):
        wrapped = PredictError(repr(error))
        wrapped.__cause__ = error
        error = wrapped
    if isinstance(error, PredictError):
        logger.error("request %s failed: %s", request_id, error)
        # The client learns that predict failed and which id to quote, never the traceback.
        error = PredictError("predict failed; quote the request id when reporting it")
    return error_response(error, request_id)


def _dump(model: type[BaseModel], result: Any) -> bytes:
    if not isinstance(result, model):
        result = model.model_validate(result)
    body: bytes = result.__pydantic_serializer__.to_json(result)
    return body


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID_RE.match(given):
        return given
    return os.urandom(16).hex()  # 32 random hex digits like uuid4().hex, for a fraction of its cost


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
