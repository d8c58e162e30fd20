"""Router + backend + app: the one place a service is put together, wherever it is served.

``ModelServer.router()`` / ``asgi_app()``, ``mfk serve``, the split topology's web function
and the colocated container all come through here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp

from ._backends import Backend, BackendName, create_backend
from ._core.spec import ServiceSpec
from ._http.auth import ApiKeys, key_dependency
from ._http.cors import cors_middleware
from ._http.errors import error_response, request_id
from ._http.front import install_front
from ._http.origin_lock import apply_origin_lock
from ._http.route import KitRoute
from ._http.router import ServiceRouter, build_router
from ._metrics import metrics_registry
from .exceptions import ErrorCode, InputError, ServingError

__all__ = ["ServiceApp", "opentelemetry_configured", "service_app", "service_router"]


def service_router(
    spec: ServiceSpec, backend: Backend | BackendName = "local", **backend_options: Any
) -> ServiceRouter:
    """The service's router on ``backend``: a ``Backend``, or the name of one to build
    (``"local"``: this process; ``"modal"``: the deployed GPU class) with its options."""
    if isinstance(backend, str):
        backend = create_backend(spec, backend, **backend_options)
    return build_router(spec, backend)


def service_app(spec: ServiceSpec, router: ServiceRouter) -> FastAPI:
    """A FastAPI app serving ``router`` at the root, with ``/docs``, ``/metrics`` (unless
    ``metrics=False``; behind the API keys when auth is on, unless ``auth_metrics=False``) and
    the origin lock; with ``cors_origins``, CORS outside all of it (see ``_http/cors.py``)."""
    config = spec.config
    app = ServiceApp(
        outermost=cors_middleware(config),
        title=config.name,
        summary=(spec.server_cls.__doc__ or "").strip(),
        telemetry=None if opentelemetry_configured() else _NO_TELEMETRY,
    )
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(router)
    for route in router.routes:
        if isinstance(route, KitRoute):
            install_front(app, route)  # the predict route's shortcut (see _http/direct.py)
    if config.metrics:
        guarded = config.auth == "api-key" and config.auth_metrics
        keys = [key_dependency(ApiKeys.from_environment(config))] if guarded else []
        app.router.add_api_route(
            "/metrics",
            _metrics,
            methods=["GET"],
            name=f"{config.name}.metrics",
            summary="Prometheus metrics",
            tags=["metrics"],
            dependencies=keys,
            route_class_override=KitRoute,
            response_class=PlainTextResponse,
        )
    apply_origin_lock(app, config)
    return app


class ServiceApp(FastAPI):
    """The FastAPI app ``service_app`` builds. ``outermost`` (the service's CORS, if any)
    wraps the whole stack, Starlette's error middleware and any middleware added later
    (``mfk serve --limit-concurrency``'s) included, so every answer passes through it."""

    def __init__(self, *, outermost: Middleware | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.outermost = outermost

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        if self.outermost is None:
            return app
        cls, args, kwargs = self.outermost
        wrapped: ASGIApp = cls(app, *args, **kwargs)
        return wrapped


# FastAPI asks OpenTelemetry on every request whether it is configured; with nothing to
# report to, that costs about a tenth of a no-op request. The kit's own app turns it off
# unless the environment configures OpenTelemetry (any OTEL_* variable).
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def opentelemetry_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment configures OpenTelemetry (an ``OTEL_*`` variable is set)."""
    return any(name.startswith("OTEL_") for name in (os.environ if environ is None else environ))


_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


async def _http_error(request: Request, exc: Exception) -> Response:
    """The app's own refusals (no such path, a method the route does not take) in the kit's
    error body; its other routes answer that body themselves (``KitRoute``)."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    status = exc.status_code
    error: ServingError
    if 400 <= status <= 499:
        code = _HTTP_CODES.get(status, ErrorCode.REFUSED)
        error = InputError(str(exc.detail), status_code=status, code=code)
    else:
        error = ServingError(str(exc.detail), status_code=status)
    response = error_response(error, request_id(request))
    response.headers.update(exc.headers or {})  # Allow, for a 405
    return response


async def _metrics() -> Response:
    return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)
