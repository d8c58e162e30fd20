"""The FastAPI ``APIRouter`` a ModelServer is served through.

Routes: ``POST <route>`` (predict), ``GET /healthz`` (liveness), ``GET /readyz`` (readiness).
The router's lifespan starts and stops the backend, so it works both as the root of an app
and inside ``app.include_router(router, prefix=...)`` of an app that already exists.

A request model with ``File`` fields also takes a ``multipart/form-data`` body, and the file
itself as the body when it is the model's only required field (``_http/uploads.py``); a
service declared ``ModelServer[In, File]`` answers the file's bytes (``_http/file_answer.py``).

What a client sees:

=============================================  =======================================
validation fails                               422 with field errors (FastAPI's format)
body over ``max_body_bytes``                   413 ``body_too_large``
body not all there within ``upload_timeout``   408 ``upload_timeout``
a file over its ``FileLimits(max_bytes=...)``  413 ``file_too_large``
a body or file of a type the route won't take  415 ``unsupported_media_type``
a broken multipart body, too many parts        400 ``malformed_upload``
a file URL refused or not downloadable         422 ``fetch_failed``
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .._backends.base import Backend
from .._core.spec import RouteNames, ServiceSpec
from .._core.streams import ItemStream
from .._file import files_in
from .._jobs.service import JobService
from .._metrics import watch, watch_jobs
from ..exceptions import DeadlineExceeded
from .auth import ApiKeys, key_dependency
from .direct import call_directly
from .endpoint import (
    annotate_item,
    answer_response,
    late_error,
    prepare_endpoint,
    release_files,
    url_fetcher,
)
from .errors import REQUEST_ID_HEADER, ErrorBody, failure_response, request_id
from .file_answer import close_after
from .file_openapi import UPLOAD_ERRORS, FileBody, file_answer_responses, upload_docs
from .health import HealthBody, liveness, readiness, register_service
from .jobs import add_job_routes, job_route_paths
from .route import KitRoute
from .streaming import SSE_TYPE, StreamResponse, chunk_responses, wants_ndjson
from .upload_call import take_uploads
from .waiting import ClientGone, outcomes, wait_for_disconnect

__all__ = [
    "PREDICT_API",
    "PredictApi",
    "ServiceRouter",
    "build_router",
    "first_chunk",
]

_JSON = "application/json"

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not readable JSON"},
    401: {"model": ErrorBody, "description": "No valid API key (when auth='api-key')"},
    413: {"model": ErrorBody, "description": "Body over the size limit (max_body_bytes)"},
    422: {"description": "Validation failed, or the model cannot handle the input"},
    500: {"model": ErrorBody, "description": "predict raised; quote the request id"},
    503: {"model": ErrorBody, "description": "Not ready, stalled or queue full; see Retry-After"},
    504: {"model": ErrorBody, "description": "The request's deadline passed"},
}


class ServiceRouter(APIRouter):
    """An ``APIRouter`` that also exposes the backend it serves (for progress and tests), and
    its jobs (``None`` without ``jobs``)."""

    def __init__(self, backend: Backend, jobs: JobService | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend
        self.jobs = jobs


class _EventStream(Response):
    """Marks a route's 200 as ``text/event-stream`` in OpenAPI; never instantiated."""

    media_type = SSE_TYPE


def build_router(spec: ServiceSpec, backend: Backend) -> ServiceRouter:
    """The router for a decorated ModelServer subclass, served by ``backend``: its API's
    routes (the kit's predict route unless the class brings another ``Api``), ``/healthz``,
    ``/readyz``, and a lifespan that starts and stops the backend.

    With ``auth="api-key"`` the keys are read from the environment here, so a service that
    would start open fails now instead (``ConfigError``).
    """
    config = spec.config
    tags: list[str | Any] = [spec.name]
    guard = [key_dependency(ApiKeys.from_environment(config))] if config.auth == "api-key" else []

    async def healthz(request: Request) -> Response:
        """Liveness: 200 while the process can make progress; 503 when the model is stuck."""
        return await liveness(request, backend)

    async def readyz(request: Request) -> Response:
        """Readiness: 200 once the model has loaded and its health() agrees, else 503."""
        return await readiness(request, backend)

    routes: list[RouteNames] = []
    jobs = backend.job_service() if config.jobs is not None else None

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        for names in routes:
            register_service(app, backend, names)
        if config.metrics:
            watch(config.name, backend)
        await backend.start()
        try:
            if jobs is not None:
                await jobs.start()
                if config.metrics:
                    watch_jobs(config.name, jobs)
            yield
        finally:
            try:
                if jobs is not None:
                    await jobs.stop()
            finally:
                await backend.stop()

    router = ServiceRouter(backend, jobs, lifespan=lifespan, route_class=KitRoute)
    routes.append((spec.api or PREDICT_API).add_routes(router, spec, backend, guard))
    if jobs is not None:
        routes.append(add_job_routes(router, spec, jobs, guard))
    health = {kind: f"{config.name}.{kind}" for kind in ("healthz", "readyz")}
    routes.append(RouteNames(shared=health))
    router.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        name=health["healthz"],
        summary=f"{spec.name}: liveness",
        tags=tags,
        response_model=HealthBody,
        responses={503: {"model": HealthBody, "description": "The model is stuck"}},
    )
    router.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        name=health["readyz"],
        summary=f"{spec.name}: readiness",
        tags=tags,
        response_model=HealthBody,
        dependencies=guard if config.auth_readyz else [],
        responses={
            503: {"model": HealthBody, "description": "Loading, failed, stalled or unhealthy"}
        },
    )
    return router


class PredictApi:
    """The kit's own API: ``POST <route>`` taking the request model (JSON; multipart or the
    raw file too when it has ``File`` fields), answering the response model (JSON), a file
    (``ModelServer[In, File]``), or its chunks (SSE / NDJSON) for a generator predict."""

    def route_paths(self, spec: ServiceSpec) -> list[str]:
        paths = [f"POST {spec.config.route}"]
        if spec.config.jobs is not None:
            paths += job_route_paths(spec)
        return paths

    def add_routes(
        self, router: Any, spec: ServiceSpec, backend: Any, dependencies: list[Any]
    ) -> RouteNames:
        config = spec.config
        name = f"{config.name}.predict"
        predict = _stream_endpoint(spec, backend) if spec.streaming else _endpoint(spec, backend)
        prepare_endpoint(predict, spec)
        take_uploads(predict, spec)
        router.add_api_route(
            config.route,
            predict,
            methods=["POST"],
            name=name,
            summary=f"{spec.name}: predict" + (" (streamed)" if spec.streaming else ""),
            tags=[spec.name],
            dependencies=dependencies,
            **_documented(spec),
        )
        return RouteNames(exclusive=(name,))


def _documented(spec: ServiceSpec) -> dict[str, Any]:
    """How the predict route is described in OpenAPI: its response model and class, its
    responses, and the multipart and raw bodies of a file route. FastAPI never writes the
    answer itself (the endpoints return a Response), so response_class only says what it
    is."""
    responses = {**_ERROR_RESPONSES, **(UPLOAD_ERRORS if spec.files else {})}
    said: dict[str, Any] = {"response_model": spec.response_model, "responses": responses}
    if spec.streaming:  # its 200 is SSE and NDJSON of the chunk model
        said["response_class"] = _EventStream
        responses.update(chunk_responses(spec.response_model))
    elif spec.answers_file:  # its 200 is the file's bytes
        said["response_model"] = None
        said["response_class"] = FileBody
        responses.update(file_answer_responses())
    if spec.files:
        said["openapi_extra"] = upload_docs(spec)
    return said


PREDICT_API = PredictApi()


def _endpoint(spec: ServiceSpec, backend: Backend) -> Any:
    late = late_error("a result", "request_timeout", spec.config.request_timeout)
    takes_files = bool(spec.files)
    plain = not (takes_files or spec.answers_file)  # JSON in and out: the hot path, inline
    fetch = url_fetcher(spec)

    async def predict(request: Request, item: Any) -> Response:
        rid = request_id(request)
        try:
            if takes_files:
                await fetch(item)
            deadline = asyncio.get_running_loop().time() + spec.config.request_timeout
            (result,) = await outcomes(backend, request, [item], deadline, late)
        except ClientGone:
            return Response(status_code=499)  # the client is gone; nobody reads this
        except Exception as exc:
            if takes_files:
                release_files(item, exc)
            return failure_response(exc, rid)
        if plain:
            body: bytes = result.__pydantic_serializer__.to_json(result)
            return Response(body, media_type=_JSON, headers={REQUEST_ID_HEADER: rid})
        return answer_response(spec, result, rid, files_in(item) if takes_files else ())

    annotate_item(predict, spec.request_model)
    call_directly(predict, spec.request_model)
    return predict


def _stream_endpoint(spec: ServiceSpec, backend: Backend) -> Any:
    config = spec.config
    late = late_error("a first chunk", "first_chunk_timeout", config.first_chunk_seconds)

    takes_files = bool(spec.files)
    fetch = url_fetcher(spec)

    async def predict(request: Request, item: Any) -> Response:
        rid = request_id(request)
        try:
            if takes_files:
                await fetch(item)
            deadline = asyncio.get_running_loop().time() + config.first_chunk_seconds
            stream, first = await first_chunk(backend, request, item, deadline, late)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            if takes_files:
                release_files(item, exc)
            return failure_response(exc, rid)
        response = StreamResponse(
            stream,
            first,
            request_id=rid,
            chunk_timeout=config.chunk_timeout,
            ndjson=wants_ndjson(request.headers.get("accept")),
        )
        return close_after(response, files_in(item)) if takes_files else response

    annotate_item(predict, spec.request_model)
    call_directly(predict, spec.request_model)
    return predict


async def first_chunk(
    backend: Backend, request: Request, item: Any, deadline: float, late: DeadlineExceeded
) -> tuple[ItemStream, Any]:
    """Submit a streaming request and wait for its stream's first chunk (None for a stream
    that ended at once). Raises as ``outcomes`` does; the stream is closed on failure."""
    (stream,) = await outcomes(backend, request, [item], deadline, late)
    loop = asyncio.get_running_loop()
    watcher = loop.create_task(wait_for_disconnect(request.receive))
    watcher.add_done_callback(lambda w: w.cancelled() or stream.close())
    try:
        first = await stream.next(max(0.0, deadline - loop.time()))
    except StopAsyncIteration:
        first = None
    except DeadlineExceeded:
        stream.close()
        raise late from None
    except BaseException:
        stream.close()
        raise
    finally:
        watcher.cancel()
    if stream.closed:
        raise ClientGone
    return stream, first
